// The two fast implementations behind the dispatched kernels of kernels/cpu/ops.hpp: a portable
// one and an AVX2 + FMA + F16C one. Each works on a slice of the output so that ops.cpp owns the
// threading (the same split for both, hence the same results whichever thread runs a slice).
//
// The AVX2 functions live in files compiled with -mavx2 -mfma -mf16c. They must be called only
// after the run-time CPU check, and those files instantiate no inline function or template that
// other files also use (a weak symbol built with AVX2 could be the copy the linker keeps for
// everyone), which is why the threading stays out of them.
#pragma once

#include <cstdint>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/dtype.hpp"

namespace ferry::kernels::cpu::detail {

// linear splits the n outputs into groups of this many weight rows; one thread computes a whole
// group (16 f32 rows of a 256-wide k block make the 16 KiB tile the prompt path keeps in L1).
inline constexpr int64_t kLinearRowGroup = 16;
// Keys per block of attention's online softmax (the scores of one block sit on the stack).
inline constexpr int64_t kAttentionKeyBlock = 64;

namespace portable {
// y[:, o_begin:o_end] of linear (see ops.hpp).
void linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                 const float* bias, float* y, int64_t o_begin, int64_t o_end);
// Attention for the (token, head) pairs p in [p_begin, p_end), token = p / n_head. The cache is
// always paged here (args.block_table set): ops.cpp gives a contiguous one a one-block table.
void attention_pairs(const AttentionArgs& args, int64_t p_begin, int64_t p_end);
void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y);
void add(float* y, const float* x, int64_t n);
void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst);
}  // namespace portable

namespace avx2 {
// Columns of a row of the f32 tile the prompt path multiplies (the tile is kLinearRowGroup rows of
// this many floats, 32-byte aligned).
inline constexpr int64_t kLinearTileCols = 256;
// Puts weight rows g … g + rows − 1, columns kb … kb + kc − 1 (kb a multiple of kLinearTileCols)
// as f32 into tile, rows kLinearTileCols apart; ctx is the caller's.
using TileFill = void (*)(const void* ctx, int64_t g, int64_t rows, int64_t kb, int64_t kc,
                          float* tile);
// y[:, o_begin:o_end] of linear for m > 1 on any weight storage fill can widen: the register-tiled
// f32 product of linear_avx2.cpp over tiles of kLinearRowGroup × kLinearTileCols.
void gemm_filled(const float* x, int64_t m, int64_t k, int64_t n, const float* bias, float* y,
                 int64_t o_begin, int64_t o_end, TileFill fill, const void* ctx);
// linear_rows for llama.cpp's block formats (ggml_linear_avx2.cpp).
void ggml_linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                      const float* bias, float* y, int64_t o_begin, int64_t o_end);
// linear_rows for m ≥ 2 and f32, f16 or bf16 weights: the packed-panel product of
// gemm_avx2.cpp, summing every output as the decode's mat-vec does.
void gemm_float(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                const float* bias, float* y, int64_t o_begin, int64_t o_end);
// linear_rows for f32, f16 and bf16 weights: the mat-vec for m = 1, gemm_float otherwise.
void linear_float_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                       const float* bias, float* y, int64_t o_begin, int64_t o_end);
// linear_rows for ferry's packed weights, q8 / q4_g64 / q4_g128 (packed_avx2.cpp): the AVX-512
// kernels where packed_isa() picks them, else packed_avx2_rows.
void packed_linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                        const float* bias, float* y, int64_t o_begin, int64_t o_end);
// The AVX2 packed kernels alone (for the tests).
void packed_avx2_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                      const float* bias, float* y, int64_t o_begin, int64_t o_end);
void linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                 const float* bias, float* y, int64_t o_begin, int64_t o_end);
void attention_pairs(const AttentionArgs& args, int64_t p_begin, int64_t p_end);
void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y);
void add(float* y, const float* x, int64_t n);
void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst);
}  // namespace avx2

// linear_rows for llama.cpp's block formats with AVX-512 F/BW/VL (ggml_linear_avx512.cpp) and
// for float weights (gemm_avx512.cpp), which ops.cpp picks over the AVX2 ones where the processor
// has it; packed dtypes go to avx2::linear_rows.
namespace avx512 {
// linear_rows for ferry's packed weights (packed_avx512.cpp; packed_vnni_avx512.cpp with
// AVX512-VNNI, the same bits).
void packed_linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                        const float* bias, float* y, int64_t o_begin, int64_t o_end);
void packed_linear_rows_vnni(const float* x, int64_t m, int64_t k, const void* w, DType wdt,
                             int64_t n, const float* bias, float* y, int64_t o_begin, int64_t o_end);
void ggml_linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                      const float* bias, float* y, int64_t o_begin, int64_t o_end);
// avx2::gemm_float with a bigger register tile (gemm_avx512.cpp), the same bits.
void gemm_float(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                const float* bias, float* y, int64_t o_begin, int64_t o_end);
// linear_rows for f32, f16 and bf16 weights: the AVX2 mat-vec for m = 1, gemm_float otherwise.
void linear_float_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                       const float* bias, float* y, int64_t o_begin, int64_t o_end);
}  // namespace avx512

// Which packed-weight kernels avx2::packed_linear_rows runs (kernels/cpu/packed.cpp): AVX-512
// where the processor has F/BW/VL (with VNNI or without) and FERRY_SIMD is not "avx2". Chosen once.
enum class PackedIsa { avx2, avx512, avx512_vnni };
PackedIsa packed_isa();

}  // namespace ferry::kernels::cpu::detail
