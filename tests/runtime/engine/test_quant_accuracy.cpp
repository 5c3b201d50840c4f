// How far ferry packs move the logits: the f16, int8 and int4 packs of the Hugging Face fixtures
// (and of a larger random model) against the f32 model, over the fixtures' prompts and over
// ~1500 positions each, and the decode path against the prompt path. Label "accuracy": these are
// measurements over thousands of positions, run by the Release test pass and left out of the
// sanitizer pass (which runs the same kernels in the unit tests).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <span>

#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/make_model.hpp"
#include "runtime/engine/perplexity.hpp"
#include "runtime/engine/sampler.hpp"
#include "tests/runtime/engine/quant_pack_util.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

namespace fs = std::filesystem;
using namespace quant_test;

struct Agreement {
  double max_abs = 0;
  double mean_abs = 0;
  double top1 = 0;  // fraction of positions whose argmax agrees
  std::size_t positions = 0;
  // The same over the positions the reference decides clearly: its top-2 margin is at least
  // kClearMargin (the fixtures' median margin is 0.035; a trained model's is ~1).
  double top1_clear = 1;
  std::size_t clear_positions = 0;
};

constexpr float kClearMargin = 0.05f;

float top2_margin(std::span<const float> r) {
  float a = -INFINITY, b = -INFINITY;
  for (float v : r) {
    if (v > a) {
      b = a;
      a = v;
    } else if (v > b) {
      b = v;
    }
  }
  return a - b;
}

Agreement compare(const std::vector<float>& ref, const std::vector<float>& got, std::size_t vocab) {
  Agreement a;
  a.positions = ref.size() / vocab;
  double sum = 0;
  std::size_t agree = 0;
  std::size_t agree_clear = 0;
  for (std::size_t p = 0; p < a.positions; ++p) {
    const std::span<const float> r(ref.data() + p * vocab, vocab);
    const std::span<const float> g(got.data() + p * vocab, vocab);
    agree += argmax(r) == argmax(g);
    if (top2_margin(r) >= kClearMargin) {
      ++a.clear_positions;
      agree_clear += argmax(r) == argmax(g);
    }
    for (std::size_t v = 0; v < vocab; ++v) {
      const double d = std::fabs(static_cast<double>(r[v]) - g[v]);
      a.max_abs = std::max(a.max_abs, d);
      sum += d;
    }
  }
  a.mean_abs = sum / static_cast<double>(ref.size());
  a.top1 = static_cast<double>(agree) / static_cast<double>(a.positions);
  if (a.clear_positions > 0)
    a.top1_clear = static_cast<double>(agree_clear) / static_cast<double>(a.clear_positions);
  return a;
}

struct Case {
  std::string quant;
  int group;
  bool all;  // embeddings and lm_head quantized too
  double min_top1;
};

// Bounds on the logit error, from the measurements (README/issue 7 report): the fixtures are
// randomly initialised (logit std ~0.16, top-2 margins from 0.0004, median 0.035), so top-1
// agreement measures the margins as much as the quantization; these floors guard against
// regressions, not the 99% / 95% targets a trained model is held to.
double max_mean_error(const std::string& quant) {
  return quant == "int4" ? 0.05 : quant == "int8" ? 0.005 : 0.0005;
}

// On the positions the reference decides clearly, int8 meets the 99% target; int4's error
// (max |Δlogit| ~0.2 here) still flips a few margins above 0.05.
double min_clear_top1(const std::string& quant) {
  return quant == "int4" ? 0.8 : quant == "int8" ? 0.99 : 1.0;
}

// The f16 / int8 / int4 packs of every fixture against the fixture's f32 (or f16) weights run
// by the same engine (itself within 2e-5 of Hugging Face). Printed for the record.
// The f16 / int8 / int4 packs of every fixture against the fixture's f32 (or f16) weights run
// by the same engine (itself within 2e-5 of Hugging Face). Printed for the record.
TEST(QuantPack, FixturesAgreeWithTheSourceWeights) {
  // 41 positions each: one position is 2.4 points, so the int4 floors catch breakage only; the
  // test below measures agreement over 1499 positions.
  const Case cases[] = {{"f16", 64, false, 1.0},   {"int8", 64, false, 0.95},
                        {"int8", 64, true, 0.95},  {"int4", 64, false, 0.5},
                        {"int4", 128, false, 0.5}, {"int4", 64, true, 0.5}};
  for (const std::string fixture : {"tiny-f32", "sharded-f32", "tiny-f16-bin-sharded"}) {
    const fs::path src = test::data_dir() / "gptj" / fixture;
    const auto prompts = fixture_prompts(fixture);
    const auto vocab = static_cast<std::size_t>(model::ModelConfig::from_model_dir(src).vocab_size);
    const auto ref = all_logits(src, prompts);
    for (const Case& c : cases) {
      SCOPED_TRACE(fixture + " " + c.quant + " g" + std::to_string(c.group));
      test::TempDir dir;
      convert(src, dir.path(), c.quant, c.group, c.all);
      const Agreement a = compare(ref, all_logits(dir.path(), prompts), vocab);
      std::printf(
          "[quant] %-21s %-5s g%-3d %-9s positions %3zu  max|Δlogit| %.5f  mean %.6f  "
          "top-1 %.1f%%  (margin ≥ %.2f: %zu positions, %.1f%%)\n",
          fixture.c_str(), c.quant.c_str(), c.group, c.all ? "+emb+head" : "", a.positions,
          a.max_abs, a.mean_abs, 100.0 * a.top1, kClearMargin, a.clear_positions,
          100.0 * a.top1_clear);
      EXPECT_GE(a.top1, c.min_top1);
      EXPECT_GE(a.top1_clear, min_clear_top1(c.quant));
      EXPECT_LT(a.mean_abs, max_mean_error(c.quant));
    }
  }
}

