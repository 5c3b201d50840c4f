#include "runtime/session/session.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/engine/planning.hpp"
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

namespace {

// The automatic KV pool: plans for 1, 2, 4 … max_seqs sequences at full context (each one's
// cache out of the same budget as the resident layers) and keeps the pool of the plan that
// decodes the most tokens/s together; a bigger batch must win by 2% to be taken.
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
  struct Point {
    int seqs = 0;
    double tokens_per_s = 0;
    std::size_t resident = 0;
  };
  std::vector<Point> points;
  for (int b = 1;; b = std::min(2 * b, o.max_seqs)) {
    engine::PlanOptions po = plan_options(config, context, b, o.device, machine);
    po.max_batch_rows = o.load.max_batch_rows;
    try {
      const planner::Plan p =
          planner::make_plan(engine::plan_request(config, source.weights(), machine, po, ""));
      const auto& c = p.chosen;
      points.push_back({b, c.predicted.tokens_per_s, c.tiers.size() - c.count(planner::Tier::disk)});
    } catch (const PlanError&) {
      break;  // more sequences only need more memory
    }
    if (b == o.max_seqs) break;
  }
  if (points.empty()) return 0;  // load_model gives the refusal, with its numbers
  std::size_t best = 0;
  for (std::size_t i = 1; i < points.size(); ++i)
    if (points[i].tokens_per_s > points[best].tokens_per_s * 1.02) best = i;
  const Point& p = points[best];
  why = fmt::format("KV pool for {} full-context sequence{} ({} tokens): predicted {:.2f} tokens/s "
                    "together with {} resident units",
                    p.seqs, p.seqs == 1 ? "" : "s",
                    int64_t{p.seqs} * engine::kv_blocks_for(context) * engine::KvBlocks::kBlockTokens,
                    p.tokens_per_s, p.resident);
  if (best + 1 < points.size()) {
    const Point& more = points.back();
    why += fmt::format("; {} sequences' caches would leave {} resident for {:.2f} tokens/s",
                       more.seqs, more.resident, more.tokens_per_s);
  } else if (points.size() < static_cast<std::size_t>(std::bit_width(unsigned(o.max_seqs)))) {
    why += "; a bigger pool does not fit the budget";
  }
  // Each sequence holds whole blocks: p.seqs full-context sequences need p.seqs times the
  // blocks of one (0: every slot, the engine's default).
  if (p.seqs >= o.max_seqs) return 0;
  return int64_t{p.seqs} * engine::kv_blocks_for(context) * engine::KvBlocks::kBlockTokens;
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
