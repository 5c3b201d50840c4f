// What `ferry plan` answers, as a library: open the model's description (config.json, and the
// weights when present), describe the machine (probed, or a named profile), and plan. The plan
// command and the Python module (`ferry.plan`) both call these, so the two print the same plan.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "offload/checkpoint.hpp"
#include "planner/machine.hpp"
#include "planner/plan.hpp"
#include "runtime/engine/planning.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::session {

// A model as the planner sees it: its config and, when the directory holds weights (or it is a
// GGUF file), the checkpoint that gives exact sizes.
struct PlanSource {
  model::ModelConfig config;
  std::optional<offload::Checkpoint> checkpoint;  // none: sizes from config.json alone
  std::filesystem::path dir;  // the directory that holds the model (a config.json's parent)
  const offload::Checkpoint* weights() const { return checkpoint ? &*checkpoint : nullptr; }
};

// model: a model directory (weights optional), a config.json or a GGUF file. dtype ("f16",
// "bf16", "f32"; empty: config.json's) sets the weight type when there are no weights to read.
// Throws what reading the config and the checkpoint throws (FormatError naming the file).
PlanSource open_plan_source(const std::filesystem::path& model, const std::string& dtype = {});

struct MachineQuery {
  std::string profile;   // a named machine (colab-t4, ...) or its JSON file; empty: this one
  std::string device;    // "cpu": never look for a GPU; otherwise this machine's GPU, if any
  bool measure = true;   // false: cached figures or defaults only
  bool reprobe = false;  // measure again, ignoring the cache
  std::optional<uint64_t> max_ram_bytes;  // caps the RAM figure (--max-ram)
  bool batch_rows = false;  // plans for batches: measure what extra rows of a product cost
};

// The machine to plan for: a profile, or this one probed (its GPU's free memory as the VRAM).
planner::Machine plan_machine(const PlanSource& source, const MachineQuery& query);

// A GPU to plan for on a machine that has none (a what-if): T4-class figures, each naming the
// flag that changes it.
planner::GpuSpec what_if_gpu();

// The plan's shape: `context` KV tokens per sequence (0: the model's default), `batch`
// sequences, on `device` ("cpu" | "cuda"; empty: cuda when the machine has a GPU).
engine::PlanOptions plan_options(const model::ModelConfig& config, int64_t context, int batch,
                                 const std::string& device, const planner::Machine& machine);

// `ferry plan` without --quant, in one call.
struct PlanQuery {
  std::filesystem::path model;
  std::string profile;
  std::string device;
  std::optional<uint64_t> max_ram_bytes;
  std::optional<uint64_t> max_vram_bytes;  // on a machine with no GPU: a what-if GPU this big
  int64_t context = 0;
  int batch = 1;
  bool measure = true;
  planner::KvMemory kv_memory = planner::KvMemory::automatic;  // --kv-memory
};
// Throws PlanError (naming the smallest budget that works) when the model cannot fit.
planner::Plan plan_model(const PlanQuery& query);

// One batch size of a sweep: the plan for `seqs` sequences at full context, or why none fits.
struct SweepPoint {
  int seqs = 0;
  int64_t kv_tokens = 0;  // the KV pool: `seqs` sequences' whole blocks at the context
  std::optional<planner::Plan> plan;  // none: nothing fits the budgets
  std::string refusal;                // then: the planner's refusal

  double tokens_per_s() const;         // all sequences together; 0 when it does not fit
  std::size_t resident_units() const;  // units not read from disk every step
};

// The plans for 1, 2, 4 … max_seqs sequences and the one that decodes the most tokens/s. Each
// sequence's KV cache takes memory resident layers could use, and each step's streamed bytes
// serve every sequence: the sweep shows the trade. `ferry plan --batch` prints it and
// `--kv-tokens auto` sizes its pool by it.
struct BatchSweep {
  std::vector<SweepPoint> points;
  std::size_t chosen = 0;  // index into points; meaningless when none fits
  std::string why;         // what was chosen and what the alternatives would give, in one line

  bool any_fits() const;
  const SweepPoint& best() const { return points[chosen]; }
};

// A bigger batch is taken only when it predicts this much more than the chosen (a 1% gain is
// within the model's error and costs every sequence's latency).
inline constexpr double kSweepMargin = 0.02;

// Plans base (its backend, format, rows …) for 1, 2, 4 … max_seqs sequences, each with every
// slot at full context (base.max_seqs, max_logit_rows and kv_pool_tokens are overwritten), and
// chooses the fastest. Never throws PlanError: a point that does not fit keeps the refusal.
BatchSweep sweep_batches(const model::ModelConfig& config, const offload::Checkpoint* checkpoint,
                         const planner::Machine& machine, const engine::PlanOptions& base,
                         int max_seqs, const std::string& model_name = {});

// --max-ram's value: a size (parse_size), refused with InvalidArgument when it is more than the
// machine (or its memory cgroup) has.
uint64_t parse_max_ram(const std::string& text);

}  // namespace ferry::session
