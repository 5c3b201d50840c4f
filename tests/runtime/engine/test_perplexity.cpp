// Perplexity and the comparison with a reference: the windows score every token once with the
// context they promise; the scores equal an independent token-by-token computation; a model
// against itself has no divergence, a pack against its source a small one; bad requests are
// refused with the fix.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "runtime/core/error.hpp"
#include "runtime/engine/convert.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/make_model.hpp"
#include "runtime/engine/perplexity.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

namespace fs = std::filesystem;

TEST(PerplexityWindows, ScoreEveryTokenOnceWithTheContextPromised) {
  for (int64_t n = 2; n <= 40; ++n) {
    for (int64_t ctx = 2; ctx <= 12; ++ctx) {
      for (int64_t stride = 1; stride < ctx; ++stride) {
        SCOPED_TRACE(testing::Message() << "n " << n << " ctx " << ctx << " stride " << stride);
        const auto ws = perplexity_windows(n, ctx, stride);
        std::vector<int> scored(static_cast<std::size_t>(n), 0);
        for (const auto& w : ws) {
          ASSERT_LE(w.end - w.begin, ctx);
          ASSERT_GE(w.first_target, w.begin + 1);
          for (int64_t p = w.first_target; p < w.end; ++p) {
            ++scored[static_cast<std::size_t>(p)];
            // At least ctx − stride tokens before every target, or all of them.
            EXPECT_GE(p - w.begin, std::min(p, ctx - stride));
          }
        }
        EXPECT_EQ(scored[0], 0);
        for (int64_t p = 1; p < n; ++p) EXPECT_EQ(scored[static_cast<std::size_t>(p)], 1) << p;
        EXPECT_EQ(ws.back().end, n);
      }
    }
  }
  // Hugging Face's guide, by hand: 10 tokens, windows of 4 advancing by 2.
  const auto ws = perplexity_windows(10, 4, 2);
  ASSERT_EQ(ws.size(), 4u);
  const int64_t want[4][3] = {{0, 4, 1}, {2, 6, 4}, {4, 8, 6}, {6, 10, 8}};
  for (std::size_t k = 0; k < 4; ++k) {
    EXPECT_EQ(ws[k].begin, want[k][0]);
    EXPECT_EQ(ws[k].end, want[k][1]);
    EXPECT_EQ(ws[k].first_target, want[k][2]);
  }
}

TEST(PerplexityWindows, RefuseWhatCannotBeScored) {
  EXPECT_THAT(test::error_text<InvalidArgument>([&] { perplexity_windows(1, 8, 4); }),
              testing::HasSubstr("at least 2"));
  EXPECT_THAT(test::error_text<InvalidArgument>([&] { perplexity_windows(10, 8, 0); }),
              testing::HasSubstr("lower --stride"));
  EXPECT_THAT(test::error_text<InvalidArgument>([&] { perplexity_windows(10, 8, 8); }),
              testing::HasSubstr("lower --stride"));
  EXPECT_THAT(test::error_text<InvalidArgument>([&] { perplexity_windows(10, 1, 1); }),
              testing::HasSubstr("raise --ctx"));
}

struct Model {
  LoadedModel loaded;
  std::unique_ptr<Engine> engine;
};

Model open(const fs::path& dir, int64_t context) {
  LoadOptions o;
  o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), offload::Tier::host);
  Model m{load_model(dir, o), nullptr};
  EngineOptions eo;
  eo.context = context;
  m.engine = std::make_unique<Engine>(*m.loaded.weights, eo, default_thread_pool());
  return m;
}

std::vector<int32_t> random_ids(std::size_t n, int32_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> id(0, vocab - 1);
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = id(rng);
  return ids;
}

// −log softmax(row)[target] in long double, written out apart from the library's.
long double nll_of(const float* row, int64_t vocab, int32_t target) {
  long double mx = row[0];
  for (int64_t i = 1; i < vocab; ++i) mx = std::max<long double>(mx, row[i]);
  long double z = 0;
  for (int64_t i = 0; i < vocab; ++i) z += std::exp(static_cast<long double>(row[i]) - mx);
  return mx + std::log(z) - row[target];
}

