// layer_norm, rms_norm, gelu_new, silu_mul, add, rotary_interleaved, rotary_half, convert_to_f32
// and simd_level: the fast and portable kernels against the reference, and all of them against
// independent double-precision computations.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"
#include "tests/kernels/cpu/kernel_test_util.hpp"

#if defined(__x86_64__)
#include <cpuid.h>
#endif

namespace ferry::kernels::cpu {
namespace {

using test::kUnitRoundoff;
using test::random_floats;

uint32_t bits_of(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// ---- layer_norm -------------------------------------------------------------------------------

using LayerNormFn = void (*)(const float*, int64_t, int64_t, const float*, const float*, float,
                             float*);

struct LayerNormImpl {
  const char* name;
  LayerNormFn fn;
};

const LayerNormImpl kLayerNorms[] = {
    {"ref", ref::layer_norm}, {"fast", layer_norm}, {"scalar", scalar::layer_norm}};

// Double-precision layer norm of one row.
std::vector<double> layer_norm_double(const float* x, int64_t n, const float* gamma,
                                      const float* beta, double eps) {
  double mean = 0.0;
  for (int64_t j = 0; j < n; ++j) mean += x[j];
  mean /= static_cast<double>(n);
  double var = 0.0;
  for (int64_t j = 0; j < n; ++j) var += (x[j] - mean) * (x[j] - mean);
  var /= static_cast<double>(n);
  std::vector<double> y(static_cast<std::size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    y[static_cast<std::size_t>(j)] = (x[j] - mean) / std::sqrt(var + eps) * gamma[j] + beta[j];
  }
  return y;
}

// Tolerance: an f32 sum of n inputs of size ≤ 1 differs from exact by ~sqrt(n)·2^-24 typically
// (n·2^-24 at worst), which moves the normalised output by a few 1e-7 at n ≤ 4096; gamma ≤ 2
// doubles that. 1e-5 + 1e-5·|y| leaves a wide margin, yet catches every real mistake: the
// unbiased variance (n - 1 divisor) alone changes the output by ≥ 1.2e-4 relative at n = 4096, and
// a missing eps by 1.5e-5·|y| for unit-variance rows.
TEST(LayerNormTest, MatchesDoubleAndReference) {
  std::mt19937 rng(17);
  const float eps = 1e-5f;
  for (int64_t n : {1, 7, 8, 9, 63, 64, 65, 1000, 4096}) {
    const int64_t m = 3;
    SCOPED_TRACE("n=" + std::to_string(n));
    const auto x = random_floats(rng, static_cast<std::size_t>(m * n), -1.0f, 1.5f);
    const auto gamma = random_floats(rng, static_cast<std::size_t>(n), 0.5f, 2.0f);
    const auto beta = random_floats(rng, static_cast<std::size_t>(n));
    std::vector<float> y_ref(x.size());
    ref::layer_norm(x.data(), m, n, gamma.data(), beta.data(), eps, y_ref.data());
    for (const LayerNormImpl& impl : kLayerNorms) {
      std::vector<float> y(x.size(), NAN);
      impl.fn(x.data(), m, n, gamma.data(), beta.data(), eps, y.data());
      for (int64_t i = 0; i < m; ++i) {
        const auto want = layer_norm_double(x.data() + i * n, n, gamma.data(), beta.data(), eps);
        for (int64_t j = 0; j < n; ++j) {
          const auto at = static_cast<std::size_t>(i * n + j);
          const double w = want[static_cast<std::size_t>(j)];
          ASSERT_NEAR(y[at], w, 1e-5 + 1e-5 * std::fabs(w)) << impl.name << " row " << i;
          ASSERT_NEAR(y[at], y_ref[at], 1e-5 + 1e-5 * std::fabs(y_ref[at])) << impl.name;
        }
      }
    }
  }
}

// With gamma = 1 and beta = 0 every row comes out with mean 0 and variance 1 (eps tiny).
TEST(LayerNormTest, NormalisesToZeroMeanUnitVariance) {
  std::mt19937 rng(19);
  const int64_t n = 1024;
  const auto x = random_floats(rng, static_cast<std::size_t>(2 * n), -3.0f, 5.0f);
  const std::vector<float> gamma(static_cast<std::size_t>(n), 1.0f);
  const std::vector<float> beta(static_cast<std::size_t>(n), 0.0f);
  for (const LayerNormImpl& impl : kLayerNorms) {
    std::vector<float> y(x.size());
    impl.fn(x.data(), 2, n, gamma.data(), beta.data(), 1e-12f, y.data());
    for (int64_t i = 0; i < 2; ++i) {
      double mean = 0.0;
      for (int64_t j = 0; j < n; ++j) mean += y[static_cast<std::size_t>(i * n + j)];
      mean /= static_cast<double>(n);
      double var = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        const double d = y[static_cast<std::size_t>(i * n + j)] - mean;
        var += d * d;
      }
      var /= static_cast<double>(n);
      EXPECT_NEAR(mean, 0.0, 1e-6) << impl.name;
      EXPECT_NEAR(var, 1.0, 1e-5) << impl.name;
    }
  }
}

// Two passes (mean, then squared deviations) survive a large common offset, where the one-pass
// E[x²] - E[x]² in f32 loses the variance entirely (var ≈ 1/3 against E[x²] ≈ 1e4). The f32 mean
// itself is off by up to ~1e-4 here, hence the looser bound.
TEST(LayerNormTest, LargeOffsetNeedsTwoPasses) {
  std::mt19937 rng(23);
  const int64_t n = 4096;
  const auto x = random_floats(rng, static_cast<std::size_t>(n), 99.0f, 101.0f);
  const std::vector<float> gamma(static_cast<std::size_t>(n), 1.0f);
  const std::vector<float> beta(static_cast<std::size_t>(n), 0.0f);
  const auto want = layer_norm_double(x.data(), n, gamma.data(), beta.data(), 1e-5);
  for (const LayerNormImpl& impl : kLayerNorms) {
    std::vector<float> y(x.size());
    impl.fn(x.data(), 1, n, gamma.data(), beta.data(), 1e-5f, y.data());
    for (std::size_t j = 0; j < y.size(); ++j) ASSERT_NEAR(y[j], want[j], 2e-3) << impl.name;
  }
}

// ---- rms_norm ---------------------------------------------------------------------------------

// Double-precision RMSNorm of one row: gamma · x / sqrt(mean(x²) + eps).
std::vector<double> rms_norm_double(const float* x, int64_t n, const float* gamma, double eps) {
  double sq = 0.0;
  for (int64_t j = 0; j < n; ++j) sq += static_cast<double>(x[j]) * x[j];
  const double rstd = 1.0 / std::sqrt(sq / static_cast<double>(n) + eps);
  std::vector<double> y(static_cast<std::size_t>(n));
  for (int64_t j = 0; j < n; ++j) y[static_cast<std::size_t>(j)] = gamma[j] * (x[j] * rstd);
  return y;
}

// The f32 sum of n positive squares is within (n - 1)·u of exact (relative), so rstd is within
// n·u/2 + 3u and every output (two more products) within n·u/2 + 6u: the tolerance is twice that,
// relative, which at n = 4096 is 2.5e-4 at worst (typically ~sqrt(n)·u). It still catches the
// mistakes that matter: subtracting the mean (layer norm) moves outputs by ~|mean|·rstd, dividing
// by n - 1 by 1/(2n) relative (5e-4 at n = 1000 against a tolerance of 6e-5), a missing eps by
// eps/(2·mean(x²)) (~1e-2 with eps 1e-2 below).
TEST(RmsNormTest, MatchesDoubleAndReference) {
  std::mt19937 rng(41);
  for (float eps : {1e-6f, 1e-2f}) {
    for (int64_t n : {1, 7, 8, 9, 64, 65, 128, 1000, 4096}) {
      const int64_t m = 3;
      SCOPED_TRACE("n=" + std::to_string(n) + " eps=" + std::to_string(eps));
      const auto x = random_floats(rng, static_cast<std::size_t>(m * n), -1.0f, 1.5f);
      const auto gamma = random_floats(rng, static_cast<std::size_t>(n), 0.5f, 2.0f);
      std::vector<float> y_ref(x.size());
      ref::rms_norm(x.data(), m, n, gamma.data(), eps, y_ref.data());
      std::vector<float> y_fast(x.size(), NAN);
      rms_norm(x.data(), m, n, gamma.data(), eps, y_fast.data());
      // In place (y = x) gives the same bits.
      auto y_inplace = x;
      rms_norm(y_inplace.data(), m, n, gamma.data(), eps, y_inplace.data());
      const double rtol = (static_cast<double>(n) + 12.0) * kUnitRoundoff;
      for (int64_t i = 0; i < m; ++i) {
        const auto want = rms_norm_double(x.data() + i * n, n, gamma.data(), eps);
        for (int64_t j = 0; j < n; ++j) {
          const auto at = static_cast<std::size_t>(i * n + j);
          const double w = want[static_cast<std::size_t>(j)];
          ASSERT_NEAR(y_ref[at], w, rtol * std::fabs(w) + 1e-30) << "ref row " << i << " col " << j;
          ASSERT_EQ(bits_of(y_fast[at]), bits_of(y_ref[at])) << "fast row " << i << " col " << j;
          ASSERT_EQ(bits_of(y_inplace[at]), bits_of(y_ref[at])) << "in place " << i << " " << j;
        }
      }
    }
  }
}

// Hand-computed: x = (3, 4), gamma = (1, 2), eps 0: mean(x²) = 12.5, rstd = 1/sqrt(12.5).
TEST(RmsNormTest, HandComputed) {
  const std::vector<float> x = {3.0f, 4.0f};
  const std::vector<float> gamma = {1.0f, 2.0f};
  std::vector<float> y(2);
  rms_norm(x.data(), 1, 2, gamma.data(), 0.0f, y.data());
  EXPECT_NEAR(y[0], 3.0 / std::sqrt(12.5), 1e-7);
  EXPECT_NEAR(y[1], 8.0 / std::sqrt(12.5), 1e-6);
}

// ---- gelu_new ---------------------------------------------------------------------------------

double gelu_new_double(double x) {
  const double kPi = 3.14159265358979323846;
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / kPi) * (x + 0.044715 * x * x * x)));
}