// The same packs over 1499 positions of random ids per fixture (windows of up to 128 tokens), where
// one position is 0.07% rather than 2.4% of the agreement: mean KL(f32 ‖ pack) per position and
// top-1 agreement, through the perplexity evaluator that `ferry perplexity --reference` runs.
// Measured (2026-11-26): int8 97.8–98.2% and KL 2–5e-6; int4 g64 72.5–75.5% and KL 2.9–7.5e-4.
TEST(QuantPack, FixturesOverManyPositions) {
  for (const std::string fixture : {"tiny-f32", "sharded-f32", "tiny-f16-bin-sharded"}) {
    const fs::path src = test::data_dir() / "gptj" / fixture;
    const auto config = model::ModelConfig::from_model_dir(src);
    std::mt19937 rng(1);
    std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(config.vocab_size) - 1);
    std::vector<int32_t> ids(1500);
    for (auto& t : ids) t = id(rng);
    const int64_t ctx = std::min<int64_t>(128, config.n_positions);
    LoadedModel ref_model = load_model(src, placed(src, offload::Tier::host));
    EngineOptions eo;
    eo.context = ctx;
    Engine ref(*ref_model.weights, eo, default_thread_pool());
    for (const std::string quant : {"int8", "int4"}) {
      SCOPED_TRACE(fixture + " " + quant);
      test::TempDir dir;
      convert(src, dir.path(), quant);
      LoadedModel packed = load_model(dir.path(), placed(dir.path(), offload::Tier::host));
      Engine eng(*packed.weights, eo, default_thread_pool());
      PerplexityOptions po;
      po.context = ctx;
      const PerplexityReport r = evaluate_perplexity(eng, ids, po, &ref);
      const double top1 =
          static_cast<double>(r.vs_reference->top1_agree) / static_cast<double>(r.model.tokens);
      const double kl = r.vs_reference->mean_kl(r.model.tokens);
      std::printf(
          "[quant] %-21s %-5s g64  positions %lld  KL %.2e  top-1 %.1f%%  perplexity "
          "÷ f32 %.5f\n",
          fixture.c_str(), quant.c_str(), static_cast<long long>(r.model.tokens), kl, 100.0 * top1,
          r.model.perplexity() / r.vs_reference->reference.perplexity());
      EXPECT_EQ(r.model.tokens, 1499);
      EXPECT_GE(top1, quant == "int8" ? 0.96 : 0.68);
      EXPECT_LT(kl, quant == "int8" ? 2e-5 : 1.5e-3);
    }
  }
}

// KL(p ‖ q) of two logit rows, in nats (softmax in double).
double kl_of(std::span<const float> p_logits, std::span<const float> q_logits) {
  const auto lse = [](std::span<const float> l) {
    double m = -INFINITY;
    for (float v : l) m = std::max(m, static_cast<double>(v));
    double s = 0;
    for (float v : l) s += std::exp(v - m);
    return m + std::log(s);
  };
  const double lp = lse(p_logits);
  const double lq = lse(q_logits);
  double kl = 0;
  for (std::size_t i = 0; i < p_logits.size(); ++i) {
    const double a = p_logits[i] - lp;
    kl += std::exp(a) * (a - (q_logits[i] - lq));
  }
  return std::max(kl, 0.0);
}