std::vector<long double> log_softmax(const float* row, int64_t vocab) {
  const long double lse = nll_of(row, vocab, 0) + row[0];  // log Σ exp(row)
  std::vector<long double> out(static_cast<std::size_t>(vocab));
  for (int64_t t = 0; t < vocab; ++t) out[static_cast<std::size_t>(t)] = row[t] - lse;
  return out;
}

// The windowed batch passes against feeding each window one token at a time through the KV cache
// of another engine (the decode path), scoring each target from the logits before it.
TEST(Perplexity, EqualsTokenByTokenScoring) {
  const fs::path dir = test::data_dir() / "gptj/tiny-f32";
  Model batch = open(dir, 12);
  Model step = open(dir, 12);
  const int64_t vocab = batch.loaded.config.vocab_size;
  const auto ids = random_ids(37, static_cast<int32_t>(vocab), 3);
  PerplexityOptions po;
  po.context = 12;
  po.stride = 5;
  int64_t callbacks = 0;
  po.on_window = [&](int64_t done, int64_t total, int64_t tokens) {
    EXPECT_EQ(done, ++callbacks);
    EXPECT_GE(total, done);
    EXPECT_GT(tokens, 0);
  };
  const PerplexityReport r = evaluate_perplexity(*batch.engine, ids, po);

  long double nll = 0;
  int64_t tokens = 0;
  int64_t correct = 0;
  for (const auto& w : perplexity_windows(37, 12, 5)) {
    step.engine->reset(0);
    for (int64_t p = w.begin; p + 1 < w.end; ++p) {
      const SeqTokens s{0, std::span<const int32_t>(&ids[static_cast<std::size_t>(p)], 1)};
      const auto& row = step.engine->forward({&s, 1}, LogitsFor::last);
      if (p + 1 < w.first_target) continue;
      const int32_t target = ids[static_cast<std::size_t>(p + 1)];
      nll += nll_of(row.data(), vocab, target);
      correct += std::max_element(row.begin(), row.end()) - row.begin() == target;
      ++tokens;
    }
  }
  EXPECT_EQ(r.model.tokens, 36);
  EXPECT_EQ(tokens, 36);
  EXPECT_EQ(r.windows, 6);
  EXPECT_EQ(r.model.top1_correct, correct);
  EXPECT_NEAR(r.model.mean_nll(), static_cast<double>(nll / tokens), 1e-5);
  EXPECT_NEAR(r.model.perplexity(), std::exp(static_cast<double>(nll / tokens)), 1e-2);
  EXPECT_EQ(callbacks, 6);
  // A random model is about as unsure as the uniform distribution over its 1000 tokens.
  EXPECT_GT(r.model.perplexity(), 500);
  EXPECT_LT(r.model.perplexity(), 2000);
  EXPECT_GT(r.model.perplexity_stderr(), 0);
  EXPECT_FALSE(r.vs_reference.has_value());
}

TEST(Perplexity, AgainstItselfThereIsNoDivergence) {
  const fs::path dir = test::data_dir() / "gptj/sharded-f32";
  Model a = open(dir, 16);
  Model b = open(dir, 16);
  const auto ids = random_ids(40, static_cast<int32_t>(a.loaded.config.vocab_size), 5);
  PerplexityOptions po;
  po.context = 16;
  const PerplexityReport r = evaluate_perplexity(*a.engine, ids, po, b.engine.get());
  ASSERT_TRUE(r.vs_reference.has_value());
  EXPECT_EQ(r.stride, 8);
  EXPECT_EQ(r.vs_reference->kl_sum, 0.0);
  EXPECT_EQ(r.vs_reference->top1_agree, r.model.tokens);
  EXPECT_EQ(r.vs_reference->reference.nll_sum, r.model.nll_sum);
}