// The float formula rounds each of its ~8 operations once; tanh's derivative is ≤ 1 and its
// argument is ~|x|, so the error is a few ulps of max(|x|, 1): 1e-6·max(1, |x|) (~8 ulps). Where
// 1 + tanh cancels (x ≲ -4) the result is tiny and the bound is absolute, as in torch.
TEST(GeluNewTest, MatchesDoubleFormula) {
  std::vector<float> xs;
  for (int i = -2000; i <= 2000; ++i) xs.push_back(static_cast<float>(i) * 0.005f);
  for (float v : {-30.0f, -12.5f, 0.0f, 1e-30f, -1e-30f, 1e-6f, 12.5f, 30.0f, 1e4f})
    xs.push_back(v);
  std::vector<float> fast = xs;
  std::vector<float> reference = xs;
  gelu_new(fast.data(), static_cast<int64_t>(fast.size()));
  ref::gelu_new(reference.data(), static_cast<int64_t>(reference.size()));
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double want = gelu_new_double(xs[i]);
    EXPECT_NEAR(fast[i], want, 1e-6 * std::max(1.0, std::fabs(static_cast<double>(xs[i]))))
        << "x=" << xs[i];
    EXPECT_EQ(bits_of(fast[i]), bits_of(reference[i])) << "x=" << xs[i];
  }
  // Known values of the tanh approximation (gelu_new(1) = 0.841192; gelu_new(-1) = -0.158808).
  EXPECT_NEAR(fast[static_cast<std::size_t>(2000 + 200)], 0.8411920071, 1e-6);
  EXPECT_NEAR(fast[static_cast<std::size_t>(2000 - 200)], -0.1588079929, 1e-6);
}

