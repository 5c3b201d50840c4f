// linear (y = x · wᵀ + bias) for m ≥ 2 rows of x and f32, f16 or bf16 weights, with AVX2 + FMA +
// F16C: batched decoding (a few rows), draft verification and prompts (many rows).
//
// A product of many rows is compute bound, so each weight must be loaded into a register once
// and meet many rows of x there, and each x value many weight rows. Weights are packed a panel at
// a time (64 rows × 512 columns, widened to f32: 128 KiB, in L2) into the order the register tile
// reads them, and every group of kMr rows of x meets the panel's groups of kNr weight rows in a
// kMr × kNr tile of 8-lane accumulators: per 8 columns kMr + kNr loads feed kMr·kNr FMAs. x is
// read in place: a tile's rows (kMr × 2 KiB) stay in L1 while they meet the whole panel.
//
// The accumulators run along k, not along the outputs (which a broadcast-x GEMM would use), so
// that every output is summed exactly as the decode's mat-vec sums it (linear_avx2.cpp's
// matvec_rows): a row of x gets the same bits alone, in a batch or in a prompt, which continuous
// batching and speculative decoding rely on. The cost is a horizontal sum per output per
// 256-column block (about 1/16 of the block's FMAs), and loads that must come from two streams.
//
// Up to 16 rows of x (batched decoding, drafts) the product is memory bound: the weights are not
// packed (writing and reading back a panel costs more than the few FMAs it would serve) but read
// where they are stored, 4 rows at a time as the decode's mat-vec reads them, converted in a
// register and used there by every row of a tile of x (gemm_direct).
//
// gemm_avx512.cpp compiles the same body with 32 registers (AVX-512 VL) for a bigger tile.
#include <cmath>
#include <cstring>
#include <utility>

#include "kernels/cpu/detail/avx2_simd.hpp"
#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx2 {
namespace {

// 3 × 4 accumulators, 3 x vectors and one weight vector fill the 16 ymm registers.
constexpr int kMr = 3;
constexpr int kNr = 4;
// The few-row product from the stored weights takes the same tile.
constexpr int kDirectMr = kMr;
constexpr int kDirectNr = kNr;

#include "kernels/cpu/detail/gemm_body.inc"

}  // namespace

void gemm_float(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  gemm_float_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
}

void linear_float_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                       const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  // Decoding (one row) is memory bound: linear_avx2.cpp's mat-vec streams the weights as stored.
  if (m == 1) {
    linear_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
  } else {
    gemm_float_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
  }
}

}  // namespace ferry::kernels::cpu::detail::avx2
