// The default products on llama.cpp's block formats (FERRY_GGUF_PRODUCTS=fast or unset),
// llama.cpp's way: the activation row is rounded once per call to 8-bit blocks (q8_K for the K
// formats, q8_0 for q8_0 and q4_0 weights, exactly as ggml's quantize_row_q8_K_ref /
// quantize_row_q8_0_ref), and each weight row is dotted with it in integer arithmetic per
// (sub-)block, scaled as ggml's ggml_vec_dot_q4_K_q8_K / q5_K_q8_K / q6_K_q8_K / q8_0_q8_0 /
// q4_0_q8_0 / q5_0_q8_0 scale. The result is not the exact product of
// kernels/cpu/ggml_linear_*.cpp: it carries the activation's rounding error, bounded by Σ|w|·|x −
// x̂| (docs/ggml-formats.md). They are nevertheless the default: a GGUF file gives llama.cpp's own
// logits (what its users compare against, and within the bound of twice llama.cpp's
// distance from the exact answer) at llama.cpp's speed, and a row's result never depends on the
// rows beside it. FERRY_GGUF_PRODUCTS=exact keeps the exact path (every product in f32) for
// reference work.
//
// The quantizers and the threading live in ggml_dot.cpp; the row dots in ggml_dot_avx2.cpp
// (AVX2) and ggml_dot_avx512.cpp (AVX512-VNNI, picked at run time where the processor has it),
// called only after the run-time checks (see detail/paths.hpp). This header
// declares plain structs and functions only, no inline code.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.hpp"
#include "runtime/core/thread_pool.hpp"

namespace ferry::kernels::cpu::ggml_dot {

// ggml's block_q8_K: 256 activations, x ≈ d·qs, with bsums[j] = Σ qs[16j … 16j + 15].
struct Q8K {
  float d;
  int8_t qs[256];
  int16_t bsums[16];
};

// ggml's block_q8_0 for 32 activations, with d kept as the f32 value of its f16, and
// neg8_sum4[j] = −8·(qs[4j] + … + qs[4j + 3]): lane j's share of a q4_0 block's offset of 8
// (Σ (q − 8)·x = Σ q·x − 8·Σ x, four codes to a lane), so the q4_0 and q5_0 dots multiply the
// unsigned codes as they are stored; sum = qs[0] + … + qs[31] (q4_0's offset, −8·sum, for a whole
// block).
struct Q80 {
  float d;
  int8_t qs[32];
  int32_t neg8_sum4[8];
  int32_t sum;
};

// Rows of activations the row dots take at once (rows_k, rows_32).
inline constexpr int kDotRows = 4;

// ggml's quantize_row_q8_K_ref / quantize_row_q8_0_ref over k activations (k a multiple of 256 /
// 32): out receives k / 256 (k / 32) blocks.
void quantize_q8_k(const float* x, int64_t k, Q8K* out);
void quantize_q8_0(const float* x, int64_t k, Q80* out);

// True for the weight formats the fast path multiplies (q4_k, q5_k, q6_k, q8_0, q4_0, q5_0).
bool supports(DType wdt);

// FERRY_GGUF_PRODUCTS: true when unset or "fast", false for "exact"; anything else is an error.
bool requested();

// y = x · wᵀ + bias with w in a format supports() accepts, through the AVX2 (or VNNI) panels and
// row dots; the caller has checked the processor, the dtype and the shapes (ops.cpp's linear).
void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y, ThreadPool& pool);

// q4_0 and q8_0 products take weight rows kPanelRows at a time, one row to a vector lane, and sum
// each block in integers before it is scaled (llama.cpp's repacked q4_0 arithmetic):
//   y = bias + Σ_b (d_w,b · d_x,b) · I_b, summed in f32 in block order (one FMA per block, from 0),
//   I_b = Σ_j w_j · q_j exactly (q4_0: w = nibble − 8; q8_0: w the stored byte).
// The order is the same for every row whatever its neighbours, the thread count or the number of
// activation rows, so decoding and prompts give a row the same bits; AVX2 and VNNI agree bit for
// bit (tests/kernels/cpu/test_ggml_quant.cpp holds them to a scalar transcription).
inline constexpr int kPanelRows = 16;
// Bytes of scratch panel_32 needs for nb blocks of type t (q4_0 or q8_0) when m > kDotRows (the 16
// rows' blocks re-laid out once, then read for every group of activation rows): 16 f32 scales
// and 16 rows' words.
inline constexpr int64_t panel_scratch_bytes(DType t, int64_t nb) {
  return nb * (t == DType::q4_0 ? 64 + 16 * 16 : t == DType::q8_0 ? 64 + 16 * 32 : 5248);
}

