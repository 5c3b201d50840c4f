// LoadedModel: a model directory opened for inference — config.json parsed, the checkpoint's
// metadata read and checked against it, a plan made for this machine (or a saved plan checked
// and replayed), and the weights placed by it (resident, or streamed from disk through staging
// slots).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "offload/checkpoint.hpp"
#include "offload/io_engine.hpp"
#include "planner/plan.hpp"
#include "runtime/engine/planning.hpp"
#include "runtime/engine/weights.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

struct LoadOptions {
  std::optional<uint64_t> max_ram_bytes;     // none: what the machine (and its cgroups) has free
  std::string max_ram_source = "--max-ram";  // where max_ram_bytes came from, for the plan's text
  int64_t context = 0;                       // KV cache tokens per sequence; 0: default_context
  int64_t max_batch_rows = 0;                // most tokens in one forward pass; 0: the context
  int64_t max_logit_rows = 0;  // most rows of logits one pass returns; 0: max_batch_rows
  int max_seqs = 1;
  int64_t kv_pool_tokens = 0;  // the KV cache's pool (EngineOptions); 0: max_seqs × context
  planner::KvMemory kv_memory = planner::KvMemory::automatic;  // CUDA: where the pool may live
  int64_t attended_tokens = 0;                // for the time prediction; 0: context / 2
  std::string context_hint;  // how a refusal says to shorten the context; empty: --ctx
  std::optional<offload::VerifyMode> verify;  // a ferry pack's checksums; none: FERRY_VERIFY
  offload::IoOptions io = offload::IoOptions::from_env();
  // The machine to plan for; none: probe this one (figures cached, see ProbeOptions).
  std::optional<planner::Machine> machine;
  ProbeOptions probe;
  // A tuned policy's staging slot count (prefetch depth + 1); none: the planner chooses.
  std::optional<std::size_t> slot_count;
  std::optional<planner::Plan> plan;   // replays a saved plan, after checking it still fits
  std::optional<Placement> placement;  // forces the tiers, with no plan (tests, --mmap)
  // CUDA: plan for this device (its free memory is the VRAM figure, capped by max_vram_bytes)
  // and leave the weights to the CUDA engine (LoadedModel::weights stays null).
  planner::Backend backend = planner::Backend::cpu;
  const Device* device = nullptr;
  std::optional<uint64_t> max_vram_bytes;
  std::string max_vram_source = "--max-vram";  // where max_vram_bytes came from
};

struct LoadedModel {
  model::ModelConfig config;
  std::unique_ptr<offload::Checkpoint> checkpoint;  // the weights refer to it: never moved
  // The backend it was planned for; runtime/backends makes its engine (the CPU backend computes
  // from `weights`, a device backend places the checkpoint itself and leaves them null).
  planner::Backend backend = planner::Backend::cpu;
  std::unique_ptr<StreamingWeights> weights;  // null for the CUDA backend
  std::optional<planner::Plan> plan;          // none when the placement was forced
  Placement placement;
};

// Opens dir (config.json + weights in any supported layout), plans and loads. Throws with a
// message naming the file and what to do when anything is missing or inconsistent, and
// PlanError (with the smallest budget that works) when the budget cannot hold the model even
// streamed, or when a saved plan does not fit this machine.
LoadedModel load_model(const std::filesystem::path& dir, LoadOptions options = {});

}  // namespace ferry::engine