// Decoding runs a pack's products one row at a time, where the CPU's kernels also round x, to
// int8 per group for q4 and to int16 per 64 columns for q8 (kernels/cpu/linear_avx2.cpp); prompts
// run them many rows at a time in f32. Over the same positions, token by token through the KV
// cache against the f32 model's prompt pass, the decode path must stay as close to the f32 model
// as the prompt path: x's rounding (~0.3% per group for q4, ~0.002% for q8) is small beside the
// codes' own error (~8.5% and ~0.6%). Measured (2026-11-26): KL within 1-3% of the prompt path's,
// top-1 within a point.
TEST(QuantPack, DecodeIsAsCloseAsThePromptPath) {
  const fs::path src = test::data_dir() / "gptj/tiny-f16-bin-sharded";
  const auto config = model::ModelConfig::from_model_dir(src);
  const auto vocab = static_cast<std::size_t>(config.vocab_size);
  std::mt19937 rng(3);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(config.vocab_size) - 1);
  std::vector<std::vector<int32_t>> prompts(2, std::vector<int32_t>(160));
  for (auto& p : prompts)
    for (auto& t : p) t = id(rng);
  const auto ref = all_logits(src, prompts);
  for (const auto& [quant, group] :
       {std::pair<std::string, int>{"int8", 64}, {"int4", 64}, {"int4", 128}}) {
    SCOPED_TRACE(quant + " g" + std::to_string(group));
    test::TempDir dir;
    convert(src, dir.path(), quant, group);
    const auto prompt_path = all_logits(dir.path(), prompts);
    LoadedModel m = load_model(dir.path(), placed(dir.path(), offload::Tier::host));
    Engine engine(*m.weights, {}, default_thread_pool());
    std::vector<float> decode_path;
    for (const auto& ids : prompts) {
      engine.reset(0);
      for (const int32_t& t : ids) {
        SeqTokens s{0, {&t, 1}};
        const auto& l = engine.forward({&s, 1}, LogitsFor::last);
        decode_path.insert(decode_path.end(), l.begin(), l.end());
      }
    }
    ASSERT_EQ(decode_path.size(), ref.size());
    double kl_prompt = 0, kl_decode = 0;
    std::size_t top1_prompt = 0, top1_decode = 0;
    const std::size_t positions = ref.size() / vocab;
    for (std::size_t p = 0; p < positions; ++p) {
      const std::span<const float> r(ref.data() + p * vocab, vocab);
      const std::span<const float> a(prompt_path.data() + p * vocab, vocab);
      const std::span<const float> b(decode_path.data() + p * vocab, vocab);
      kl_prompt += kl_of(r, a);
      kl_decode += kl_of(r, b);
      top1_prompt += argmax(r) == argmax(a);
      top1_decode += argmax(r) == argmax(b);
    }
    std::printf(
        "[quant] %-5s g%-3d %zu positions: prompt path KL %.3e top-1 %.1f%%; decode path "
        "KL %.3e top-1 %.1f%%\n",
        quant.c_str(), group, positions, kl_prompt / positions, 100.0 * top1_prompt / positions,
        kl_decode / positions, 100.0 * top1_decode / positions);
    EXPECT_LT(kl_decode, 1.15 * kl_prompt);
    EXPECT_GE(top1_decode + positions / 25, top1_prompt);  // within 4 points
  }
}

// A larger random model (make-model's law, 4 layers of 256) over 320 positions.
TEST(QuantPack, LargerRandomModelOverManyPositions) {
  test::TempDir src;
  MakeModelOptions mo;
  mo.config = model::preset_config("tiny");
  mo.config.n_layer = 4;
  mo.config.n_embd = 256;
  mo.config.n_head = 4;
  mo.config.rotary_dim = 32;
  mo.config.n_inner = 1024;
  mo.config.vocab_size = 2048;
  mo.config.n_positions = 512;
  mo.dtype = DType::f32;
  mo.seed = 4;
  make_model(src.path(), mo);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> id(0, 2047);
  std::vector<std::vector<int32_t>> prompts(2, std::vector<int32_t>(160));
  for (auto& p : prompts)
    for (auto& t : p) t = id(rng);
  const auto ref = all_logits(src.path(), prompts);
  for (const Case& c : {Case{"f16", 64, false, 0.0}, Case{"int8", 64, false, 0.0},
                        Case{"int4", 64, false, 0.0}, Case{"int4", 128, false, 0.0}}) {
    test::TempDir dir;
    convert(src.path(), dir.path(), c.quant, c.group);
    const Agreement a = compare(ref, all_logits(dir.path(), prompts), 2048);
    std::printf(
        "[quant] random-4x256-v2048     %-5s g%-3d positions %3zu  max|Δlogit| %.5f  "
        "mean %.6f  top-1 %.1f%%  (margin ≥ %.2f: %zu positions, %.1f%%)\n",
        c.quant.c_str(), c.group, a.positions, a.max_abs, a.mean_abs, 100.0 * a.top1, kClearMargin,
        a.clear_positions, 100.0 * a.top1_clear);
    EXPECT_LT(a.mean_abs, max_mean_error(c.quant));
    EXPECT_GE(a.top1, c.quant == "int4" ? 0.7 : 0.97);
    EXPECT_GE(a.top1_clear, min_clear_top1(c.quant));
  }
}

}  // namespace
}  // namespace ferry::engine
