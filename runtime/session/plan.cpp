#include "runtime/session/plan.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <memory>

#include "planner/memory_probe.hpp"
#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/model_files.hpp"

namespace ferry::session {

namespace fs = std::filesystem;

namespace {

// Whether dir holds weights (any checkpoint file); without, the plan uses config.json alone.
bool has_weights(const fs::path& dir) {
  if (!fs::is_directory(dir)) return false;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    const std::string ext = e.path().extension().string();
    if (ext == ".safetensors" || ext == ".bin" || ext == ".pt" || ext == ".pth" ||
        ext == ".ferry" || name.find(".index.json") != std::string::npos)
      return true;
  }
  return false;
}

// On a GPU the pool's memory is part of the choice: " in VRAM", " in host memory (…)"; the CPU's
// is always in host memory ("").
std::string kv_place(const planner::Plan& p) {
  if (p.request.backend != planner::Backend::cuda) return {};
  return p.chosen.kv == planner::KvPlace::host ? " in host memory (pinned, read over PCIe)"
                                               : " in VRAM";
}

}  // namespace

PlanSource open_plan_source(const fs::path& model_path, const std::string& dtype) {
  const bool gguf = engine::gguf_model_file(model_path).has_value();
  const bool config_file = !gguf && fs::is_regular_file(model_path);
  PlanSource s;
  s.dir = config_file ? model_path.parent_path() : model_path;
  s.config = config_file ? model::ModelConfig::from_file(model_path)
                         : engine::read_model_config(s.dir);
  if (!config_file && (gguf || has_weights(s.dir))) {
    s.checkpoint.emplace(offload::Checkpoint::open(s.dir));
    engine::check_checkpoint(s.config, *s.checkpoint);
  } else if (!dtype.empty()) {
    const auto dt = parse_dtype(dtype);
    FERRY_EXPECT(dt && is_float_weight(*dt), "--dtype '{}' is not f32, f16 or bf16", dtype);
    s.config.torch_dtype = *dt;
  }
  return s;
}

planner::Machine plan_machine(const PlanSource& source, const MachineQuery& query) {
  planner::Machine machine;
  if (!query.profile.empty()) {
    machine = planner::load_profile(query.profile);
  } else {
    engine::ProbeOptions po;
    po.measure = query.measure;
    po.reprobe = query.reprobe;
    po.read_unit_bytes = engine::typical_unit_bytes(source.config, source.weights());
    po.n_embd = source.config.n_embd;
    po.n_inner = source.config.n_inner;
    po.batch_rows = query.batch_rows;
    // This machine's GPU, when a backend for one is compiled in and a device answers: its
    // free memory is the VRAM figure, as `ferry run --device cuda` will see it.
    const std::unique_ptr<Device> gpu = query.device != "cpu" ? backends::find_gpu() : nullptr;
    machine = engine::probe_machine(source.weights(),
                                    engine::weight_dtype(source.config, source.weights()), po,
                                    gpu.get());
  }
  if (query.max_ram_bytes) {
    machine.ram_bytes = {static_cast<double>(*query.max_ram_bytes), "--max-ram"};
    machine.ram_is_explicit_cap = true;
  }
  return machine;
}

planner::GpuSpec what_if_gpu() {
  planner::GpuSpec g;
  g.name = "GPU (what-if)";
  g.vram_bytes = {15.0 * (1ull << 30), "default: a 15 GiB T4-class GPU; give --max-vram"};
  g.h2d_bytes_per_s = {12e9, "default: PCIe 3 x16; give --h2d-bw"};
  g.compute_bytes_per_s = {2.4e11, "default: a T4-class GPU; give --gpu-bw"};
  g.context_bytes = 400ull << 20;
  g.host_context_bytes = 300ull << 20;
  return g;
}

engine::PlanOptions plan_options(const model::ModelConfig& config, int64_t context, int batch,
                                 const std::string& device, const planner::Machine& machine) {
  engine::PlanOptions po;
  po.context = context;
  po.max_seqs = batch;
  po.max_batch_rows = context > 0 ? context : model::default_context(config);
  po.max_logit_rows = batch;
  if (device.empty()) {
    po.backend = machine.gpu ? planner::Backend::cuda : planner::Backend::cpu;
  } else {
    po.backend = backends::planner_backend(device);
  }
  return po;
}

planner::Plan plan_model(const PlanQuery& query) {
  const PlanSource source = open_plan_source(query.model);
  MachineQuery mq;
  mq.profile = query.profile;
  mq.device = query.device;
  mq.measure = query.measure;
  mq.max_ram_bytes = query.max_ram_bytes;
  mq.batch_rows = query.batch > 1;
  planner::Machine machine = plan_machine(source, mq);
  if (query.max_vram_bytes) {
    if (!machine.gpu) machine.gpu = what_if_gpu();
    machine.gpu->vram_bytes = {static_cast<double>(*query.max_vram_bytes), "--max-vram"};
  }
  engine::PlanOptions po =
      plan_options(source.config, query.context, query.batch, query.device, machine);
  po.kv_memory = query.kv_memory;
  return planner::make_plan(
      engine::plan_request(source.config, source.weights(), machine, po, query.model.string()));
}

