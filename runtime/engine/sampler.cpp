#include "runtime/engine/sampler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/core/error.hpp"

namespace ferry::engine {

void SamplingParams::validate() const {
  FERRY_EXPECT(std::isfinite(temperature) && temperature >= 0.0f,
               "temperature {} is invalid; use 0 for greedy decoding or a positive value such "
               "as 0.8",
               temperature);
  FERRY_EXPECT(top_k >= 0, "top-k {} is invalid; use 0 (no limit) or a positive count", top_k);
  FERRY_EXPECT(top_p > 0.0f && top_p <= 1.0f,
               "top-p {} is invalid; use a value in (0, 1], e.g. 0.9 (1 disables it)", top_p);
}

int32_t argmax(std::span<const float> values) {
  int32_t best = 0;
  for (std::size_t i = 1; i < values.size(); ++i)
    if (values[i] > values[static_cast<std::size_t>(best)]) best = static_cast<int32_t>(i);
  return best;
}

Sampler::Sampler(SamplingParams params) : params_(params), rng_(params.seed) { params_.validate(); }

int32_t Sampler::sample(std::span<const float> logits) {
  FERRY_EXPECT(!logits.empty(), "cannot sample from empty logits");
  if (params_.temperature == 0.0f) return argmax(logits);

  // Candidates in descending logit order (ties broken by id, so runs are reproducible).
  const auto n = static_cast<int32_t>(logits.size());
  order_.resize(static_cast<std::size_t>(n));
  std::iota(order_.begin(), order_.end(), 0);
  const auto by_logit = [&](int32_t a, int32_t b) {
    const float la = logits[static_cast<std::size_t>(a)];
    const float lb = logits[static_cast<std::size_t>(b)];
    return la > lb || (la == lb && a < b);
  };
  int32_t keep = n;
  if (params_.top_k > 0 && params_.top_k < n) keep = params_.top_k;
  // Partial sort: only the candidates that can survive top-k need ordering.
  std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), by_logit);

  // Softmax of logits / T over the kept candidates, in double for a stable cumulative sum.
  const double inv_t = 1.0 / static_cast<double>(params_.temperature);
  const double top = static_cast<double>(logits[static_cast<std::size_t>(order_[0])]);
  probs_.resize(static_cast<std::size_t>(keep));
  double sum = 0.0;
  for (int32_t i = 0; i < keep; ++i) {
    const double p =
        std::exp((static_cast<double>(
                      logits[static_cast<std::size_t>(order_[static_cast<std::size_t>(i)])]) -
                  top) *
                 inv_t);
    probs_[static_cast<std::size_t>(i)] = static_cast<float>(p);
    sum += p;
  }
  // Nucleus: the smallest prefix whose probability reaches top_p.
  if (params_.top_p < 1.0f) {
    double cum = 0.0;
    int32_t cut = keep;
    for (int32_t i = 0; i < keep; ++i) {
      cum += static_cast<double>(probs_[static_cast<std::size_t>(i)]) / sum;
      if (cum >= static_cast<double>(params_.top_p)) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = 0.0;
    for (int32_t i = 0; i < keep; ++i)
      sum += static_cast<double>(probs_[static_cast<std::size_t>(i)]);
  }
  // One uniform draw from the generator: the same seed gives the same tokens on any machine.
  const double u = std::generate_canonical<double, 53>(rng_) * sum;
  double cum = 0.0;
  for (int32_t i = 0; i < keep; ++i) {
    cum += static_cast<double>(probs_[static_cast<std::size_t>(i)]);
    if (u < cum) return order_[static_cast<std::size_t>(i)];
  }
  return order_[static_cast<std::size_t>(keep - 1)];
}

}  // namespace ferry::engine
