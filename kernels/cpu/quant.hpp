// Quantization of weight rows into the packed layouts of runtime/core/quant.hpp (what
// `ferry convert` writes). Pure computation on caller-owned memory, like every CPU kernel.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.hpp"

namespace ferry::kernels::cpu {

// Packs cols f32 values into one row of dtype (q8, q4_g64 or q4_g128, or a ggml block dtype:
// quantize_ggml_row), packed_row_bytes(dtype, cols) bytes at dst. Deterministic (IEEE f32 with round-half-even), so a conversion gives the
// same bytes on every machine.
//   q8: scale = max|w| / 127, q = round(w / scale).
//   q4: per group, min and scale = (max − min) / 15 are rounded to f16 first, then
//       q = clamp(round((w − min) / scale), 0, 15), so the codes fit the stored numbers.
// Throws InvalidArgument when a value is NaN or infinite, or a q4 group's minimum or step does
// not fit in f16 (|w| beyond 65504); `what` names the tensor in the message.
void quantize_row(const float* src, int64_t cols, DType dtype, void* dst, const char* what);

// Packs cols f32 values (a multiple of the block's elements) into ggml_row_bytes(dtype, cols)
// bytes of llama.cpp's block format dtype (q8_0 … q6_k; kernels/cpu/ggml_quantize.cpp says how it
// fits them: directly, not llama-quantize's iterative search, so the bytes differ from
// llama.cpp's but decode with its dequantizer). Deterministic. Throws InvalidArgument when cols is
// not a whole number of blocks or a value is not finite or beyond f16's range.
void quantize_ggml_row(const float* src, int64_t cols, DType dtype, void* dst, const char* what);

}  // namespace ferry::kernels::cpu
