// Planning a model on a machine: the bytes of every weight unit (from the checkpoint when there
// is one, from config.json alone otherwise), the KV cache and activations the request needs,
// and the machine's figures (probed, cached, or a named profile, with flags on top) — turned
// into a planner::PlanRequest, and a plan back into the placement the streamer uses.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "offload/checkpoint.hpp"
#include "offload/io_engine.hpp"
#include "planner/machine.hpp"
#include "planner/plan.hpp"
#include "runtime/core/device.hpp"
#include "runtime/engine/weights.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/model/weight_format.hpp"

namespace ferry::engine {

struct PlanOptions {
  int64_t context = 0;         // KV cache tokens per sequence; 0: model::default_context
  int64_t max_batch_rows = 0;  // most tokens in one forward pass; 0: the context
  int64_t max_logit_rows = 0;  // most rows of logits a pass returns; 0: max_batch_rows
  int max_seqs = 1;
  int64_t kv_pool_tokens = 0;  // the KV cache's pool (EngineOptions); 0: max_seqs × context
  // CUDA: where the KV pool may live (--kv-memory); the CPU's is in host memory.
  planner::KvMemory kv_memory = planner::KvMemory::automatic;
  int64_t attended_tokens = 0;  // KV tokens a decode step reads on average; 0: context / 2
  std::string context_hint;     // PlanRequest::context_hint: how to shorten the context
  planner::Backend backend = planner::Backend::cpu;
  uint32_t io_queue_depth = 16;
  std::size_t forced_host_slots = 0;  // a tuned policy's slot count; 0: search
  // Plan for a ferry pack of this format (ferry convert --quant) instead of the checkpoint's
  // own bytes: every layer and the head are one blob of the pack's size.
  std::optional<model::WeightFormat> format;
};

// Host bytes the CPU backend needs besides the weight units and the KV cache: activations,
// norms and biases as f32, and the runtime itself (code, tokenizer tables, allocator slack).
uint64_t fixed_host_bytes(const model::ModelConfig& config, int64_t max_batch_rows,
                          int64_t max_logit_rows);

// The weights' dtype: the checkpoint's matrices', else config.json's torch_dtype.
DType weight_dtype(const model::ModelConfig& config, const offload::Checkpoint* checkpoint);

// checkpoint may be null (plan from config.json alone, 4 KiB alignment estimated).
planner::PlanRequest plan_request(const model::ModelConfig& config,
                                  const offload::Checkpoint* checkpoint,
                                  const planner::Machine& machine, const PlanOptions& options,
                                  std::string model_name);

struct ProbeOptions {
  bool measure = true;   // false: never read the disk or run kernels; unknown figures get defaults
  bool reprobe = false;  // measure again even when the cache has a recent figure
  // The bytes a layer read carries (typical_unit_bytes): the disk is measured with reads of
  // that size, as streaming does them. 0: 64 MiB.
  uint64_t read_unit_bytes = 0;
  // How the run will read (engine, queue depth, chunk size): the disk is probed the same way,
  // so the figure is the streamer's rate, not another engine's.
  offload::IoOptions io = offload::IoOptions::from_env();
  // The model's shapes: the CPU is measured on one block's matrices (0: GPT-J-6B's).
  int64_t n_embd = 0;
  int64_t n_inner = 0;
  // Also measure what each extra row of a many-row product costs (a batch of sequences is
  // planned); cached like the mat-vec rate.
  bool batch_rows = false;
};

// The CPU's matrix–vector rate for dtype (weight bytes/s): cached, measured (128 MiB), or a
// default, each saying so.
planner::Figure cpu_compute_figure(DType dtype, const ProbeOptions& options);
// What each row past the first of a many-row product costs on the CPU for dtype (weight bytes ×
// rows per second): cached, measured (an 8-row product against a mat-vec), or unknown (the
// planner then assumes twice the mat-vec rate) when options.measure is false.
planner::Figure cpu_extra_rows_figure(DType dtype, const ProbeOptions& options);

// The bytes of the model's median weight unit (for GPT-J: one layer).
uint64_t typical_unit_bytes(const model::ModelConfig& config,
                            const offload::Checkpoint* checkpoint);

// This machine: free RAM (cgroups included), RLIMIT_MEMLOCK, the disk read rate of the
// filesystem holding the checkpoint (a short O_DIRECT read, cached per block device) and the
// CPU's matrix–vector rate for dtype (cached per SIMD level and thread count).
// With a device that has memory of its own (CUDA), its free memory is the VRAM figure and its
// host → device rate is a 256 MiB pinned copy (cached per device name); its compute rate comes
// from the probe cache ("gpu NAME") or a T4-class default that says so.
planner::Machine probe_machine(const offload::Checkpoint* checkpoint, DType dtype,
                               const ProbeOptions& options = {}, const Device* device = nullptr);

// Feeds a rate this machine achieved back into the probe cache, so the next plan predicts
// from what streaming really got rather than from the short probe: the cached figure becomes
// the median of the last runs' samples (ProbeCache::learn: one noisy run cannot swing it, an
// absurd one is dropped). Ignored below 64 MiB or 50 ms of work (too little to say anything).
// Returns the figure now cached, or nothing when the sample was ignored or the cache is off.
// The disk figure is kept per read size class, under the class the model's plans read
// (typical_unit_bytes), whatever the size of the reads this run made.
std::optional<double> learn_disk_rate(const model::ModelConfig& config,
                                      const offload::Checkpoint& checkpoint, uint64_t bytes,
                                      double busy_s, std::string_view how);
std::optional<double> learn_cpu_rate(DType dtype, int64_t n_embd, uint64_t weight_bytes,
                                     double busy_s, std::string_view how);
// A GPU's decode rate in weight bytes/s, kept per device name and weight dtype ("gpu NAME
// q4g64"): learned only from runs with every unit in VRAM, where the decode time is compute and
// nothing else.
std::optional<double> learn_gpu_rate(const std::string& gpu_name, DType dtype,
                                     uint64_t weight_bytes, double busy_s, std::string_view how);

// Where the streamer puts each unit, from a plan. A CUDA plan keeps its device tier and device
// slots; without the CUDA backend compiled in, it is refused with PlanError.
Placement placement_from_plan(const planner::Plan& plan, const model::ModelConfig& config);

// Refuses to replay a saved plan that does not match this model and request, or that needs
// more RAM than available_ram (from ram_source): the error says what differs and what to do.
void check_replay(const planner::Plan& saved, const planner::PlanRequest& now);

}  // namespace ferry::engine
