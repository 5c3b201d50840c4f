// A small random GPT-J made with make_model, for profiling and tuning tests: four layers and a
// small vocabulary, so every unit streams quickly through staging slots.
#pragma once

#include <filesystem>

#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/make_model.hpp"
#include "runtime/engine/weights.hpp"

namespace ferry::profile::test_fixture {

inline model::ModelConfig tiny_config() {
  model::ModelConfig c = model::preset_config("tiny");  // 4 layers, 4 heads
  c.vocab_size = 512;
  c.n_positions = 64;
  c.n_embd = 128;
  c.n_inner = 512;
  return c;
}

inline void make_tiny_model(const std::filesystem::path& dir) {
  engine::MakeModelOptions o;
  o.config = tiny_config();
  o.dtype = DType::f16;
  o.seed = 7;
  engine::make_model(dir, o);
}

// Every unit on disk, read through `slots` staging slots for every pass.
inline engine::LoadOptions all_streamed(std::size_t slots = 3) {
  engine::LoadOptions o;
  o.placement = engine::Placement::all(tiny_config(), offload::Tier::disk, slots);
  o.io.report_fallbacks = false;
  return o;
}

}  // namespace ferry::profile::test_fixture
