#include "runtime/engine/loaded_model.hpp"

#include "runtime/core/error.hpp"

namespace ferry::engine {

LoadedModel load_model(const std::filesystem::path& dir) {
  FERRY_EXPECT(std::filesystem::is_directory(dir),
               "model directory {} does not exist; give -m a Hugging Face model directory "
               "(config.json + weights), or make one with: ferry make-model --preset tiny -o DIR",
               dir.string());
  model::ModelConfig config = model::ModelConfig::from_model_dir(dir);
  offload::Checkpoint checkpoint = offload::Checkpoint::open(dir);
  auto weights = std::make_unique<ResidentWeights>(config, checkpoint);
  return LoadedModel{std::move(config), std::move(checkpoint), std::move(weights)};
}

}  // namespace ferry::engine
