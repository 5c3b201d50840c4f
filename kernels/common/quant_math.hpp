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
    constexpr int64_t G = quant_group_size(T);
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

// 2^23 + byte t of v, exactly: the byte put in the low mantissa bits of 2^23 (one byte permute on
// the device, no integer → float conversion). Less 2^23 it is the byte's value as f32.
FERRY_HD float biased_byte(uint32_t v, int t) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(
      static_cast<int>(__byte_perm(v, 0x4B000000u, 0x7540u + static_cast<unsigned>(t))));
#else
  return f32_from_bits(0x4B000000u | ((v >> (8 * t)) & 0xffu));
#endif
}

// A packed row as words, the unit of the CUDA products: the row's 4-byte words of codes, each
// read with one 32-bit load. q8 word u holds columns 4u … 4u + 3; q4 word u holds bytes c … c + 3
// (c a multiple of 4) of group g = u / (G/8), i.e. columns g·G + c … + 3 in its low nibbles and
// g·G + G/2 + c … + 3 in its high ones. Columns from packed_tail_column on (a q8 row's last
// k mod 4, a q4 row's partial last group) are read one by one (packed_row_weight_t).
FERRY_HD constexpr int64_t packed_row_words(DType t, int64_t k) {
  return t == DType::q8 ? k / 4 : k / quant_group_size(t) * (quant_group_size(t) / 8);
}
FERRY_HD constexpr int64_t packed_tail_column(DType t, int64_t k) {
  return t == DType::q8 ? k / 4 * 4 : k / quant_group_size(t) * quant_group_size(t);
}
// What the CUDA kernels hand out one per thread: the row's words, then its tail columns.
FERRY_HD constexpr int64_t packed_row_units(DType t, int64_t k) {
  return packed_row_words(t, k) + (k - packed_tail_column(t, k));
}
// The first column of word u (q4: of its low nibbles; its high ones start G/2 further on).
template <DType T>
FERRY_HD int64_t packed_word_column(int64_t u) {
  if constexpr (T == DType::q8) {
    return 4 * u;
  } else {
    constexpr int64_t G = quant_group_size(T);
    constexpr int64_t kWords = G / 8;
    const int64_t g = u / kWords;
    return g * G + (u - g * kWords) * 4;
  }
}
// The weights of word u of a row of ng groups (unused for q8): w[0..3] the columns from
// packed_word_column on, and for q4 w[4..7] the columns G/2 further on (q8 leaves them unset);
// each the very f32 of packed_row_weight_t.
template <DType T>
FERRY_HD void packed_word_weights_t(const unsigned char* row, int64_t ng, int64_t u,
                                    float (&w)[8]) {
  if constexpr (T == DType::q8) {
    const float scale = q8_row_scale(row);
    const uint32_t v = load_word(row + 4 + 4 * u) ^ 0x80808080u;  // codes + 128, as bytes
    for (int t = 0; t < 4; ++t) w[t] = scale * (biased_byte(v, t) - 8388736.0f);  // 2^23 + 128
  } else {
    constexpr int64_t G = quant_group_size(T);
    constexpr int64_t kWords = G / 8;
    const int64_t g = u / kWords;
    const Q4Group q = q4_group(row, ng, G, g);
    const uint32_t v = load_word(q.bytes + (u - g * kWords) * 4);
    const uint32_t lo = v & 0x0f0f0f0fu;
    const uint32_t hi = (v >> 4) & 0x0f0f0f0fu;
    for (int t = 0; t < 4; ++t) {
      w[t] = q.min + q.scale * (biased_byte(lo, t) - 8388608.0f);
      w[4 + t] = q.min + q.scale * (biased_byte(hi, t) - 8388608.0f);
    }
  }
}

// Four consecutive f32 at p: one 16-byte load on the device when `aligned` (p 16-byte aligned).
FERRY_HD void load_x4(const float* p, bool aligned, float* v) {
#if defined(__CUDA_ARCH__)
  if (aligned) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x;
    v[1] = f.y;
    v[2] = f.z;
    v[3] = f.w;
    return;
  }
#endif
  (void)aligned;
  for (int t = 0; t < 4; ++t) v[t] = p[t];
}

#if defined(__CUDA_ARCH__)
#define FERRY_UNROLL _Pragma("unroll")
#else
#define FERRY_UNROLL
#endif

// What thread `lane` of `lanes` adds up of one packed row's products with m ≤ M rows of x (row i
// at x + i·k): acc[i] += Σ w[j]·x[i, j] over the columns the thread takes, each w[j] the shared
// dequantized value above. The CUDA packed product (kernels/cuda/quant.cu) runs it with the W
// warps of a row as lanes (lanes = 32·W) and adds the threads' sums; the CPU tests run every lane
// here, so its indexing is checked without a GPU.
//
// The thread takes the row's words lane, lane + lanes, … (so the warps read 128·W consecutive
// bytes per step, coalesced, up to four words a thread in flight on the device), dequantizes each
// word once and multiplies it with each row of x, whose 8 (q4) or 4 (q8) columns it reads as
// 4-column pieces (x_aligned: x is 16-byte aligned and k a multiple of 4, so each piece is one
// load). The columns from packed_tail_column on go one by one.
template <DType T, int M>
FERRY_HD void packed_row_lane_sums_t(const unsigned char* row, int64_t k, const float* x, int64_t m,
                                     bool x_aligned, int lane, int lanes, float (&acc)[M]) {
  constexpr int kSpan = T == DType::q8 ? 4 : 8;  // weights per word
  constexpr int64_t kHalf = quant_group_size(T) / 2;
  const int64_t ng = quant_groups(T, k);
  const int64_t words = packed_row_words(T, k);
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
  for (int64_t u = lane; u < words; u += lanes) {
    float w[8];
    packed_word_weights_t<T>(row, ng, u, w);
    const int64_t lo = packed_word_column<T>(u);
    FERRY_UNROLL
    for (int i = 0; i < M; ++i) {
      if (i >= m) break;
      float xv[8];
      load_x4(x + i * k + lo, x_aligned, xv);
      if constexpr (kSpan == 8) load_x4(x + i * k + lo + kHalf, x_aligned, xv + 4);
      FERRY_UNROLL
      for (int t = 0; t < kSpan; ++t) acc[i] += w[t] * xv[t];
    }
  }
  for (int64_t j = packed_tail_column(T, k) + lane; j < k; j += lanes) {
    const float wj = packed_row_weight_t<T>(row, ng, j);
    for (int i = 0; i < M; ++i)
      if (i < m) acc[i] += wj * x[i * k + j];
  }
}

// The same for a dtype known at run time (the CPU tests).
template <int M>
FERRY_HD void packed_row_lane_sums(const unsigned char* row, DType t, int64_t k, const float* x,
                                   int64_t m, int lane, int lanes, float (&acc)[M]) {
  switch (t) {
    case DType::q8:
      packed_row_lane_sums_t<DType::q8>(row, k, x, m, false, lane, lanes, acc);
      break;
    case DType::q4_g64:
      packed_row_lane_sums_t<DType::q4_g64>(row, k, x, m, false, lane, lanes, acc);
      break;
    default:
      packed_row_lane_sums_t<DType::q4_g128>(row, k, x, m, false, lane, lanes, acc);
      break;
  }
}

}  // namespace ferry::kernels