// ---- silu_mul ---------------------------------------------------------------------------------

// silu(g)·u in double: g / (1 + e^-g) · u. The float formula rounds four times (exp within an ulp,
// the sum, the division, the product) and exp's error enters 1 + e^-g damped by e/(1 + e) ≤ 1:
// within 12·u relative. Past g ≈ -88 e^-g overflows in float and the result is ±0, which the
// double formula puts below 1e-30.
TEST(SiluMulTest, MatchesDoubleFormulaAndReference) {
  std::mt19937 rng(43);
  std::vector<float> gate;
  for (int i = -2000; i <= 2000; ++i) gate.push_back(static_cast<float>(i) * 0.01f);
  for (float v : {-100.0f, -88.0f, -30.0f, -1e-30f, 0.0f, 1e-30f, 30.0f, 88.0f, 100.0f, 1e4f})
    gate.push_back(v);
  const auto up = random_floats(rng, gate.size(), -4.0f, 4.0f);
  const auto n = static_cast<int64_t>(gate.size());
  auto fast = gate;
  auto reference = gate;
  silu_mul(fast.data(), up.data(), n);
  ref::silu_mul(reference.data(), up.data(), n);
  for (std::size_t i = 0; i < gate.size(); ++i) {
    const double g = gate[i];
    const double want = g / (1.0 + std::exp(-g)) * up[i];
    ASSERT_NEAR(reference[i], want, 12.0 * kUnitRoundoff * std::fabs(want) + 1e-30)
        << "gate=" << gate[i] << " up=" << up[i];
    ASSERT_EQ(bits_of(fast[i]), bits_of(reference[i])) << "gate=" << gate[i];
  }
  // silu(1)·1 = 1 / (1 + e^-1) = 0.7310585786.
  float g1 = 1.0f;
  const float u1 = 1.0f;
  silu_mul(&g1, &u1, 1);
  EXPECT_NEAR(g1, 0.7310585786, 1e-7);
}

