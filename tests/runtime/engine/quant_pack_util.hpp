// Shared by the ferry pack tests (test_quant_pack.cpp: format, streaming, damage) and the
// accuracy measurements (test_quant_accuracy.cpp): load a model with every unit on one tier, run
// prompts through it, convert a fixture.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/engine/convert.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine::quant_test {

namespace fs = std::filesystem;

inline LoadOptions placed(const fs::path& dir, offload::Tier tier, std::size_t slots = 2) {
  LoadOptions o;
  o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), tier, slots);
  return o;
}

// Logits at every position of each prompt, concatenated.
inline std::vector<float> all_logits(const fs::path& dir,
                                     const std::vector<std::vector<int32_t>>& prompts,
                                     offload::Tier tier = offload::Tier::host) {
  LoadedModel m = load_model(dir, placed(dir, tier));
  Engine engine(*m.weights, {}, default_thread_pool());
  std::vector<float> out;
  for (const auto& ids : prompts) {
    engine.reset(0);
    SeqTokens s{0, ids};
    const auto& l = engine.forward({&s, 1}, LogitsFor::all);
    out.insert(out.end(), l.begin(), l.end());
  }
  return out;
}

inline fs::path convert(const fs::path& in, const fs::path& out, const std::string& quant,
                        int group = 64, bool all = false) {
  ConvertOptions o;
  o.format = model::WeightFormat::parse(quant, group);
  o.quant_embeddings = all;
  o.quant_lm_head = all;
  convert_model(in, out, o);
  return out;
}

inline std::vector<std::vector<int32_t>> fixture_prompts(const std::string& fixture) {
  const nlohmann::json e =
      nlohmann::json::parse(test::read_file(test::data_dir() / "gptj" / fixture / "expected.json"));
  std::vector<std::vector<int32_t>> prompts;
  for (const nlohmann::json& p : e["prompts"])
    prompts.push_back(p["input_ids"].get<std::vector<int32_t>>());
  return prompts;
}

}  // namespace ferry::engine::quant_test
