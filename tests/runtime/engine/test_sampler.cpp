#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "runtime/core/error.hpp"
#include "runtime/engine/sampler.hpp"

namespace ferry::engine {
namespace {

TEST(Sampler, GreedyTakesTheLowestIndexOnTies) {
  Sampler s({0.0f, 0, 1.0f, 1});
  const std::vector<float> logits = {0.1f, 2.0f, -1.0f, 2.0f};
  EXPECT_EQ(s.sample(logits), 1);
  EXPECT_EQ(argmax(logits), 1);
}

TEST(Sampler, TopKOneIsGreedy) {
  Sampler s({1.5f, 1, 1.0f, 7});
  const std::vector<float> logits = {0.1f, 0.3f, 0.2f, 0.29f};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, TinyTopPIsGreedy) {
  Sampler s({1.0f, 0, 1e-6f, 7});
  const std::vector<float> logits = {0.1f, 0.3f, 0.2f, 0.29f};
  for (int i = 0; i < 50; ++i) EXPECT_EQ(s.sample(logits), 1);
}

TEST(Sampler, SameSeedSameTokens) {
  std::vector<float> logits(100);
  for (std::size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<float>(i));
  Sampler a({0.9f, 40, 0.95f, 123});
  Sampler b({0.9f, 40, 0.95f, 123});
  Sampler c({0.9f, 40, 0.95f, 124});
  int differ = 0;
  for (int i = 0; i < 200; ++i) {
    const int32_t x = a.sample(logits);
    EXPECT_EQ(x, b.sample(logits));
    differ += x != c.sample(logits);
  }
  EXPECT_GT(differ, 20);  // another seed gives another stream
}

// At temperature 1 with no cuts the frequencies follow softmax(logits).
TEST(Sampler, FrequenciesFollowSoftmax) {
  const std::vector<float> logits = {1.0f, 0.0f, 2.0f, -1.0f};
  double z = 0;
  for (float l : logits) z += std::exp(l);
  Sampler s({1.0f, 0, 1.0f, 42});
  std::map<int32_t, int> counts;
  const int n = 40000;
  for (int i = 0; i < n; ++i) counts[s.sample(logits)]++;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const double p = std::exp(logits[i]) / z;
    const double sd = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(counts[static_cast<int32_t>(i)] / static_cast<double>(n), p, 5 * sd) << i;
  }
}

// Top-p keeps the smallest set reaching p: with probabilities ≈ .66/.24/.09/.01 and p = 0.8
// only the first two can appear.
TEST(Sampler, TopPCutsTheTail) {
  const std::vector<float> logits = {3.0f, 2.0f, 1.0f, -1.0f};
  Sampler s({1.0f, 0, 0.8f, 5});
  std::map<int32_t, int> counts;
  for (int i = 0; i < 5000; ++i) counts[s.sample(logits)]++;
  EXPECT_GT(counts[0], 0);
  EXPECT_GT(counts[1], 0);
  EXPECT_EQ(counts[2], 0);
  EXPECT_EQ(counts[3], 0);
}

TEST(Sampler, TopKCutsTheTail) {
  const std::vector<float> logits = {3.0f, 2.9f, 2.8f, 2.7f, 2.6f};
  Sampler s({5.0f, 2, 1.0f, 5});
  for (int i = 0; i < 2000; ++i) EXPECT_LT(s.sample(logits), 2);
}

TEST(Sampler, RejectsBadParameters) {
  EXPECT_THROW(Sampler({-1.0f, 0, 1.0f, 0}), InvalidArgument);
  EXPECT_THROW(Sampler({NAN, 0, 1.0f, 0}), InvalidArgument);
  EXPECT_THROW(Sampler({1.0f, -2, 1.0f, 0}), InvalidArgument);
  EXPECT_THROW(Sampler({1.0f, 0, 0.0f, 0}), InvalidArgument);
  EXPECT_THROW(Sampler({1.0f, 0, 1.5f, 0}), InvalidArgument);
}

}  // namespace
}  // namespace ferry::engine
