// The shared per-element math of kernels/common/math.hpp against double-precision definitions.
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/common/math.hpp"

namespace ferry::kernels {
namespace {

TEST(MathTest, RotaryInvFreqMatchesDouble) {
  for (int64_t rotary_dim : {2, 8, 64, 128}) {
    EXPECT_EQ(rotary_inv_freq(0, rotary_dim), 1.0f);  // 10000^0 = 1 exactly
    for (int64_t i = 0; i < rotary_dim / 2; ++i) {
      const double want =
          std::pow(10000.0, -static_cast<double>(2 * i) / static_cast<double>(rotary_dim));
      // Three f32 roundings (the exponent's division, the power rounded from double, the
      // reciprocal), the exponent's error amplified by ln(10000) ≈ 9.2: within 16 ulps.
      EXPECT_NEAR(rotary_inv_freq(i, rotary_dim), want, 16.0 * want * 5.96e-8)
          << "i=" << i << " rotary_dim=" << rotary_dim;
    }
  }
  // GPT-J, rotary_dim 64: pair 16 turns at 10000^(-1/2) = 0.01.
  EXPECT_NEAR(rotary_inv_freq(16, 64), 0.01f, 1e-9);
}

TEST(MathTest, RotaryAngleIsPositionTimesFrequency) {
  EXPECT_EQ(rotary_angle(0, 5, 64), 0.0f);
  EXPECT_EQ(rotary_angle(3, 0, 64), 3.0f);
  EXPECT_EQ(rotary_angle(1000, 16, 64), 1000.0f * rotary_inv_freq(16, 64));
}

TEST(MathTest, RotatePairIsARotation) {
  float a = 1.0f;
  float b = 0.0f;
  rotary_rotate_pair(a, b, 0.0f, 1.0f);  // a quarter turn: (1, 0) → (0, 1)
  EXPECT_EQ(a, 0.0f);
  EXPECT_EQ(b, 1.0f);
  a = 3.0f;
  b = 4.0f;
  const float c = std::cos(0.3f);
  const float s = std::sin(0.3f);
  rotary_rotate_pair(a, b, c, s);
  EXPECT_NEAR(a, 3.0 * std::cos(0.3) - 4.0 * std::sin(0.3), 1e-6);
  EXPECT_NEAR(b, 4.0 * std::cos(0.3) + 3.0 * std::sin(0.3), 1e-6);
  EXPECT_NEAR(std::hypot(a, b), 5.0, 1e-6);  // length preserved
}

TEST(MathTest, GeluNewKnownValues) {
  EXPECT_EQ(gelu_new(0.0f), 0.0f);
  for (double x : {-6.0, -3.0, -1.0, -0.25, 0.25, 1.0, 2.5, 6.0}) {
    const double want =
        0.5 * x *
        (1.0 + std::tanh(std::sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
    EXPECT_NEAR(gelu_new(static_cast<float>(x)), want, 1e-6 * std::max(1.0, std::fabs(x))) << x;
  }
  // Large |x|: the identity for positive x, zero for negative x.
  EXPECT_EQ(gelu_new(50.0f), 50.0f);
  EXPECT_EQ(gelu_new(-50.0f), -0.0f);
}

TEST(MathTest, AttentionScaleIsSqrtHeadDim) {
  EXPECT_EQ(attention_scale_divisor(256), 16.0f);
  EXPECT_EQ(attention_scale_divisor(64), 8.0f);
  EXPECT_NEAR(attention_scale_divisor(20), std::sqrt(20.0), 1e-6);
}

}  // namespace
}  // namespace ferry::kernels
