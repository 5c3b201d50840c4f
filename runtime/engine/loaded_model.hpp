// LoadedModel: a model directory opened for inference — config.json parsed, the checkpoint's
// metadata read and checked against it, a memory plan made for the RAM budget, and the
// weights placed by it (resident, or streamed from disk through staging slots).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "offload/checkpoint.hpp"
#include "offload/io_engine.hpp"
#include "planner/memory_plan.hpp"
#include "runtime/engine/weights.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

struct LoadOptions {
  std::optional<uint64_t> max_ram_bytes;  // none: what the machine (and its cgroups) has free
  int64_t context = 0;                    // KV cache tokens per sequence; 0: n_positions
  int64_t max_batch_rows = 0;             // most tokens in one forward pass; 0: the context
  int64_t max_logit_rows = 0;             // most rows of logits one pass returns; 0: max_batch_rows
  int max_seqs = 1;
  offload::IoOptions io = offload::IoOptions::from_env();
  std::optional<Placement> placement;  // forces the tiers instead of planning them
};

struct LoadedModel {
  model::ModelConfig config;
  std::unique_ptr<offload::Checkpoint> checkpoint;  // the weights refer to it: never moved
  std::unique_ptr<StreamingWeights> weights;
  planner::MemoryPlan plan;
  uint64_t budget_bytes = 0;
  std::string budget_source;
};

// Host bytes ferry needs besides the weight units: KV cache, activations, f32 norms and
// biases, and the runtime itself (code, tokenizer, allocator slack).
uint64_t fixed_host_bytes(const model::ModelConfig& config, int max_seqs, int64_t context,
                          int64_t max_batch_rows, int64_t max_logit_rows);

// Opens dir (config.json + weights in any supported layout), plans memory and loads. Throws
// with a message naming the file and what to do when anything is missing or inconsistent,
// and PlanError (with the minimum) when the budget cannot hold the model even streamed.
LoadedModel load_model(const std::filesystem::path& dir, LoadOptions options = {});

}  // namespace ferry::engine