double SweepPoint::tokens_per_s() const { return plan ? plan->chosen.predicted.tokens_per_s : 0.0; }

std::size_t SweepPoint::resident_units() const {
  if (!plan) return 0;
  const auto& c = plan->chosen;
  return c.tiers.size() - c.count(planner::Tier::disk);
}

bool BatchSweep::any_fits() const {
  return std::any_of(points.begin(), points.end(), [](const SweepPoint& p) { return p.plan; });
}

BatchSweep sweep_batches(const model::ModelConfig& config, const offload::Checkpoint* checkpoint,
                         const planner::Machine& machine, const engine::PlanOptions& base,
                         int max_seqs, const std::string& model_name) {
  FERRY_EXPECT(max_seqs >= 1, "a batch sweep needs at least one sequence, not {}", max_seqs);
  const int64_t context = base.context > 0 ? base.context : model::default_context(config);
  BatchSweep sweep;
  for (int b = 1;; b = std::min(2 * b, max_seqs)) {
    SweepPoint pt;
    pt.seqs = b;
    pt.kv_tokens = int64_t{b} * engine::kv_blocks_for(context) * engine::KvBlocks::kBlockTokens;
    engine::PlanOptions po = base;
    po.max_seqs = b;
    // Rows of logits: one per sequence, or more when base asks for more than its sequences (a
    // draft's verification), so the last point is the plan of base itself.
    po.max_logit_rows =
        base.max_logit_rows > base.max_seqs ? std::max<int64_t>(b, base.max_logit_rows) : b;
    po.kv_pool_tokens = 0;  // every slot whole blocks at full context: pt.kv_tokens
    try {
      pt.plan =
          planner::make_plan(engine::plan_request(config, checkpoint, machine, po, model_name));
    } catch (const PlanError& e) {
      pt.refusal = e.what();
    }
    sweep.points.push_back(std::move(pt));
    if (b == max_seqs) break;
  }
  const auto& pts = sweep.points;
  for (std::size_t i = 0; i < pts.size(); ++i)
    if (pts[i].plan &&
        (!pts[sweep.chosen].plan ||
         pts[i].tokens_per_s() > pts[sweep.chosen].tokens_per_s() * (1 + kSweepMargin)))
      sweep.chosen = i;
  if (!sweep.any_fits()) {
    sweep.why = "no batch fits the budgets";
    return sweep;
  }
  const SweepPoint& p = sweep.best();
  sweep.why = fmt::format(
      "KV pool for {} full-context sequence{} ({} tokens{}): predicted {:.2f} tokens/s together "
      "with {} resident units",
      p.seqs, p.seqs == 1 ? "" : "s", p.kv_tokens, kv_place(*p.plan), p.tokens_per_s(),
      p.resident_units());
  // The biggest batch that fits, when it was not taken: what its caches would cost.
  std::size_t last_fit = sweep.chosen;
  for (std::size_t i = sweep.chosen + 1; i < pts.size(); ++i)
    if (pts[i].plan) last_fit = i;
  if (last_fit != sweep.chosen) {
    const SweepPoint& more = pts[last_fit];
    sweep.why +=
        fmt::format("; {} sequences' caches{} would leave {} resident for {:.2f} tokens/s",
                    more.seqs, kv_place(*more.plan), more.resident_units(), more.tokens_per_s());
  }
  if (!pts.back().plan) sweep.why += "; a bigger pool does not fit the budget";
  return sweep;
}

uint64_t parse_max_ram(const std::string& text) {
  const uint64_t bytes = parse_size(text);
  const long pages = ::sysconf(_SC_PHYS_PAGES);
  const long page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) return bytes;
  uint64_t total = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
  std::string what = fmt::format("this machine's {} of RAM", format_bytes(total));
  const planner::RamProbe probe = planner::probe_ram();
  if (probe.cgroup_limit_bytes && *probe.cgroup_limit_bytes < total) {
    total = *probe.cgroup_limit_bytes;
    what = fmt::format("the {} limit of memory cgroup {}", format_bytes(total), probe.cgroup_path);
  }
  FERRY_EXPECT(bytes <= total,
               "--max-ram {} is more than {}; the plan would place more in RAM than fits and the "
               "run would swap or be killed — give at most {}, or leave --max-ram out to use "
               "what is free",
               text, what, format_bytes(total));
  return bytes;
}

}  // namespace ferry::session
