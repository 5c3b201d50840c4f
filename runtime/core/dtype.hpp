// Element types ferry stores and computes with, and their names in checkpoint formats.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "runtime/core/host_device.hpp"

namespace ferry {

// q8, q4_g64 and q4_g128 are ferry's packed weight matrices (ferry packs); q8_0 … q6_k are
// llama.cpp's block formats (GGUF files, and packs converted from them, keeping their blocks).
// Both kinds count their bytes per row, not per element: see runtime/core/quant.hpp for ferry's
// layouts and runtime/core/ggml_quant.hpp for the block formats.
enum class DType : uint8_t {
  f32,
  f16,
  bf16,
  i8,
  u8,
  i32,
  i64,
  boolean,
  q8,
  q4_g64,
  q4_g128,
  q8_0,
  q4_0,
  q4_1,
  q5_0,
  q5_1,
  q4_k,
  q5_k,
  q6_k,
};

// Bytes per element; 0 for the packed dtypes, whose size is per row (quant.hpp). Callable in
// CUDA kernels (packed_row_bytes).
FERRY_HD constexpr std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f16:
      return 2;
    case DType::bf16:
      return 2;
    case DType::i8:
      return 1;
    case DType::u8:
      return 1;
    case DType::i32:
      return 4;
    case DType::i64:
      return 8;
    case DType::boolean:
      return 1;
    case DType::q8:
    case DType::q4_g64:
    case DType::q4_g128:
    case DType::q8_0:
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1:
    case DType::q4_k:
    case DType::q5_k:
    case DType::q6_k:
      return 0;
  }
  return 0;
}

// Short lower-case name ("f32", "f16", "bf16", ...), as printed and accepted on the command line.
std::string_view dtype_name(DType t);

// Parses ferry's own names ("f32", "f16", "bf16", also "float32", "float16", "bfloat16").
std::optional<DType> parse_dtype(std::string_view name);

// Parses a safetensors dtype tag ("F32", "F16", "BF16", "I8", "U8", "I32", "I64", "BOOL").
std::optional<DType> dtype_from_safetensors(std::string_view tag);
std::string_view dtype_to_safetensors(DType t);

// True for the dtypes the weight kernels read (f32, f16, bf16).
constexpr bool is_float_weight(DType t) {
  return t == DType::f32 || t == DType::f16 || t == DType::bf16;
}

// True for ferry's own packed (quantized) weight dtypes: q8, q4_g64, q4_g128.
FERRY_HD constexpr bool is_quantized(DType t) {
  return t == DType::q8 || t == DType::q4_g64 || t == DType::q4_g128;
}

// True for llama.cpp's block-quantized dtypes (q8_0 … q6_k).
FERRY_HD constexpr bool is_ggml_block(DType t) {
  return t == DType::q8_0 || t == DType::q4_0 || t == DType::q4_1 || t == DType::q5_0 ||
         t == DType::q5_1 || t == DType::q4_k || t == DType::q5_k || t == DType::q6_k;
}

// True for every dtype whose bytes are counted per row (packed_row_bytes): both kinds above.
FERRY_HD constexpr bool is_row_packed(DType t) { return is_quantized(t) || is_ggml_block(t); }

// True for every dtype a weight matrix may have: the float ones and the packed ones.
constexpr bool is_matrix_weight(DType t) { return is_float_weight(t) || is_row_packed(t); }

}  // namespace ferry
