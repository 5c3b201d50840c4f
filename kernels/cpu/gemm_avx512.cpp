// gemm_avx2.cpp's product (see there) compiled with AVX-512 F/BW/VL, which ops.cpp picks where
// the processor has it (FERRY_SIMD=avx2 keeps AVX2). What it gains is registers: AVX-512 VL gives
// 256-bit instructions 32 of them, so the register tile grows from 3 × 4 to 6 × 4 accumulators —
// 10 loads per 24 FMAs instead of 7 per 12.
//
// The vectors stay 8 lanes wide on purpose: 16-lane accumulators would sum each output in another
// order than the decode's mat-vec (and than AVX2 machines), and on Zen 4 a 512-bit FMA costs two
// 256-bit ones, so wider vectors would not raise the FMA peak there. Both files give every row
// of x the bits the decode gives it.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <cmath>
#include <cstring>
#include <utility>

#include "kernels/cpu/detail/avx2_simd.hpp"
#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx512 {
namespace {

using avx2::BF16Weights;
using avx2::F16Weights;
using avx2::F32Weights;
using avx2::hsum4;
using avx2::kLinearTileCols;
using avx2::min_i64;

// 6 × 4 accumulators, 6 x vectors and one weight vector: 31 of the 32 registers.
constexpr int kMr = 6;
constexpr int kNr = 4;

#include "kernels/cpu/detail/gemm_body.inc"

}  // namespace

void gemm_float(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  gemm_float_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
}

void linear_float_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                       const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  // Decoding (one row) is memory bound: the AVX2 mat-vec already runs at the memory's rate.
  if (m == 1) {
    avx2::linear_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
  } else {
    gemm_float_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
  }
}

}  // namespace ferry::kernels::cpu::detail::avx512
