// Per-element reading of the packed weight rows of runtime/core/quant.hpp, shared by the CPU
// kernels (reference and portable) and the CUDA kernels so every backend dequantizes the same way:
// w = scale · q for q8 and w = min + scale · q for q4, each a single f32 product (and sum).
#pragma once

#include <cstdint>
#include <cstring>

#include "runtime/core/half.hpp"
#include "runtime/core/host_device.hpp"
#include "runtime/core/quant.hpp"

namespace ferry::kernels {

FERRY_HD float q8_row_scale(const unsigned char* row) {
  float s;
  std::memcpy(&s, row, sizeof s);
  return s;
}

FERRY_HD const int8_t* q8_row_values(const unsigned char* row) {
  return reinterpret_cast<const int8_t*>(row + 4);
}

// The 4-bit code of element i (0 ≤ i < G) of a q4 group whose G/2 nibble bytes start at bytes.
FERRY_HD unsigned q4_code(const unsigned char* bytes, int64_t i, int64_t group) {
  const int64_t half = group / 2;
  return i < half ? (bytes[i] & 0x0fu) : (bytes[i - half] >> 4);
}

FERRY_HD float q4_dequant(float min, float scale, unsigned code) {
  return min + scale * static_cast<float>(code);
}

// Group g of a q4 row of ng groups of `group` columns: its scale and minimum as f32, and where
// its group/2 nibble bytes start.
struct Q4Group {
  float scale;
  float min;
  const unsigned char* bytes;
};
// The f16 at p (2-byte aligned in a packed row, whose length is a multiple of 4 bytes and whose
// start is 64-byte aligned: one 16-bit load on the device).
FERRY_HD uint16_t load_half(const unsigned char* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint16_t*>(p);
#else
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
#endif
}

FERRY_HD Q4Group q4_group(const unsigned char* row, int64_t ng, int64_t group, int64_t g) {
  return {f16_to_f32(load_half(row + 2 * g)),
          f16_to_f32(load_half(row + q4_mins_offset(ng) + 2 * g)),
          row + q4_nibbles_offset(ng) + g * (group / 2)};
}

// Element j of a packed row, dtype T known at compile time (so the group size is a constant: the
// CUDA dequantization kernel divides by a power of two, not a variable); ng: the row's groups
// (quant_groups; unused for q8).
template <DType T>
FERRY_HD float packed_row_weight_t(const unsigned char* row, int64_t ng, int64_t j) {
  if constexpr (T == DType::q8) {
    return q8_row_scale(row) * static_cast<float>(q8_row_values(row)[j]);
  } else {
    constexpr int64_t G = T == DType::q4_g64 ? 64 : 128;
    const int64_t g = j / G;
    const Q4Group q = q4_group(row, ng, G, g);
    return q4_dequant(q.min, q.scale, q4_code(q.bytes, j - g * G, G));
  }
}

// Element j of a packed row of cols columns (q8 or q4), as f32.
FERRY_HD float packed_row_weight(const unsigned char* row, DType t, int64_t cols, int64_t j) {
  switch (t) {
    case DType::q8:
      return packed_row_weight_t<DType::q8>(row, 0, j);
    case DType::q4_g64:
      return packed_row_weight_t<DType::q4_g64>(row, quant_groups(t, cols), j);
    default:
      return packed_row_weight_t<DType::q4_g128>(row, quant_groups(t, cols), j);
  }
}

// The 4 bytes at p as a little-endian word. p is 4-byte aligned wherever the packed products
// call this (packed rows are a multiple of 4 bytes long, tensors start 64-byte aligned, and q8
// codes and q4 nibble groups start at multiples of 4 within a row: docs/pack-format.md), so on
// the device it is one 32-bit load.
FERRY_HD uint32_t load_word(const unsigned char* p) {
#if defined(__CUDA_ARCH__)
  return *reinterpret_cast<const uint32_t*>(p);
#else
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
#endif
}

#if defined(__CUDA_ARCH__)
#define FERRY_UNROLL_4 _Pragma("unroll 4")
#else
#define FERRY_UNROLL_4
#endif

// What lane `lane` of `lanes` adds up of one packed row's products with m ≤ M rows of x (row i
// of x at x + i·k): acc[i] += Σ w[j]·x[i, j] over the columns the lane takes, each w[j] the
// shared dequantized value above. The CUDA packed product (kernels/cuda/quant.cu) runs one warp
// per row with lanes = 32 and adds the lanes' sums; the CPU tests run every lane here, so the
// kernel's indexing is checked without a GPU.
//
// The lane takes the row's 4-byte words lane, lane + lanes, … so a warp reads 128 consecutive
// bytes per step, four steps in flight on the device (unrolled): q8 words hold 4 consecutive
// codes; a q4 word holds bytes c … c + 3 of a group (c a multiple of 4), i.e. columns
// g·G + c … + 3 in its low nibbles and g·G + G/2 + c … + 3 in its high ones, the group's scale and
// minimum read with it. Columns past the last whole word (q8) or whole group (q4) go one by one.
template <DType T, int M>
FERRY_HD void packed_row_lane_sums_t(const unsigned char* row, int64_t k, const float* x, int64_t m,
                                     int lane, int lanes, float (&acc)[M]) {
  auto add = [&](int64_t j, float w) {
    for (int i = 0; i < M; ++i)
      if (i < m) acc[i] += w * x[i * k + j];
  };
  if constexpr (T == DType::q8) {
    const float scale = q8_row_scale(row);
    const unsigned char* q = row + 4;
    const int64_t words = k / 4;
    FERRY_UNROLL_4
    for (int64_t u = lane; u < words; u += lanes) {
      const uint32_t v = load_word(q + 4 * u);
      for (int t = 0; t < 4; ++t)
        add(4 * u + t, scale * static_cast<float>(static_cast<int8_t>((v >> (8 * t)) & 0xffu)));
    }
    for (int64_t j = 4 * words + lane; j < k; j += lanes)
      add(j, scale * static_cast<float>(q8_row_values(row)[j]));
  } else {
    constexpr int64_t G = T == DType::q4_g64 ? 64 : 128;
    constexpr int64_t kHalf = G / 2;
    constexpr int64_t kWords = kHalf / 4;  // words per group
    const int64_t ng = (k + G - 1) / G;
    const int64_t full = k / G;
    const unsigned char* nibbles = row + q4_nibbles_offset(ng);
    FERRY_UNROLL_4
    for (int64_t u = lane; u < full * kWords; u += lanes) {
      const int64_t g = u / kWords;
      const int64_t lo = g * G + (u - g * kWords) * 4;  // the low nibbles' first column
      const Q4Group q = q4_group(row, ng, G, g);
      const uint32_t v = load_word(nibbles + 4 * u);
      for (int t = 0; t < 4; ++t) {
        const unsigned byte = (v >> (8 * t)) & 0xffu;
        add(lo + t, q4_dequant(q.min, q.scale, byte & 0x0fu));
        add(lo + kHalf + t, q4_dequant(q.min, q.scale, byte >> 4));
      }
    }
    if (full < ng) {  // a partial last group: its bytes lane, lane + lanes, …
      const Q4Group q = q4_group(row, ng, G, full);
      for (int64_t b = lane; b < kHalf; b += lanes) {
        const int64_t lo = full * G + b;
        if (lo < k) add(lo, q4_dequant(q.min, q.scale, q4_code(q.bytes, b, G)));
        if (lo + kHalf < k)
          add(lo + kHalf, q4_dequant(q.min, q.scale, q4_code(q.bytes, b + kHalf, G)));
      }
    }
  }
}

// The same for a dtype known at run time (the CPU tests).
template <int M>
FERRY_HD void packed_row_lane_sums(const unsigned char* row, DType t, int64_t k, const float* x,
                                   int64_t m, int lane, int lanes, float (&acc)[M]) {
  switch (t) {
    case DType::q8:
      packed_row_lane_sums_t<DType::q8>(row, k, x, m, lane, lanes, acc);
      break;
    case DType::q4_g64:
      packed_row_lane_sums_t<DType::q4_g64>(row, k, x, m, lane, lanes, acc);
      break;
    default:
      packed_row_lane_sums_t<DType::q4_g128>(row, k, x, m, lane, lanes, acc);
      break;
  }
}

}  // namespace ferry::kernels
