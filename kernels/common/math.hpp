// Per-element math of the GPT-J forward pass that the CPU and CUDA kernels share, so that both
// backends round the same way. Each function reproduces PyTorch's float32 computation operation
// by operation (the order of the float operations is part of the contract: changing it moves
// results by an ulp or two and the CPU/CUDA comparisons with it).
#pragma once

#include <cmath>  // ::tanhf, ::pow, ::sinf, ::cosf, ::sqrtf: C functions, callable on host and device

#include <cstdint>

#include "runtime/core/host_device.hpp"

namespace ferry::kernels {

// Hugging Face's NewGELUActivation in float32:
//   0.5 * x * (1.0 + tanh(sqrt(2/pi) * (x + 0.044715 * x**3)))
// The Python double constants are rounded to float first, as torch does for a float tensor;
// torch.pow(x, 3.0) is x * x * x, and the products associate left to right as written.
FERRY_HD float gelu_new(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kCubic = 0.044715f;
  const float cube = x * x * x;
  const float inner = kSqrt2OverPi * (x + kCubic * cube);
  return 0.5f * x * (1.0f + ::tanhf(inner));
}

// GPT-J's rotary frequency for pair i of a rotary_dim-wide rotation, as HF computes it in float32:
// 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2) / rotary_dim)).
// The power is taken in double and rounded once to float: that is the correctly rounded float
// power (which torch's float pow returns to within its 1 ulp) on the host and on the device alike,
// where powf is not: the device's powf is off by up to 2 ulp, and one ulp of an angle near
// 2000 rad moves a rotated value by ~1e-6 (seen on an H200). Double pow is within 2 ulp of
// double on both, far below a float's rounding.
FERRY_HD float rotary_inv_freq(int64_t i, int64_t rotary_dim) {
  const float exponent = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
  const auto power = static_cast<float>(::pow(10000.0, static_cast<double>(exponent)));
  return 1.0f / power;
}

// The rotation angle of pair i at position pos: float(pos) * inv_freq, one float product (HF's
// einsum of the float positions with inv_freq).
FERRY_HD float rotary_angle(int32_t pos, int64_t i, int64_t rotary_dim) {
  return static_cast<float>(pos) * rotary_inv_freq(i, rotary_dim);
}

// Rotates the interleaved pair (x0, x1) = (x[2i], x[2i+1]) by the angle whose cosine and sine are
// given. HF computes x * cos + rotate_every_two(x) * sin with rotate_every_two(x)[2i] =
// -x[2i+1], which in float is exactly x0·cos - x1·sin and x1·cos + x0·sin.
FERRY_HD void rotary_rotate_pair(float& x0, float& x1, float cos_a, float sin_a) {
  const float a = x0;
  const float b = x1;
  x0 = a * cos_a - b * sin_a;
  x1 = b * cos_a + a * sin_a;
}

// Rotates the pair (x[i], x[i + half]) of Llama's rotate_half layout: HF computes
// x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x[half:], x[:half]), so in float
// x[i]·cos - x[i+half]·sin and x[i+half]·cos + x[i]·sin: the same two products and sum as an
// interleaved pair, on other indices.
FERRY_HD void rotary_rotate_half_pair(float& lo, float& hi, float cos_a, float sin_a) {
  rotary_rotate_pair(lo, hi, cos_a, sin_a);
}

// Llama's rotary angle: float(pos) * inv_freq, with the inverse frequency taken from a table
// the model description computed (rope_theta, rope scaling).
FERRY_HD float rotary_angle_freq(int32_t pos, float inv_freq) {
  return static_cast<float>(pos) * inv_freq;
}

// SiLU as torch computes it in float32 (x / (1 + exp(-x))), times the up projection: one
// element of Llama's SwiGLU, down(silu(gate(x)) * up(x)).
FERRY_HD float silu_mul(float gate, float up) { return gate / (1.0f + ::expf(-gate)) * up; }

// HF's attention scale: scores are divided by sqrt(head_dim) computed in float32.
FERRY_HD float attention_scale_divisor(int64_t head_dim) {
  return ::sqrtf(static_cast<float>(head_dim));
}

}  // namespace ferry::kernels
