// gemm_avx2.cpp's product (see there) compiled with AVX-512 F/BW/VL, which ops.cpp picks where
// the processor has it (FERRY_SIMD=avx2 keeps AVX2). AVX-512 VL gives 256-bit instructions 32
// registers, so the few-row tile grows from 3 × 4 to 6 × 4 accumulators; and the packed panels
// (prompts) run 16-lane FMAs, which Zen 5 and Intel's server cores execute whole: on this
// project's 2-vCPU Zen 5 VM bench_kernels' FMA peak is 456 GFLOP/s with 16 lanes against 212
// with 8 (on Zen 4 a 16-lane FMA costs two 8-lane ones, and the two peaks are equal).
//
// Every output keeps its 8-lane accumulator all the same: a 16-lane register carries two of them
// (two weight rows against x's 8 columns broadcast to both halves), so each lane's FMAs are the
// 8-lane kernel's and a row of x gets the bits the decode's mat-vec gives it, on AVX2 machines
// too. 16 lanes of one output would sum in another order than the decode (and than AVX2).
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

// Panels: 6 rows of x × 8 weight rows, two outputs to a 16-lane register — 24 accumulators, 6 x
// vectors and one weight vector: 31 of the 32 registers, 10 loads per 24 FMAs of 16 lanes.
constexpr int kMr = 6;
constexpr int kNr = 8;
// The few-row product from the stored weights (8-lane): 6 × 4 accumulators, 6 x vectors and one
// weight vector.
constexpr int kDirectMr = 6;
constexpr int kDirectNr = 4;
#define FERRY_GEMM_512 1

#include "kernels/cpu/detail/gemm_body.inc"
#undef FERRY_GEMM_512

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
