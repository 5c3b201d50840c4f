#include "runtime/session/session.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/engine/model_files.hpp"

namespace ferry::session {

namespace fs = std::filesystem;

std::optional<text::Tokenizer> try_read_tokenizer(const fs::path& model) {
  std::error_code ec;
  const bool has_files = engine::gguf_model_file(model).has_value() ||
                         fs::exists(model / "tokenizer.json", ec) ||
                         fs::exists(model / "vocab.json", ec) ||
                         fs::exists(model / "merges.txt", ec) ||
                         fs::exists(model / "tokenizer.gguf", ec);
  if (!has_files) return std::nullopt;
  return engine::read_tokenizer(model);
}

Session::Session(SessionOptions options) : options_(std::move(options)) {
  SessionOptions& o = options_;
  FERRY_EXPECT(o.max_seqs >= 1 && o.max_seqs <= 1024,
               "{} sequences at once is outside 1 … 1024; ask for fewer", o.max_seqs);
  // The tokenizer first: a model whose tokenizer files are damaged is refused before the
  // minutes a load can take.
  if (o.tokenizer) {
    tokenizer_ = std::move(o.tokenizer);
    o.tokenizer.reset();
    own_tokenizer_ = o.tokenizer_is_own;
  } else if (o.read_tokenizer) {
    tokenizer_ = try_read_tokenizer(o.model);
    own_tokenizer_ = tokenizer_.has_value();
  }
  if (o.require_tokenizer && !tokenizer_)
    throw InvalidArgument(fmt::format(
        "{} has no tokenizer (tokenizer.json, vocab.json + merges.txt, or a GGUF file's); copy "
        "the model's tokenizer files beside its weights",
        o.model.string()));

  const model::ModelConfig config = engine::read_model_config(o.model);
  const int64_t limit = model::max_context(config);
  const int64_t context = o.context > 0 ? o.context : model::default_context(config);
  FERRY_EXPECT(context <= limit,
               "a context of {} tokens is longer than the model's {}; ask for {} or fewer",
               context, limit, limit);
  engine::LoadOptions& lo = o.load;
  lo.context = context;
  lo.max_seqs = o.max_seqs;
  lo.max_batch_rows = o.max_batch_rows > 0 ? o.max_batch_rows : context;
  lo.max_logit_rows = o.max_logit_rows > 0 ? o.max_logit_rows : o.max_seqs;
  if (o.mmap) lo.placement = engine::Placement::all(config, offload::Tier::mapped);

  backends::check(o.device);
  if (backends::planner_backend(o.device) == planner::Backend::cpu) {
    FERRY_EXPECT(!o.max_vram_bytes, "--max-vram needs --device cuda");
  } else {
    FERRY_EXPECT(!o.mmap, "--mmap computes from a memory map on the CPU; drop --device {}",
                 o.device);
  }
  device_ = backends::open_device(o.device);
  backends::plan_for(o.device, *device_, lo);
  if (o.max_vram_bytes) lo.max_vram_bytes = o.max_vram_bytes;
  if (o.on_load_progress) lo.io.on_load_progress = o.on_load_progress;

  model_ = engine::load_model(o.model, lo);
  backends::EngineSpec spec;
  spec.context = context;
  spec.max_seqs = o.max_seqs;
  spec.io = lo.io;
  engine_ = backends::make_engine(model_, spec);

  for (int32_t id : engine::read_eos_ids(o.model, model_.config,
                                         own_tokenizer_ ? &*tokenizer_ : nullptr)) {
    auto& into = id >= 0 && id < model_.config.vocab_size ? eos_ids_ : eos_outside_;
    if (std::find(into.begin(), into.end(), id) == into.end()) into.push_back(id);
  }
}

Session::~Session() = default;

const text::Tokenizer& Session::require_tokenizer() const {
  if (!tokenizer_)
    throw InvalidArgument(fmt::format(
        "{} has no tokenizer, so text cannot be encoded; give token ids instead, or copy the "
        "model's tokenizer files (tokenizer.json, or vocab.json + merges.txt) beside its weights",
        options_.model.string()));
  return *tokenizer_;
}

std::string Session::model_name() const {
  fs::path p = options_.model;
  if (p.has_filename()) return p.filename().string();
  return p.parent_path().filename().string();
}

std::vector<std::string> Session::describe() const {
  std::vector<std::string> lines;
  const engine::Backend& be = engine_->backend();
  lines.push_back(fmt::format("{}; load {:.2f} s", be.describe(), be.load_s()));
  if (model_.plan) lines.push_back(fmt::format("plan: {}", model_.plan->summary()));
  return lines;
}

}  // namespace ferry::session