// An int8 and an int4 pack of a fixture against the f32 weights they came from: the divergence is
// small, larger for int4, and equals KL computed here from the two models' logits.
TEST(Perplexity, PacksDivergeALittleFromTheirSource) {
  const fs::path src = test::data_dir() / "gptj/tiny-f32";
  const auto ids = random_ids(20, 1000, 9);
  double kl_int8 = 0;
  for (const std::string quant : {"int8", "int4"}) {
    SCOPED_TRACE(quant);
    test::TempDir pack;
    ConvertOptions co;
    co.format = model::WeightFormat::parse(quant, 64);
    convert_model(src, pack.path(), co);
    Model ref = open(src, 20);
    Model m = open(pack.path(), 20);
    PerplexityOptions po;
    po.context = 20;  // one window: every position scored from one pass
    const PerplexityReport r = evaluate_perplexity(*m.engine, ids, po, ref.engine.get());
    ASSERT_TRUE(r.vs_reference.has_value());
    const auto& vs = *r.vs_reference;
    EXPECT_GT(vs.kl_sum, 0);
    EXPECT_LT(vs.mean_kl(r.model.tokens), quant == "int8" ? 1e-4 : 2e-3);
    EXPECT_NEAR(r.model.perplexity() / vs.reference.perplexity(), 1.0,
                quant == "int8" ? 2e-3 : 2e-2);

    // KL by hand, in long double: Σ p (log p − log q) over the 19 scored positions.
    ref.engine->reset(0);
    m.engine->reset(0);
    const SeqTokens s{0, ids};
    const std::vector<float> p = ref.engine->forward({&s, 1}, LogitsFor::all);
    const std::vector<float> q = m.engine->forward({&s, 1}, LogitsFor::all);
    long double kl = 0;
    long double kl_max = 0;
    for (int64_t row = 0; row + 1 < 20; ++row) {
      const auto lp = log_softmax(p.data() + row * 1000, 1000);
      const auto lq = log_softmax(q.data() + row * 1000, 1000);
      long double row_kl = 0;
      for (std::size_t t = 0; t < 1000; ++t) row_kl += std::exp(lp[t]) * (lp[t] - lq[t]);
      kl += row_kl;
      kl_max = std::max(kl_max, row_kl);
    }
    EXPECT_NEAR(vs.kl_sum, static_cast<double>(kl), 1e-6 + 1e-4 * static_cast<double>(kl));
    EXPECT_NEAR(vs.kl_max, static_cast<double>(kl_max), 1e-6 + 1e-4 * static_cast<double>(kl_max));
    if (quant == "int8") kl_int8 = vs.kl_sum;
    if (quant == "int4") {
      EXPECT_GT(vs.kl_sum, kl_int8);
    }
  }
}

TEST(Perplexity, RefusesWhatItCannotCompare) {
  const fs::path tiny = test::data_dir() / "gptj/tiny-f32";
  Model m = open(tiny, 8);
  const auto ids = random_ids(20, 1000, 1);
  PerplexityOptions po;
  po.context = 16;  // longer than the engine's 8
  EXPECT_THAT(test::error_text<InvalidArgument>([&] { evaluate_perplexity(*m.engine, ids, po); }),
              testing::HasSubstr("lower --ctx"));

  test::TempDir other;
  MakeModelOptions mo;
  mo.config = model::preset_config("tiny");
  mo.config.vocab_size = 2048;
  mo.dtype = DType::f32;
  make_model(other.path(), mo);
  Model wide = open(other.path(), 8);
  po.context = 8;
  EXPECT_THAT(test::error_text<InvalidArgument>(
                  [&] { evaluate_perplexity(*m.engine, ids, po, wide.engine.get()); }),
              testing::HasSubstr("vocabulary of 2048"));
  // A token id outside the vocabulary is the engine's error, passed through.
  std::vector<int32_t> bad = ids;
  bad[3] = 1000;
  EXPECT_THROW(evaluate_perplexity(*m.engine, bad, po), Error);
}

}  // namespace
}  // namespace ferry::engine
