// Helpers for the CPU kernel tests: seeded random data, weights stored in f32/f16/bf16 together
// with their exact f32 values, packed (q8 / q4) weights, and the ULP unit the tolerances are
// written in.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/quant.hpp"
#include "runtime/core/dtype.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"

namespace ferry::kernels::cpu::test {

// 2^-24: the unit roundoff of f32 (half an ulp of 1).
inline constexpr double kUnitRoundoff = 5.9604644775390625e-08;

inline std::vector<float> random_floats(std::mt19937& rng, std::size_t n, float lo = -1.0f,
                                        float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// A weight matrix in one storage dtype plus the exact f32 value of every stored element.
struct Weights {
  DType dtype = DType::f32;
  std::vector<float> values;   // what every element means, exactly
  std::vector<uint16_t> bits;  // the f16 / bf16 storage (empty for f32)

  const void* data() const {
    return dtype == DType::f32 ? static_cast<const void*>(values.data())
                               : static_cast<const void*>(bits.data());
  }
};

// Random weights in [-1, 1] rounded to dtype. With subnormal_every > 0, every that-many-th f16
// element is a random f16 subnormal instead (magnitude below 2^-14), to prove they are not
// flushed to zero.
inline Weights random_weights(std::mt19937& rng, DType dtype, std::size_t n,
                              int subnormal_every = 0) {
  Weights w;
  w.dtype = dtype;
  w.values = random_floats(rng, n);
  if (dtype == DType::f32) return w;
  std::uniform_int_distribution<int> mant(1, 0x3ff);
  std::bernoulli_distribution negative(0.5);
  w.bits.resize(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (dtype == DType::f16) {
      if (subnormal_every > 0 && i % static_cast<std::size_t>(subnormal_every) == 0) {
        w.bits[i] = static_cast<uint16_t>(mant(rng) | (negative(rng) ? 0x8000 : 0));
      } else {
        w.bits[i] = f32_to_f16(w.values[i]);
      }
      w.values[i] = f16_to_f32(w.bits[i]);
    } else {
      w.bits[i] = f32_to_bf16(w.values[i]);
      w.values[i] = bf16_to_f32(w.bits[i]);
    }
  }
  return w;
}

inline std::string shape_name(DType dt, int64_t m, int64_t k, int64_t n) {
  return std::string(dtype_name(dt)) + " m=" + std::to_string(m) + " k=" + std::to_string(k) +
         " n=" + std::to_string(n);
}

// w [n, k] packed row by row as dtype dt (q8, q4_g64, q4_g128), as `ferry convert` packs it,
// with the dequantized value of every element.
struct Packed {
  std::vector<unsigned char> bytes;
  std::vector<float> values;  // the dequantized value of every element (reference)
};

inline Packed pack(const std::vector<float>& w, int64_t n, int64_t k, DType dt) {
  Packed p;
  const uint64_t row_bytes = packed_row_bytes(dt, k);
  p.bytes.assign(static_cast<std::size_t>(n) * row_bytes, 0xAB);
  p.values.resize(static_cast<std::size_t>(n * k));
  for (int64_t o = 0; o < n; ++o) {
    unsigned char* row = p.bytes.data() + static_cast<uint64_t>(o) * row_bytes;
    quantize_row(w.data() + o * k, k, dt, row, "test");
    ref::convert_to_f32(row, dt, k, p.values.data() + o * k);
  }
  return p;
}

}  // namespace ferry::kernels::cpu::test
