#include "runtime/session/session.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/engine/planning.hpp"
#include "runtime/engine/drafts.hpp"
#include "runtime/engine/speculative.hpp"
#include "runtime/session/plan.hpp"

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

void check_draft(const std::string& draft, int draft_k) {
  if (draft.empty()) return;
  const engine::DraftSpec spec = engine::DraftSpec::parse(draft);
  // A draft model would need a cache slot of its own per sequence and its own budget.
  FERRY_EXPECT(spec.kind == engine::DraftSpec::Kind::lookup,
               "draft '{}' (a draft model) in a session's own batches (the Python module) is not "
               "supported yet; use draft=\"lookup\", or `ferry run` / `ferry serve --draft`, which "
               "open draft models",
               draft);
  engine::SpeculativeOptions{draft_k}.validate();
}

namespace {

// The automatic KV pool: the batch sweep's choice (1, 2, 4 … max_seqs sequences at full
// context, each one's cache out of the same budget as the resident layers).
int64_t choose_kv_pool(const SessionOptions& o, const model::ModelConfig& config, int64_t context,
                       std::string& why) {
  const PlanSource source = open_plan_source(o.model);
  MachineQuery mq;
  mq.device = o.device;
  mq.max_ram_bytes = o.load.max_ram_bytes;
  mq.batch_rows = true;
  planner::Machine machine = plan_machine(source, mq);
  if (o.load.machine) machine = *o.load.machine;
  if (o.max_vram_bytes && machine.gpu)
    machine.gpu->vram_bytes = {static_cast<double>(*o.max_vram_bytes), "--max-vram"};
  engine::PlanOptions po = plan_options(config, context, o.max_seqs, o.device, machine);
  po.max_batch_rows = o.load.max_batch_rows;
  po.kv_memory = o.load.kv_memory;
  const BatchSweep sweep =
      sweep_batches(config, source.weights(), machine, po, o.max_seqs, o.model.string());
  if (!sweep.any_fits()) return 0;  // load_model gives the refusal, with its numbers
  why = sweep.why;
  // 0: every slot, the engine's default (the same whole blocks per sequence).
  const SweepPoint& p = sweep.best();
  return p.seqs >= o.max_seqs ? 0 : p.kv_tokens;
}

}  // namespace

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

  check_draft(o.draft, o.draft_k);
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
  if (draft_k() > 0) {
    // Every sequence's last token and drafts in one pass, each row with its logits.
    lo.max_batch_rows += int64_t{o.max_seqs} * o.draft_k;
    lo.max_logit_rows = std::max<int64_t>(lo.max_logit_rows, int64_t{o.max_seqs} * (o.draft_k + 1));
  }
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

  if (o.kv_pool_tokens == kKvPoolAuto) {
    kv_pool_tokens_ = o.max_seqs > 1 && !lo.placement && !lo.plan
                          ? choose_kv_pool(o, config, context, kv_choice_)
                          : 0;
  } else {
    FERRY_EXPECT(o.kv_pool_tokens >= 0, "a KV pool of {} tokens: give a positive number",
                 o.kv_pool_tokens);
    kv_pool_tokens_ = o.kv_pool_tokens;
  }
  // 0 stays 0: every slot a whole number of blocks at full context (the engine's default); a
  // pool given in tokens is rounded up to whole blocks.
  FERRY_EXPECT(kv_pool_tokens_ == 0 || kv_pool_tokens_ >= context,
               "a KV pool of {} tokens cannot hold one sequence of the context's {} tokens; give "
               "at least {}",
               kv_pool_tokens_, context, context);
  lo.kv_pool_tokens = kv_pool_tokens_;
  model_ = engine::load_model(o.model, lo);
  backends::EngineSpec spec;
  spec.context = context;
  spec.max_seqs = o.max_seqs;
  spec.kv_pool_tokens = kv_pool_tokens_;
  spec.io = lo.io;
  engine_ = backends::make_engine(model_, spec);

  for (int32_t id : engine::read_eos_ids(o.model, model_.config,
                                         own_tokenizer_ ? &*tokenizer_ : nullptr)) {
    auto& into = id >= 0 && id < model_.config.vocab_size ? eos_ids_ : eos_outside_;
    if (std::find(into.begin(), into.end(), id) == into.end()) into.push_back(id);
  }
}

Session::~Session() = default;

std::unique_ptr<engine::Drafter> Session::make_drafter() const {
  if (draft_k() == 0) return nullptr;
  return std::make_unique<engine::LookupDrafter>();
}

engine::SchedulerOptions Session::scheduler_options() const {
  engine::SchedulerOptions so;
  so.max_seqs = options_.max_seqs;
  so.max_step_rows = options_.load.max_batch_rows;
  so.prefill_chunk = std::min<int64_t>(512, context());
  so.draft_k = draft_k();
  if (so.draft_k > 0)
    so.make_drafter = [](int) -> std::unique_ptr<engine::Drafter> {
      return std::make_unique<engine::LookupDrafter>();
    };
  return so;
}

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
  if (!kv_choice_.empty()) lines.push_back(kv_choice_);
  return lines;
}

}  // namespace ferry::session
