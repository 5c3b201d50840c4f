// The sizes of llama.cpp's block-quantized formats (ggml's type traits), as ferry counts them.
// A matrix [rows, cols] in one of them is rows rows of cols / block_elems blocks each, one after
// another, every row self-contained (cols must be a multiple of the block's element count; a
// GGUF tensor that is not is refused when the file is opened). Blocks are packed with no padding,
// so rows need not start at any alignment: the kernels read them bytewise (memcpy).
//
//   type   elems  bytes  layout (little-endian; d, dmin: f16)
//   q8_0   32     34     d, int8 q[32]                          w = d·q
//   q4_0   32     18     d, nibbles[16]                         w = d·(q − 8)
//   q4_1   32     20     d, m, nibbles[16]                      w = d·q + m
//   q5_0   32     22     d, qh[4], nibbles[16]                  w = d·(q − 16), q = nib | bit<<4
//   q5_1   32     24     d, m, qh[4], nibbles[16]               w = d·q + m
//   q4_k   256    144    d, dmin, scales[12], nibbles[128]      8 sub-blocks of 32, 6-bit sc/mn
//   q5_k   256    176    d, dmin, scales[12], qh[32], nib[128]  as q4_k with a fifth bit
//   q6_k   256    210    ql[128], qh[64], int8 scales[16], d    16 sub-blocks of 16, q − 32
//
// (In the 32-element formats, byte i of the nibbles holds element i in its low nibble and
// element i + 16 in its high one.) The per-element decoding shared by the CPU and CUDA kernels
// lives in kernels/common/ggml_quant_math.hpp.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.hpp"
#include "runtime/core/host_device.hpp"

namespace ferry {

// Elements per block (32 or 256); 0 for a dtype that is not a ggml block format.
FERRY_HD constexpr int64_t ggml_block_elems(DType t) {
  switch (t) {
    case DType::q8_0:
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1:
      return 32;
    case DType::q4_k:
    case DType::q5_k:
    case DType::q6_k:
      return 256;
    default:
      return 0;
  }
}

// Bytes per block; 0 for a dtype that is not a ggml block format.
FERRY_HD constexpr uint64_t ggml_block_bytes(DType t) {
  switch (t) {
    case DType::q8_0:
      return 34;
    case DType::q4_0:
      return 18;
    case DType::q4_1:
      return 20;
    case DType::q5_0:
      return 22;
    case DType::q5_1:
      return 24;
    case DType::q4_k:
      return 144;
    case DType::q5_k:
      return 176;
    case DType::q6_k:
      return 210;
    default:
      return 0;
  }
}

// True when a row of cols elements is a whole number of t's blocks.
FERRY_HD constexpr bool ggml_row_fits(DType t, int64_t cols) {
  return ggml_block_elems(t) > 0 && cols > 0 && cols % ggml_block_elems(t) == 0;
}

// Bytes of one row of cols elements (cols a multiple of the block's elements).
FERRY_HD constexpr uint64_t ggml_row_bytes(DType t, int64_t cols) {
  return static_cast<uint64_t>(cols / ggml_block_elems(t)) * ggml_block_bytes(t);
}

}  // namespace ferry