// ---- add --------------------------------------------------------------------------------------

TEST(AddTest, MatchesReferenceExactly) {
  std::mt19937 rng(29);
  for (int64_t n : {0, 1, 7, 8, 9, 63, 64, 65, 1000}) {
    const auto x = random_floats(rng, static_cast<std::size_t>(n));
    const auto y0 = random_floats(rng, static_cast<std::size_t>(n));
    auto y_ref = y0;
    auto y_fast = y0;
    auto y_scalar = y0;
    ref::add(y_ref.data(), x.data(), n);
    add(y_fast.data(), x.data(), n);
    scalar::add(y_scalar.data(), x.data(), n);
    for (std::size_t i = 0; i < y0.size(); ++i) {
      ASSERT_EQ(y_ref[i], y0[i] + x[i]);
      ASSERT_EQ(bits_of(y_fast[i]), bits_of(y_ref[i]));
      ASSERT_EQ(bits_of(y_scalar[i]), bits_of(y_ref[i]));
    }
  }
}

// ---- rotary_interleaved -----------------------------------------------------------------------

// Rotates rows of n_head heads (head_dim each, padding after the heads) at hand-picked positions
// and compares with the rotation computed in double: pairs (2i, 2i+1) of the first rotary_dim
// features turn by pos · 10000^(-2i/rotary_dim); every other value stays bit-identical.
// Tolerance: the float angle carries a few ulps of relative error (powf, the division, the
// product with pos), so the rotated pair is off by ≲ (|x0| + |x1|)·8·u·max(1, |angle|).
TEST(RotaryTest, RotatesInterleavedPairsOfTheFirstRotaryDims) {
  std::mt19937 rng(31);
  const int64_t n_head = 3;
  const int64_t head_dim = 16;
  const std::vector<int32_t> positions = {0, 1, 2, 7, 100, 2047};
  const auto m = static_cast<int64_t>(positions.size());
  for (int64_t rotary_dim : {2, 8, 16}) {
    SCOPED_TRACE("rotary_dim=" + std::to_string(rotary_dim));
    const int64_t row_stride = n_head * head_dim + 5;
    const auto x0 = random_floats(rng, static_cast<std::size_t>(m * row_stride));
    auto fast = x0;
    auto reference = x0;
    rotary_interleaved(fast.data(), m, row_stride, n_head, head_dim, rotary_dim, positions.data());
    ref::rotary_interleaved(reference.data(), m, row_stride, n_head, head_dim, rotary_dim,
                            positions.data());
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t c = 0; c < row_stride; ++c) {
        const auto at = static_cast<std::size_t>(r * row_stride + c);
        ASSERT_EQ(bits_of(fast[at]), bits_of(reference[at])) << "row " << r << " col " << c;
        const int64_t h = c / head_dim;
        const int64_t d = c % head_dim;
        if (h >= n_head || d >= rotary_dim || positions[static_cast<std::size_t>(r)] == 0) {
          // Untouched: features past rotary_dim, the row padding, and position 0 (cos 0 = 1,
          // sin 0 = 0 exactly).
          ASSERT_EQ(bits_of(fast[at]), bits_of(x0[at])) << "row " << r << " col " << c;
          continue;
        }
        const int64_t i = d / 2;
        const std::size_t even = at - static_cast<std::size_t>(d % 2);
        const double a = x0[even];
        const double b = x0[even + 1];
        const double angle =
            positions[static_cast<std::size_t>(r)] *
            std::pow(10000.0, -static_cast<double>(2 * i) / static_cast<double>(rotary_dim));
        const double want = d % 2 == 0 ? a * std::cos(angle) - b * std::sin(angle)
                                       : b * std::cos(angle) + a * std::sin(angle);
        const double tol =
            (std::fabs(a) + std::fabs(b)) * 8.0 * kUnitRoundoff * std::max(1.0, angle) + 1e-7;
        ASSERT_NEAR(fast[at], want, tol) << "row " << r << " col " << c;
      }
    }
  }
}