// q4_k and q5_k take the same panels of kPanelRows rows (their sub-blocks' codes unpacked to
// bytes, q5_k's fifth bit included, the 6-bit scales and minimums widened per lane), each row's
// block summed whole in integers:
//   y = bias + Σ_b [(d·d_x)·S_b − (dmin·d_x)·M_b], two FMAs per block in block order from 0,
//   S_b = Σ_j sc_j · Σ_e code_j,e · q_32j+e,   M_b = Σ_j mn_j · (bsums_2j + bsums_2j+1)
// (exact int32; S_b and M_b rounded to f32 once). panel_scratch_bytes(t, nb) covers their
// scratch.

namespace avx2 {
// Σ over nb blocks of one weight row · the quantized activations (ggml_dot_avx2.cpp).
float dot_q6_k(const unsigned char* row, const Q8K* x, int64_t nb);
float dot_q5_0(const unsigned char* row, const Q80* x, int64_t nb);
// One weight row of type t with rows = 1 … kDotRows rows of activations (nb blocks apart): out[r]
// is bit for bit the dot above of row r, each weight block unpacked once for all rows.
// rows_k takes q6_k, rows_32 q5_0 (q4_k, q5_k, q4_0 and q8_0 take the panels).
void rows_k(DType t, const unsigned char* row, const Q8K* x, int64_t nb, int rows, float* out);
void rows_32(DType t, const unsigned char* row, const Q80* x, int64_t nb, int rows, float* out);
// kPanelRows weight rows of type t, q4_0 or q8_0 (w, w + row_bytes, …), times m rows of
// activations (nb blocks apart, q8_0-rounded): out[r · kPanelRows + o] = Σ_b (d_w · d_x) · I_b as
// above, without a bias. scratch: panel_scratch_bytes(t, nb) bytes when m > kDotRows, else unused
// (may be null).
void panel_32(DType t, const unsigned char* w, uint64_t row_bytes, const Q80* x, int64_t nb,
              int64_t m, float* out, unsigned char* scratch);
// kPanelRows q4_k or q5_k rows times m rows of q8_K activations, as panel_32 (the order above).
void panel_k(DType t, const unsigned char* w, uint64_t row_bytes, const Q8K* x, int64_t nb,
             int64_t m, float* out, unsigned char* scratch);
}  // namespace avx2

namespace vnni {
// The same with AVX512-VNNI (ggml_dot_avx512.cpp), equal results; only where the processor has
// AVX512-VL and -VNNI and the build has the AVX-512 files.
float dot_q6_k(const unsigned char* row, const Q8K* x, int64_t nb);
float dot_q5_0(const unsigned char* row, const Q80* x, int64_t nb);
// One weight row of type t with rows = 1 … kDotRows rows of activations (nb blocks apart): out[r]
// is bit for bit the dot above of row r, each weight block unpacked once for all rows.
void rows_k(DType t, const unsigned char* row, const Q8K* x, int64_t nb, int rows, float* out);
void rows_32(DType t, const unsigned char* row, const Q80* x, int64_t nb, int rows, float* out);
// Two q5_0 weight rows, row and row + row_bytes, on one 512-bit register each step (prompts: half
// the activation loads and float work of rows_32 twice): out0[r] and out1[r] are bit for bit
// rows_32's for each.
void rows_32_pair(DType t, const unsigned char* row, uint64_t row_bytes, const Q80* x, int64_t nb,
                  int rows, float* out0, float* out1);
void panel_32(DType t, const unsigned char* w, uint64_t row_bytes, const Q80* x, int64_t nb,
              int64_t m, float* out, unsigned char* scratch);
void panel_k(DType t, const unsigned char* w, uint64_t row_bytes, const Q8K* x, int64_t nb,
             int64_t m, float* out, unsigned char* scratch);
}  // namespace vnni

// True when linear uses the vnni dots: the processor has AVX512-VL and -VNNI, the build has the
// AVX-512 files and FERRY_SIMD does not ask for avx2.
bool uses_vnni();

}  // namespace ferry::kernels::cpu::ggml_dot
