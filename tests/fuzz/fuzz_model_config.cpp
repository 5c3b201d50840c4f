// Fuzzes config.json: strict JSON parsing, ModelConfig::from_json's checks, and what the rest of
// ferry derives from an accepted description (the weight layout, the rotary frequencies), which
// must not overflow or allocate without bound for any config that passes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"
#include "runtime/model/layout.hpp"
#include "runtime/model/model_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const nlohmann::json j = ferry::parse_json_strict(text, "config.json", "fix it");
    const ferry::model::ModelConfig c = ferry::model::ModelConfig::from_json(j, "config.json");
    (void)c.summary();
    (void)c.rope_inv_freq();
    (void)c.to_json().dump();
    uint64_t bytes = 0;
    for (const auto& g : ferry::model::all_groups(c))
      for (const auto& w : g.weights) bytes += static_cast<uint64_t>(w.shape.numel());
    (void)bytes;
  } catch (const ferry::Error&) {
  }
  return 0;
}
