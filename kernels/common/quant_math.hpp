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

// Element j of a packed row of cols columns (q8 or q4), as f32.
FERRY_HD float packed_row_weight(const unsigned char* row, DType t, int64_t cols, int64_t j) {
  if (t == DType::q8) return q8_row_scale(row) * static_cast<float>(q8_row_values(row)[j]);
  const int64_t group = quant_group_size(t);
  const int64_t ng = quant_groups(t, cols);
  const int64_t g = j / group;
  uint16_t scale;
  uint16_t min;
  std::memcpy(&scale, row + 2 * g, 2);
  std::memcpy(&min, row + q4_mins_offset(ng) + 2 * g, 2);
  const unsigned char* bytes = row + q4_nibbles_offset(ng) + g * (group / 2);
  return q4_dequant(f16_to_f32(min), f16_to_f32(scale), q4_code(bytes, j - g * group, group));
}

}  // namespace ferry::kernels
