#include "runtime/engine/loaded_model.hpp"

#include "runtime/core/error.hpp"
#include "runtime/engine/model_files.hpp"

namespace ferry::engine {

LoadedModel load_model(const std::filesystem::path& dir, LoadOptions options) {
  std::error_code ec;
  const auto gguf = gguf_model_file(dir);
  FERRY_EXPECT(gguf || std::filesystem::is_directory(dir, ec),
               "model {} does not exist; give -m a Hugging Face model directory (config.json + "
               "weights), a GGUF file, or make one with: ferry make-model --preset tiny -o DIR",
               dir.string());
  LoadedModel m;
  m.checkpoint = std::make_unique<offload::Checkpoint>(offload::Checkpoint::open(
      gguf.value_or(dir), options.verify.value_or(offload::verify_mode_from_env())));
  m.config = gguf ? gguf_model_config(*m.checkpoint) : model::ModelConfig::from_model_dir(dir);
  check_checkpoint(m.config, *m.checkpoint);

  Placement placement;
  if (options.placement) {
    placement = *options.placement;
  } else {
    ProbeOptions probe = options.probe;
    probe.io = options.io;  // the disk is probed the way this run will read it
    if (!options.machine) {
      probe.read_unit_bytes = typical_unit_bytes(m.config, m.checkpoint.get());
      probe.n_embd = m.config.n_embd;
      probe.n_inner = m.config.n_inner;
      probe.batch_rows = options.max_seqs > 1;
    }
    planner::Machine machine =
        options.machine
            ? *options.machine
            : probe_machine(m.checkpoint.get(), weight_dtype(m.config, m.checkpoint.get()), probe,
                            options.device);
    if (options.max_ram_bytes) {
      machine.ram_bytes = {static_cast<double>(*options.max_ram_bytes), options.max_ram_source};
      machine.ram_is_explicit_cap = true;
    }
    if (options.max_vram_bytes && machine.gpu)
      machine.gpu->vram_bytes = {static_cast<double>(*options.max_vram_bytes),
                                 options.max_vram_source};
    PlanOptions po;
    po.context = options.context;
    po.max_batch_rows = options.max_batch_rows;
    po.max_logit_rows = options.max_logit_rows;
    po.max_seqs = options.max_seqs;
    po.kv_pool_tokens = options.kv_pool_tokens;
    po.kv_memory = options.kv_memory;
    po.attended_tokens = options.attended_tokens;
    po.context_hint = options.context_hint;
    po.io_queue_depth = options.io.queue_depth;
    po.forced_host_slots = options.slot_count.value_or(0);
    po.backend = options.backend;
    const planner::PlanRequest request =
        plan_request(m.config, m.checkpoint.get(), machine, po, dir.string());
    if (options.plan) {
      check_replay(*options.plan, request);
      m.plan = *options.plan;
    } else {
      m.plan = planner::make_plan(request);
    }
    placement = placement_from_plan(*m.plan, m.config);
  }
  m.placement = placement;
  m.backend = options.backend;
  if (options.backend == planner::Backend::cpu)
    m.weights = std::make_unique<StreamingWeights>(m.config, *m.checkpoint, placement, options.io);
  return m;
}

}  // namespace ferry::engine
