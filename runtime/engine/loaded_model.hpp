// LoadedModel: a model directory opened for inference — config.json parsed, the checkpoint's
// metadata read and checked against it, and the weights loaded by a WeightProvider.
#pragma once

#include <filesystem>
#include <memory>

#include "offload/checkpoint.hpp"
#include "runtime/engine/weights.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

struct LoadedModel {
  model::ModelConfig config;
  offload::Checkpoint checkpoint;
  std::unique_ptr<WeightProvider> weights;
};

// Opens dir (config.json + weights in any supported layout). Throws with a message naming
// the file and what to do when anything is missing or inconsistent.
LoadedModel load_model(const std::filesystem::path& dir);

}  // namespace ferry::engine