// Position 1, rotary_dim 4: pair 0 turns by 1 rad, pair 1 by 10000^(-1/2) = 0.01 rad.
TEST(RotaryTest, HandComputedRotation) {
  std::vector<float> x = {1.0f, 0.0f, 0.0f, 1.0f, 5.0f, 6.0f};
  const int32_t pos = 1;
  rotary_interleaved(x.data(), 1, 6, 1, 6, 4, &pos);
  EXPECT_NEAR(x[0], std::cos(1.0), 1e-7);
  EXPECT_NEAR(x[1], std::sin(1.0), 1e-7);
  EXPECT_NEAR(x[2], -std::sin(0.01), 1e-8);
  EXPECT_NEAR(x[3], std::cos(0.01), 1e-7);
  EXPECT_EQ(x[4], 5.0f);
  EXPECT_EQ(x[5], 6.0f);
}

// ---- rotary_half ------------------------------------------------------------------------------

// Llama's inverse frequencies without scaling: 1 / theta^(2i / rotary_dim), rounded to float as
// the model description hands them over.
std::vector<float> llama_inv_freq(int64_t rotary_dim, double theta) {
  std::vector<float> f(static_cast<std::size_t>(rotary_dim / 2));
  for (std::size_t i = 0; i < f.size(); ++i)
    f[i] = static_cast<float>(
        1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(rotary_dim)));
  return f;
}

// HF's apply_rotary_pos_emb in double, on the first rotary_dim features of one head:
// x·cos + rotate_half(x)·sin, rotate_half(x) = cat(-x[half:], x[:half]), with cos and sin of the
// angle pos·inv_freq[d mod half] (emb = cat(freqs, freqs)). The inverse frequencies are the float
// ones the kernel gets; the product with pos is taken in double.
std::vector<double> rotate_half_double(const float* head, int64_t rotary_dim,
                                       const std::vector<float>& inv_freq, int32_t pos) {
  const int64_t half = rotary_dim / 2;
  std::vector<double> y(static_cast<std::size_t>(rotary_dim));
  for (int64_t d = 0; d < rotary_dim; ++d) {
    const double angle = static_cast<double>(pos) * inv_freq[static_cast<std::size_t>(d % half)];
    const double rotated = d < half ? -static_cast<double>(head[d + half]) : head[d - half];
    y[static_cast<std::size_t>(d)] = head[d] * std::cos(angle) + rotated * std::sin(angle);
  }
  return y;
}

