// The byte layouts of the packed (quantized) weight matrices of ferry packs, shared by the pack
// reader and writer, the planner's byte counts and the CPU and CUDA kernels.
//
// A packed matrix [rows, cols] is rows rows of packed_row_bytes(dtype, cols) bytes each, one after
// another, every row self-contained (so one embedding row is one contiguous read):
//
//   q8       symmetric int8 per output channel (row):
//            [f32 scale][int8 q × cols][zero padding to a multiple of 4 bytes]
//            w[j] = scale · q[j], q in [-127, 127]
//   q4_gG    asymmetric 4-bit per group of G = 64 or 128 consecutive columns, ng = ⌈cols / G⌉
//            groups (the last one zero-padded):
//            [f16 scale × ng][f16 min × ng][ng × G/2 bytes of nibbles]
//            w[j] = min[g] + scale[g] · q[j], q in [0, 15], g = j / G. In group g's G/2 bytes,
//            byte i holds element g·G + i in its low nibble and element g·G + G/2 + i in its
//            high nibble (llama.cpp's order: one 16-byte load unpacks to two runs of
//            consecutive elements, no shuffles).
//
// All numbers are little-endian. The scale and the minimum of a q4 group are its zero point
// and step (w = scale · (q − z) with z = −min / scale), as in FlexGen's group-wise format.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.hpp"
#include "runtime/core/ggml_quant.hpp"
#include "runtime/core/host_device.hpp"

namespace ferry {

// Columns per group of a packed dtype (q8: the whole row, reported as 0).
FERRY_HD constexpr int64_t quant_group_size(DType t) {
  return t == DType::q4_g64 ? 64 : (t == DType::q4_g128 ? 128 : 0);
}

// Groups in a row of cols columns (q4 only).
FERRY_HD int64_t quant_groups(DType t, int64_t cols) {
  const int64_t g = quant_group_size(t);
  return g == 0 ? 0 : (cols + g - 1) / g;
}

// Bytes of one packed row of cols columns; for ggml block dtypes ggml_row_bytes (cols a multiple
// of the block), for float dtypes cols · dtype_size.
FERRY_HD uint64_t packed_row_bytes(DType t, int64_t cols) {
  const auto c = static_cast<uint64_t>(cols);
  if (is_ggml_block(t)) return ggml_row_bytes(t, cols);
  if (t == DType::q8) return 4 + (c + 3) / 4 * 4;
  if (t == DType::q4_g64 || t == DType::q4_g128) {
    const auto ng = static_cast<uint64_t>(quant_groups(t, cols));
    const auto g = static_cast<uint64_t>(quant_group_size(t));
    return ng * (4 + g / 2);
  }
  return c * dtype_size(t);
}

// Bytes of a [rows, cols] matrix stored in dtype t.
FERRY_HD uint64_t packed_matrix_bytes(DType t, int64_t rows, int64_t cols) {
  return static_cast<uint64_t>(rows) * packed_row_bytes(t, cols);
}

// Offsets within a q4 row of ng groups: the scales, the minima, then the nibbles.
FERRY_HD uint64_t q4_mins_offset(int64_t ng) { return static_cast<uint64_t>(ng) * 2; }
FERRY_HD uint64_t q4_nibbles_offset(int64_t ng) { return static_cast<uint64_t>(ng) * 4; }

}  // namespace ferry
