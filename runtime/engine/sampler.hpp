// Sampler: picks the next token from logits — greedy (temperature 0, lowest id on ties) or
// random with temperature, top-k and top-p (nucleus) filtering, from a seeded generator so a
// run repeats exactly.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace ferry::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int top_k = 0;             // 0 = no limit
  float top_p = 1.0f;        // 1 = no nucleus cut
  uint64_t seed = 0;

  // Throws InvalidArgument naming the bad value and the accepted range.
  void validate() const;
};

class Sampler {
 public:
  explicit Sampler(SamplingParams params);
  int32_t sample(std::span<const float> logits);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;
  std::vector<float> probs_;
};

// Index of the largest value, the lowest index on ties (what torch.argmax gives on CPU).
int32_t argmax(std::span<const float> values);

}  // namespace ferry::engine