// Rows of n_head heads with padding, rotary_dim below head_dim (partial rotary) and equal to it,
// Llama 3's theta (500000) and Llama 2's (10000), positions up to 32767 rad of angle. Tolerance:
// the float angle pos·inv_freq is one rounding off the double one (u·|angle|), which moves the
// pair by (|x_i| + |x_i+half|)·u·|angle|; cosf/sinf and the two products and sum add a few u.
// Swapping the halves' roles, rotating interleaved pairs, or a wrong sign is off by O(|x|).
TEST(RotaryHalfTest, MatchesHfRotateHalfInDouble) {
  std::mt19937 rng(47);
  const int64_t n_head = 3;
  const int64_t head_dim = 32;
  const std::vector<int32_t> positions = {0, 1, 2, 7, 100, 2047, 8191, 32767};
  const auto m = static_cast<int64_t>(positions.size());
  for (double theta : {10000.0, 500000.0}) {
    for (int64_t rotary_dim : {2, 8, 16, 32}) {
      SCOPED_TRACE("rotary_dim=" + std::to_string(rotary_dim) + " theta=" + std::to_string(theta));
      const auto inv_freq = llama_inv_freq(rotary_dim, theta);
      const int64_t row_stride = n_head * head_dim + 5;
      const auto x0 = random_floats(rng, static_cast<std::size_t>(m * row_stride));
      auto fast = x0;
      auto reference = x0;
      rotary_half(fast.data(), m, row_stride, n_head, head_dim, rotary_dim, inv_freq.data(),
                  positions.data());
      ref::rotary_half(reference.data(), m, row_stride, n_head, head_dim, rotary_dim,
                       inv_freq.data(), positions.data());
      const int64_t half = rotary_dim / 2;
      for (int64_t r = 0; r < m; ++r) {
        const int32_t pos = positions[static_cast<std::size_t>(r)];
        for (int64_t c = 0; c < row_stride; ++c) {
          const auto at = static_cast<std::size_t>(r * row_stride + c);
          ASSERT_EQ(bits_of(fast[at]), bits_of(reference[at])) << "row " << r << " col " << c;
          const int64_t h = c / head_dim;
          const int64_t d = c % head_dim;
          if (h >= n_head || d >= rotary_dim || pos == 0) {
            // Untouched: features past rotary_dim, the row padding, and position 0.
            ASSERT_EQ(bits_of(fast[at]), bits_of(x0[at])) << "row " << r << " col " << c;
            continue;
          }
          const float* head = x0.data() + r * row_stride + h * head_dim;
          const double want =
              rotate_half_double(head, rotary_dim, inv_freq, pos)[static_cast<std::size_t>(d)];
          const double angle =
              static_cast<double>(pos) * inv_freq[static_cast<std::size_t>(d % half)];
          const double pair = std::fabs(static_cast<double>(head[d % half])) +
                              std::fabs(static_cast<double>(head[d % half + half]));
          const double tol = pair * kUnitRoundoff * (2.0 * std::fabs(angle) + 8.0) + 1e-30;
          ASSERT_NEAR(fast[at], want, tol) << "row " << r << " col " << c;
        }
      }
    }
  }
}

// Position 1, rotary_dim 4, head_dim 6, theta 10000: inv_freq = (1, 0.01); feature 0 pairs with
// 2, feature 1 with 3.
TEST(RotaryHalfTest, HandComputedRotation) {
  std::vector<float> x = {1.0f, 0.0f, 0.0f, 1.0f, 5.0f, 6.0f};
  const std::vector<float> inv_freq = {1.0f, 0.01f};
  const int32_t pos = 1;
  rotary_half(x.data(), 1, 6, 1, 6, 4, inv_freq.data(), &pos);
  EXPECT_NEAR(x[0], std::cos(1.0), 1e-7);    // 1·cos 1 - 0·sin 1
  EXPECT_NEAR(x[2], std::sin(1.0), 1e-7);    // 0·cos 1 + 1·sin 1
  EXPECT_NEAR(x[1], -std::sin(0.01), 1e-8);  // 0·cos - 1·sin
  EXPECT_NEAR(x[3], std::cos(0.01), 1e-7);   // 1·cos + 0·sin
  EXPECT_EQ(x[4], 5.0f);
  EXPECT_EQ(x[5], 6.0f);
  EXPECT_THROW(rotary_half(x.data(), 1, 6, 1, 6, 3, inv_freq.data(), &pos), InvalidArgument);
}

// ---- rotary_pairs -----------------------------------------------------------------------------

