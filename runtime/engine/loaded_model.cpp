#include "runtime/engine/loaded_model.hpp"

#include "planner/memory_probe.hpp"
#include "runtime/core/error.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/kv_cache.hpp"

namespace ferry::engine {

namespace {
// Code, libraries, the tokenizer's tables, thread stacks and allocator slack: `ferry run` on a
// tiny model peaks at 17 MiB of RSS with the GPT-2 tokenizer loaded; the rest is headroom.
constexpr uint64_t kRuntimeOverheadBytes = 64ull << 20;
}  // namespace

uint64_t fixed_host_bytes(const model::ModelConfig& config, int max_seqs, int64_t context,
                          int64_t max_batch_rows, int64_t max_logit_rows) {
  const auto e = static_cast<uint64_t>(config.n_embd);
  const auto vectors =
      static_cast<uint64_t>(config.n_layer) * (3 * e + static_cast<uint64_t>(config.n_inner)) +
      2 * e + static_cast<uint64_t>(config.vocab_size);
  return KvCache::bytes_needed(config, max_seqs, context) +
         Engine::activation_bytes(config, max_batch_rows, max_logit_rows) +
         vectors * sizeof(float) + kRuntimeOverheadBytes;
}

LoadedModel load_model(const std::filesystem::path& dir, LoadOptions options) {
  FERRY_EXPECT(std::filesystem::is_directory(dir),
               "model directory {} does not exist; give -m a Hugging Face model directory "
               "(config.json + weights), or make one with: ferry make-model --preset tiny -o DIR",
               dir.string());
  LoadedModel m;
  m.config = model::ModelConfig::from_model_dir(dir);
  m.checkpoint = std::make_unique<offload::Checkpoint>(offload::Checkpoint::open(dir));
  check_checkpoint(m.config, *m.checkpoint);

  const int64_t context = options.context > 0 ? options.context : m.config.n_positions;
  const int64_t rows = options.max_batch_rows > 0 ? options.max_batch_rows : context;
  Placement placement;
  if (options.placement) {
    placement = *options.placement;
  } else {
    if (options.max_ram_bytes) {
      m.budget_bytes = *options.max_ram_bytes;
      m.budget_source = "--max-ram";
    } else {
      const planner::RamProbe probe = planner::probe_ram();
      m.budget_bytes = probe.available_bytes();
      m.budget_source = "available memory (" + probe.describe() + ")";
    }
    planner::MemoryRequest req;
    req.unit_bytes = offload::LayerStreamer::unit_bytes(
        *m.checkpoint, gptj_units(m.config, Placement::all(m.config, offload::Tier::disk)));
    const int64_t logit_rows = options.max_logit_rows > 0 ? options.max_logit_rows : rows;
    req.fixed_bytes = fixed_host_bytes(m.config, options.max_seqs, context, rows, logit_rows);
    req.budget_bytes = m.budget_bytes;
    req.budget_source = m.budget_source;
    m.plan = planner::plan_memory(req);
    placement.blocks.resize(static_cast<std::size_t>(m.config.n_layer));
    for (std::size_t i = 0; i < placement.blocks.size(); ++i)
      placement.blocks[i] = m.plan.tiers[i] == planner::UnitTier::resident ? offload::Tier::host
                                                                           : offload::Tier::disk;
    placement.head = m.plan.tiers.back() == planner::UnitTier::resident ? offload::Tier::host
                                                                        : offload::Tier::disk;
    placement.slot_count = std::max<std::size_t>(2, m.plan.slot_count);
  }
  m.weights = std::make_unique<StreamingWeights>(m.config, *m.checkpoint, placement, options.io);
  return m;
}

}  // namespace ferry::engine
