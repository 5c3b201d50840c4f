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
FERRY_HD Q4Group q4_group(const unsigned char* row, int64_t ng, int64_t group, int64_t g) {
  uint16_t scale;
  uint16_t min;
  std::memcpy(&scale, row + 2 * g, 2);
  std::memcpy(&min, row + q4_mins_offset(ng) + 2 * g, 2);
  return {f16_to_f32(scale), f16_to_f32(min), row + q4_nibbles_offset(ng) + g * (group / 2)};
}

// Element j of a packed row of cols columns (q8 or q4), as f32.
FERRY_HD float packed_row_weight(const unsigned char* row, DType t, int64_t cols, int64_t j) {
  if (t == DType::q8) return q8_row_scale(row) * static_cast<float>(q8_row_values(row)[j]);
  const int64_t group = quant_group_size(t);
  const int64_t g = j / group;
  const Q4Group q = q4_group(row, quant_groups(t, cols), group, g);
  return q4_dequant(q.min, q.scale, q4_code(q.bytes, j - g * group, group));
}

// What lane `lane` of `lanes` adds up of one packed row's products with m ≤ M rows of x (row i
// of x at x + i·k): acc[i] += Σ w[j]·x[i, j] over the columns the lane takes. The CUDA packed
// product (kernels/cuda/quant.cu) runs one warp per row with lanes = 32 and adds the lanes' sums;
// the CPU tests run every lane here, so the kernel's indexing is checked without a GPU.
// q8: the lane takes columns lane, lane + lanes, …; q4: the row's groups in turn, and in each the
// nibble bytes lane, lane + lanes, … (byte b holds columns g·G + b and g·G + G/2 + b), the group's
// scale and minimum read once.
template <int M>
FERRY_HD void packed_row_lane_sums(const unsigned char* row, DType t, int64_t k, const float* x,
                                   int64_t m, int lane, int lanes, float (&acc)[M]) {
  auto add = [&](int64_t j, float w) {
    for (int i = 0; i < M; ++i)
      if (i < m) acc[i] += w * x[i * k + j];
  };
  if (t == DType::q8) {
    const float scale = q8_row_scale(row);
    const int8_t* q = q8_row_values(row);
    for (int64_t j = lane; j < k; j += lanes) add(j, scale * static_cast<float>(q[j]));
    return;
  }
  const int64_t group = quant_group_size(t);
  const int64_t half = group / 2;
  const int64_t ng = quant_groups(t, k);
  for (int64_t g = 0; g < ng; ++g) {
    const Q4Group q = q4_group(row, ng, group, g);
    for (int64_t b = lane; b < half; b += lanes) {
      const int64_t lo = g * group + b;  // the low nibble's column; the high one's is lo + half
      if (lo < k) add(lo, q4_dequant(q.min, q.scale, q4_code(q.bytes, b, group)));
      if (lo + half < k)
        add(lo + half, q4_dequant(q.min, q.scale, q4_code(q.bytes, b + half, group)));
    }
  }
}

}  // namespace ferry::kernels