// llama.cpp's converter permutes each head's rows so that Hugging Face's feature i and i + half
// become features 2i and 2i+1 (LlamaModel.permute). rotary_pairs on the permuted rows is then the
// very same computation as rotary_half on Hugging Face's: the same angle, cos, sin and products
// per pair, so the bits agree.
TEST(RotaryPairsTest, IsRotateHalfOnLlamaCppsPermutedRows) {
  std::mt19937 rng(53);
  const int64_t n_head = 3;
  const int64_t head_dim = 32;
  const std::vector<int32_t> positions = {0, 1, 5, 300, 8191, 32767};
  const auto m = static_cast<int64_t>(positions.size());
  const int64_t row_stride = n_head * head_dim + 3;
  for (int64_t rotary_dim : {8, 32}) {
    SCOPED_TRACE("rotary_dim=" + std::to_string(rotary_dim));
    const auto inv_freq = llama_inv_freq(rotary_dim, 500000.0);
    const int64_t half = rotary_dim / 2;
    // Hugging Face's feature d of a head ↔ llama.cpp's feature permuted(d).
    auto permuted = [&](int64_t d) { return d >= rotary_dim ? d : (d % half) * 2 + d / half; };
    const auto hf = random_floats(rng, static_cast<std::size_t>(m * row_stride));
    auto gguf = hf;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t h = 0; h < n_head; ++h)
        for (int64_t d = 0; d < head_dim; ++d)
          gguf[static_cast<std::size_t>(r * row_stride + h * head_dim + permuted(d))] =
              hf[static_cast<std::size_t>(r * row_stride + h * head_dim + d)];
    auto want = hf;
    rotary_half(want.data(), m, row_stride, n_head, head_dim, rotary_dim, inv_freq.data(),
                positions.data());
    auto fast = gguf;
    auto reference = gguf;
    rotary_pairs(fast.data(), m, row_stride, n_head, head_dim, rotary_dim, inv_freq.data(),
                 positions.data());
    ref::rotary_pairs(reference.data(), m, row_stride, n_head, head_dim, rotary_dim,
                      inv_freq.data(), positions.data());
    for (int64_t r = 0; r < m; ++r) {
      for (int64_t h = 0; h < n_head; ++h) {
        for (int64_t d = 0; d < head_dim; ++d) {
          const auto at_hf = static_cast<std::size_t>(r * row_stride + h * head_dim + d);
          const auto at = static_cast<std::size_t>(r * row_stride + h * head_dim + permuted(d));
          ASSERT_EQ(bits_of(fast[at]), bits_of(want[at_hf])) << "row " << r << " d " << d;
          ASSERT_EQ(bits_of(reference[at]), bits_of(want[at_hf])) << "row " << r << " d " << d;
        }
      }
    }
  }
  std::vector<float> x(6);
  const std::vector<float> inv_freq = {1.0f, 0.01f};
  const int32_t pos = 1;
  EXPECT_THROW(rotary_pairs(x.data(), 1, 6, 1, 6, 3, inv_freq.data(), &pos), InvalidArgument);
}

// ---- convert_to_f32 ---------------------------------------------------------------------------

using ConvertFn = void (*)(const void*, DType, int64_t, float*);

struct ConvertImpl {
  const char* name;
  ConvertFn fn;
};

const ConvertImpl kConverts[] = {
    {"ref", ref::convert_to_f32}, {"fast", convert_to_f32}, {"scalar", scalar::convert_to_f32}};

