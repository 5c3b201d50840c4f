// A sequence's logits do not depend on what shares its forward pass: bit for bit the same alone,
// beside other sequences' prompts and decode tokens (continuous batching), and when several of
// its own tokens are scored in one pass (verifying drafts). The scheduler's and speculative
// decoding's promise — a batch never changes a sequence's tokens — rests on this.
#include <gtest/gtest.h>

#include <cctype>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/engine/engine.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

constexpr int64_t kContext = 64;

std::vector<int32_t> ids(int n, int seed) {
  std::vector<int32_t> out;
  for (int t = 0; t < n; ++t) out.push_back((seed * 131 + t * 37 + 11) % 800);  // every vocab
  return out;
}

std::vector<float> row(const std::vector<float>& logits, int64_t r, int64_t vocab) {
  return {logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab};
}

class BatchInvariance : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchInvariance, LogitsAreTheSameBitsAloneOrInABatch) {
  LoadedModel m = load_model(test::data_dir() / GetParam());
  const int64_t vocab = m.config.vocab_size;
  const auto a_prompt = ids(9, 1);
  const auto a_next = ids(4, 2);  // fed one by one alone; 1, 1, then 2 at once in the batch
  const auto b_prompt = ids(14, 3);
  const auto c_prompt = ids(5, 4);

  // Alone: the prompt, then one token per pass.
  std::vector<std::vector<float>> want;
  {
    Engine e(*m.weights, EngineOptions{1, kContext}, default_thread_pool());
    SeqTokens s{0, a_prompt};
    want.push_back(e.forward({&s, 1}, LogitsFor::last));
    for (const int32_t& t : a_next) {
      s = SeqTokens{0, {&t, 1}};
      want.push_back(e.forward({&s, 1}, LogitsFor::last));
    }
  }

  Engine e(*m.weights, EngineOptions{3, kContext}, default_thread_pool());
  std::vector<std::vector<float>> got;
  const int32_t b1 = 7;
  const int32_t c1 = 8;
  // Pass 1: two prompts.
  {
    const SeqTokens batch[] = {{1, b_prompt}, {0, a_prompt}};
    got.push_back(row(e.forward(batch, LogitsFor::last), 1, vocab));
  }
  // Pass 2: A decodes beside B's decode token and C's whole prompt.
  {
    const SeqTokens batch[] = {{0, {&a_next[0], 1}}, {1, {&b1, 1}}, {2, c_prompt}};
    got.push_back(row(e.forward(batch, LogitsFor::last), 0, vocab));
  }
  // Pass 3: A decodes beside C's decode token.
  {
    const SeqTokens batch[] = {{2, {&c1, 1}}, {0, {&a_next[1], 1}}};
    got.push_back(row(e.forward(batch, LogitsFor::last), 1, vocab));
  }
  // Pass 4: A's last two tokens scored at once (a draft's verification), beside B and C.
  {
    const std::vector<int32_t> b_more = ids(3, 5);
    const SeqTokens batch[] = {{1, b_more}, {0, {a_next.data() + 2, 2}}, {2, {&c1, 1}}};
    const auto& all = e.forward(batch, LogitsFor::all);
    got.push_back(row(all, 3, vocab));
    got.push_back(row(all, 4, vocab));
  }

  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    ASSERT_EQ(got[i].size(), static_cast<std::size_t>(vocab));
    EXPECT_EQ(std::memcmp(got[i].data(), want[i].data(), got[i].size() * sizeof(float)), 0)
        << "logits after A's token " << i << " differ in a batch";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, BatchInvariance,
                         ::testing::Values("gptj/tiny-f32", "gptj/tiny-f16-bin-sharded",
                                           "llama/llama3-gqa-f32", "llama/mistral-f16",
                                           "llama/qwen2-bias-tied-bf16-sharded"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

}  // namespace
}  // namespace ferry::engine
