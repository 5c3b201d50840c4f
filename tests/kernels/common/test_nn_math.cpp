// The per-element steps the CUDA kernels are built from (kernels/common/nn_math.hpp and
// convert.hpp), composed on the CPU in the reference's summation order, against the CPU
// reference kernels bit for bit: so the GPU differs from the CPU only in the order of its sums.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/common/convert.hpp"
#include "kernels/common/math.hpp"
#include "kernels/common/nn_math.hpp"
#include "kernels/cpu/ops.hpp"
#include "runtime/core/half.hpp"
#include "tests/kernels/cpu/kernel_test_util.hpp"

namespace ferry::kernels {
namespace {

using cpu::test::random_floats;

void expect_bits_equal(const std::vector<float>& got, const std::vector<float>& want,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(f32_bits(got[i]), f32_bits(want[i]))
        << what << " element " << i << ": " << got[i] << " vs " << want[i];
}

TEST(NnMathTest, LayerNormStepsEqualReference) {
  std::mt19937 rng(7);
  for (int64_t n : {1, 2, 7, 64, 257, 4096}) {
    const int64_t m = 3;
    const auto x = random_floats(rng, static_cast<std::size_t>(m * n), -4.0f, 4.0f);
    const auto gamma = random_floats(rng, static_cast<std::size_t>(n), 0.5f, 1.5f);
    const auto beta = random_floats(rng, static_cast<std::size_t>(n), -0.5f, 0.5f);
    std::vector<float> want(x.size());
    cpu::ref::layer_norm(x.data(), m, n, gamma.data(), beta.data(), 1e-5f, want.data());
    std::vector<float> got(x.size());
    for (int64_t i = 0; i < m; ++i) {
      const float* row = x.data() + i * n;
      float sum = 0.0f;
      for (int64_t j = 0; j < n; ++j) sum += row[j];
      const float mean = layer_norm_mean(sum, n);
      float sq = 0.0f;
      for (int64_t j = 0; j < n; ++j) sq += (row[j] - mean) * (row[j] - mean);
      const float rstd = layer_norm_rstd(sq, n, 1e-5f);
      for (int64_t j = 0; j < n; ++j)
        got[static_cast<std::size_t>(i * n + j)] =
            layer_norm_apply(row[j], mean, rstd, gamma[static_cast<std::size_t>(j)],
                             beta[static_cast<std::size_t>(j)]);
    }
    expect_bits_equal(got, want, "layer norm n=" + std::to_string(n));
  }
}

TEST(NnMathTest, AttentionStepsEqualReference) {
  std::mt19937 rng(11);
  struct Shape {
    int64_t n_new, n_past, n_head, head_dim;
  };
  for (const Shape s :
       {Shape{1, 0, 1, 1}, Shape{5, 0, 3, 8}, Shape{1, 37, 2, 33}, Shape{3, 6, 4, 16}}) {
    const int64_t keys = s.n_past + s.n_new;
    const int64_t stride = s.n_head * s.head_dim;
    const auto q = random_floats(rng, static_cast<std::size_t>(s.n_new * stride), -2.0f, 2.0f);
    const auto k = random_floats(rng, static_cast<std::size_t>(s.n_head * keys * s.head_dim));
    const auto v = random_floats(rng, k.size());
    std::vector<float> want(q.size());
    cpu::AttentionArgs a;
    a.q = q.data();
    a.q_stride = stride;
    a.k = k.data();
    a.v = v.data();
    a.kv_head_stride = keys * s.head_dim;
    a.out = want.data();
    a.out_stride = stride;
    a.n_new = s.n_new;
    a.n_past = s.n_past;
    a.n_head = s.n_head;
    a.head_dim = s.head_dim;
    cpu::ref::attention(a);

    std::vector<float> got(q.size());
    const float divisor = attention_scale_divisor(s.head_dim);
    for (int64_t t = 0; t < s.n_new; ++t) {
      for (int64_t h = 0; h < s.n_head; ++h) {
        const int64_t n_keys = s.n_past + t + 1;
        std::vector<float> scores(static_cast<std::size_t>(n_keys));
        float max_score = -INFINITY;
        for (int64_t j = 0; j < n_keys; ++j) {
          float dot = 0.0f;
          for (int64_t d = 0; d < s.head_dim; ++d)
            dot += q[static_cast<std::size_t>(t * stride + h * s.head_dim + d)] *
                   k[static_cast<std::size_t>(h * a.kv_head_stride + j * s.head_dim + d)];
          scores[static_cast<std::size_t>(j)] = attention_score(dot, divisor);
          max_score = fmaxf(max_score, scores[static_cast<std::size_t>(j)]);
        }
        float denom = 0.0f;
        for (float& sc : scores) {
          sc = softmax_exp(sc, max_score);
          denom += sc;
        }
        for (int64_t d = 0; d < s.head_dim; ++d) {
          float acc = 0.0f;
          for (int64_t j = 0; j < n_keys; ++j)
            acc += softmax_prob(scores[static_cast<std::size_t>(j)], denom) *
                   v[static_cast<std::size_t>(h * a.kv_head_stride + j * s.head_dim + d)];
          got[static_cast<std::size_t>(t * stride + h * s.head_dim + d)] = acc;
        }
      }
    }
    expect_bits_equal(got, want, "attention head_dim=" + std::to_string(s.head_dim));
  }
}

TEST(NnMathTest, BiasAndResidualEqualReference) {
  std::mt19937 rng(3);
  const int64_t m = 3, k = 19, n = 23;
  const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
  const auto w = random_floats(rng, static_cast<std::size_t>(n * k));
  const auto bias = random_floats(rng, static_cast<std::size_t>(n));
  std::vector<float> with_bias(static_cast<std::size_t>(m * n));
  std::vector<float> no_bias(with_bias.size());
  cpu::ref::linear(x.data(), m, k, w.data(), DType::f32, n, bias.data(), with_bias.data());
  cpu::ref::linear(x.data(), m, k, w.data(), DType::f32, n, nullptr, no_bias.data());
  for (std::size_t i = 0; i < no_bias.size(); ++i)
    no_bias[i] = bias_add(no_bias[i], bias[i % static_cast<std::size_t>(n)]);
  expect_bits_equal(no_bias, with_bias, "bias");

  // The engine's two adds (mlp += attn; x += mlp) against gptj_residual.
  const auto stream = random_floats(rng, 101, -8.0f, 8.0f);
  const auto attn = random_floats(rng, 101);
  auto mlp = random_floats(rng, 101);
  std::vector<float> got(stream.size());
  for (std::size_t i = 0; i < got.size(); ++i) got[i] = gptj_residual(stream[i], attn[i], mlp[i]);
  auto want = stream;
  cpu::ref::add(mlp.data(), attn.data(), 101);
  cpu::ref::add(want.data(), mlp.data(), 101);
  expect_bits_equal(got, want, "residual");
}

TEST(NnMathTest, LoadAsF32EqualsConvertKernelForEveryHalfPattern) {
  std::vector<uint16_t> all(65536);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint16_t>(i);
  for (DType t : {DType::f16, DType::bf16}) {
    std::vector<float> want(all.size());
    cpu::ref::convert_to_f32(all.data(), t, static_cast<int64_t>(all.size()), want.data());
    for (std::size_t i = 0; i < all.size(); ++i) {
      const float got = load_as_f32(all.data(), t, static_cast<int64_t>(i));
      if (std::isnan(want[i])) {
        ASSERT_TRUE(std::isnan(got)) << dtype_name(t) << " " << i;
      } else {
        ASSERT_EQ(f32_bits(got), f32_bits(want[i])) << dtype_name(t) << " " << i;
      }
    }
  }
  std::mt19937 rng(5);
  const auto f = random_floats(rng, 50, -1e4f, 1e4f);
  for (std::size_t i = 0; i < f.size(); ++i)
    EXPECT_EQ(load_as_f32(f.data(), DType::f32, static_cast<int64_t>(i)), f[i]);
}

TEST(NnMathTest, StoreFromF32RoundsLikeHalfConversions) {
  std::mt19937 rng(9);
  auto values = random_floats(rng, 4000, -70000.0f, 70000.0f);
  const auto small = random_floats(rng, 4000, -1e-4f, 1e-4f);  // f16 subnormals
  values.insert(values.end(), small.begin(), small.end());
  values.push_back(INFINITY);
  values.push_back(-0.0f);
  std::vector<uint16_t> h(values.size());
  std::vector<uint16_t> b(values.size());
  std::vector<float> f(values.size());
  for (std::size_t i = 0; i < values.size(); ++i) {
    const auto j = static_cast<int64_t>(i);
    store_from_f32(h.data(), DType::f16, j, values[i]);
    store_from_f32(b.data(), DType::bf16, j, values[i]);
    store_from_f32(f.data(), DType::f32, j, values[i]);
    ASSERT_EQ(h[i], f32_to_f16(values[i])) << values[i];
    ASSERT_EQ(b[i], f32_to_bf16(values[i])) << values[i];
    ASSERT_EQ(f32_bits(f[i]), f32_bits(values[i]));
  }
  // Round trip through the CPU kernel: what store wrote reads back as the nearest half.
  std::vector<float> back(values.size());
  cpu::ref::convert_to_f32(h.data(), DType::f16, static_cast<int64_t>(h.size()), back.data());
  for (std::size_t i = 0; i < 4000; ++i)
    if (std::fabs(values[i]) < 65504.0f) {
      ASSERT_LE(std::fabs(back[i] - values[i]), std::ldexp(std::fabs(values[i]), -11) + 1e-7f)
          << values[i];
    }
}

TEST(NnMathTest, Bf16ToF16ForEveryPattern) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const auto b = static_cast<uint16_t>(i);
    float wide;
    cpu::ref::convert_to_f32(&b, DType::bf16, 1, &wide);
    const uint16_t got = bf16_to_f16(b);
    if (std::isnan(wide)) {
      ASSERT_TRUE(std::isnan(f16_to_f32(got))) << i;
      continue;
    }
    ASSERT_EQ(got, f32_to_f16(wide)) << i;
    // Within f16's normal range the result is the nearest f16: relative error ≤ 2^-11.
    if (std::fabs(wide) >= 6.1035156e-05f && std::fabs(wide) <= 65504.0f) {
      ASSERT_LE(std::fabs(f16_to_f32(got) - wide), std::ldexp(std::fabs(wide), -11)) << i;
    }
  }
  EXPECT_EQ(bf16_to_f16(f32_to_bf16(1.0f)), 0x3c00);
  EXPECT_EQ(bf16_to_f16(f32_to_bf16(-2.0f)), 0xc000);
  EXPECT_EQ(bf16_to_f16(f32_to_bf16(1e6f)), 0x7c00);  // beyond f16: inf
}

}  // namespace
}  // namespace ferry::kernels