// Every one of the 65536 f16 and bf16 bit patterns converts exactly (subnormals, infinities,
// signed zeros included); NaN stays NaN (a signalling NaN may come back quieted).
TEST(ConvertTest, EveryHalfAndBfloat16PatternIsExact) {
  std::vector<uint16_t> all(65536);
  std::iota(all.begin(), all.end(), uint16_t{0});
  for (DType dt : {DType::f16, DType::bf16}) {
    for (const ConvertImpl& impl : kConverts) {
      // An odd length starting at an odd index exercises unaligned loads and the scalar tail.
      for (std::size_t offset : {std::size_t{0}, std::size_t{1}}) {
        const auto n = static_cast<int64_t>(all.size() - offset);
        std::vector<float> out(all.size() - offset);
        impl.fn(all.data() + offset, dt, n, out.data());
        for (std::size_t i = 0; i < out.size(); ++i) {
          const uint16_t h = all[i + offset];
          const float want = dt == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
          if (std::isnan(want)) {
            ASSERT_TRUE(std::isnan(out[i])) << impl.name << " " << h;
          } else {
            ASSERT_EQ(bits_of(out[i]), bits_of(want))
                << impl.name << " " << dtype_name(dt) << " pattern " << h;
          }
        }
      }
    }
  }
  // Spot checks independent of half.hpp: the smallest f16 subnormal is 2^-24, the largest
  // 1023·2^-24, 0x3c00 is 1, 0xc000 is -2; bf16 0x3f80 is 1.
  float v = 0.0f;
  const uint16_t tiny = 0x0001;
  const uint16_t big_sub = 0x03ff;
  const uint16_t one = 0x3c00;
  const uint16_t minus_two = 0xc000;
  const uint16_t bf_one = 0x3f80;
  convert_to_f32(&tiny, DType::f16, 1, &v);
  EXPECT_EQ(v, std::ldexp(1.0f, -24));
  convert_to_f32(&big_sub, DType::f16, 1, &v);
  EXPECT_EQ(v, 1023.0f * std::ldexp(1.0f, -24));
  convert_to_f32(&one, DType::f16, 1, &v);
  EXPECT_EQ(v, 1.0f);
  convert_to_f32(&minus_two, DType::f16, 1, &v);
  EXPECT_EQ(v, -2.0f);
  convert_to_f32(&bf_one, DType::bf16, 1, &v);
  EXPECT_EQ(v, 1.0f);
}

TEST(ConvertTest, F32IsCopiedAndOtherTypesAreRejected) {
  std::mt19937 rng(37);
  const auto src = random_floats(rng, 77);
  for (const ConvertImpl& impl : kConverts) {
    std::vector<float> out(src.size(), NAN);
    impl.fn(src.data(), DType::f32, static_cast<int64_t>(src.size()), out.data());
    EXPECT_EQ(0, std::memcmp(out.data(), src.data(), src.size() * sizeof(float))) << impl.name;
    EXPECT_THROW(impl.fn(src.data(), DType::i32, 1, out.data()), InvalidArgument) << impl.name;
  }
}

// ---- simd_level -------------------------------------------------------------------------------

TEST(SimdLevelTest, ReportsTheCpuOrTheOverride) {
  const char* env = std::getenv("FERRY_SIMD");
  const std::string level(simd_level());
  if (env != nullptr && std::string(env) == "scalar") {
    EXPECT_EQ(level, "scalar");
    return;
  }
#if defined(__x86_64__)
  __builtin_cpu_init();
  unsigned eax = 0;
  unsigned ebx = 0;
  unsigned ecx = 0;
  unsigned edx = 0;
  const bool has_f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c;
  EXPECT_EQ(level, has_avx2 ? "avx2" : "scalar");
#else
  EXPECT_EQ(level, "scalar");
#endif
}

}  // namespace
}  // namespace ferry::kernels::cpu

namespace ferry::kernels::cpu {
namespace {

// Every bf16 bit pattern: counted exactly when it is finite and its f16 rounding is infinite.
TEST(Bf16BeyondF16, CountsExactlyTheValuesF16RoundsToInfinity) {
  std::vector<uint16_t> all(65536);
  int64_t want = 0;
  for (uint32_t b = 0; b < 65536; ++b) {
    all[b] = static_cast<uint16_t>(b);
    const float f = bf16_to_f32(static_cast<uint16_t>(b));
    if (std::isfinite(f) && std::isinf(f16_to_f32(f32_to_f16(f)))) ++want;
  }
  EXPECT_GT(want, 0);
  EXPECT_EQ(bf16_count_beyond_f16(all.data(), 65536), want);
  const uint16_t edge[] = {f32_to_bf16(65280.0f), f32_to_bf16(-65280.0f), f32_to_bf16(65536.0f),
                           f32_to_bf16(-1e30f),   f32_to_bf16(INFINITY),  0x7fc0 /* NaN */};
  EXPECT_EQ(bf16_count_beyond_f16(edge, 6), 2);
}

}  // namespace
}  // namespace ferry::kernels::cpu
