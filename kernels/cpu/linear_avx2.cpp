// linear (y = x · wᵀ + bias) with AVX2 + FMA + F16C.
//
// Decode (m = 1) is a matrix–vector product bound by memory bandwidth: each weight is read once
// and used once, so the kernel streams four weight rows at a time in their stored type (f16 via
// VCVTPH2PS, bf16 by a 16-bit shift, f32 as is), with two 8-wide FMA accumulators per row to hide
// FMA latency; x (64 KiB at GPT-J's widest k) stays in L2 and is loaded once per four rows.
//
// Prompt processing (m > 1) is compute bound, so weights must be reused from cache: a group of 16
// weight rows × 256 columns is converted once to f32 in a 16 KiB stack tile (L1-resident), then
// every block of 3 rows of x is multiplied against it 4 rows at a time — 12 accumulators plus 3 x
// vectors fill the 16 ymm registers, and each loaded value feeds 3 or 4 FMAs. Partial sums per
// 256-column block are added to y in a fixed order.
//
// Every output is a dot product in f32; each row's summation order depends only on k (never on
// which slot of a tile it lands in, nor on the thread), so results are reproducible.
#include "kernels/cpu/detail/avx2_simd.hpp"
#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx2 {
namespace {

constexpr int64_t kKBlock = 256;
constexpr int kRowTile = 4;  // weight rows per register tile
constexpr int kXTile = 3;    // rows of x per register tile (prompt path)

// sums[r] = x · w[r, :] over k columns for NR ≤ 4 rows (sums has 4 slots).
template <class W, int NR>
void matvec_rows(const float* x, int64_t k, const typename W::Elem* w, int64_t ldw, float* sums) {
  __m256 acc0[kRowTile];
  __m256 acc1[kRowTile];
  for (int r = 0; r < kRowTile; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= k; j += 16) {
    const __m256 x0 = _mm256_loadu_ps(x + j);
    const __m256 x1 = _mm256_loadu_ps(x + j + 8);
    for (int r = 0; r < NR; ++r) {
      acc0[r] = _mm256_fmadd_ps(x0, W::load8(w + r * ldw + j), acc0[r]);
      acc1[r] = _mm256_fmadd_ps(x1, W::load8(w + r * ldw + j + 8), acc1[r]);
    }
  }
  if (j + 8 <= k) {
    const __m256 x0 = _mm256_loadu_ps(x + j);
    for (int r = 0; r < NR; ++r) acc0[r] = _mm256_fmadd_ps(x0, W::load8(w + r * ldw + j), acc0[r]);
    j += 8;
  }
  for (int r = 0; r < kRowTile; ++r) acc0[r] = _mm256_add_ps(acc0[r], acc1[r]);
  _mm_storeu_ps(sums, hsum4(acc0[0], acc0[1], acc0[2], acc0[3]));
  for (; j < k; ++j) {
    for (int r = 0; r < NR; ++r) sums[r] += x[j] * W::load1(w + r * ldw + j);
  }
}

template <class W>
void matvec(const float* x, int64_t k, const typename W::Elem* w, const float* bias, float* y,
            int64_t o_begin, int64_t o_end) {
  alignas(16) float sums[kRowTile];
  for (int64_t o = o_begin; o < o_end; o += kRowTile) {
    const int64_t nr = min_i64(kRowTile, o_end - o);
    const typename W::Elem* wo = w + o * k;
    switch (nr) {
      case 4:
        matvec_rows<W, 4>(x, k, wo, k, sums);
        break;
      case 3:
        matvec_rows<W, 3>(x, k, wo, k, sums);
        break;
      case 2:
        matvec_rows<W, 2>(x, k, wo, k, sums);
        break;
      default:
        matvec_rows<W, 1>(x, k, wo, k, sums);
        break;
    }
    for (int64_t r = 0; r < nr; ++r) y[o + r] = bias != nullptr ? sums[r] + bias[o + r] : sums[r];
  }
}

// y[i, r] += x[i, :] · w[r, :] over kc columns, for MR rows of x and NR rows of f32 weights.
template <int MR, int NR>
void gemm_tile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kc, float* y,
               int64_t ldy) {
  __m256 acc[MR][kRowTile];
  for (int i = 0; i < MR; ++i) {
    for (int r = 0; r < kRowTile; ++r) acc[i][r] = _mm256_setzero_ps();
  }
  int64_t j = 0;
  for (; j + 8 <= kc; j += 8) {
    __m256 xv[MR];
    for (int i = 0; i < MR; ++i) xv[i] = _mm256_loadu_ps(x + i * ldx + j);
    for (int r = 0; r < NR; ++r) {
      const __m256 wv = _mm256_loadu_ps(w + r * ldw + j);
      for (int i = 0; i < MR; ++i) acc[i][r] = _mm256_fmadd_ps(xv[i], wv, acc[i][r]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    alignas(16) float sums[kRowTile];
    _mm_storeu_ps(sums, hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]));
    for (int64_t t = j; t < kc; ++t) {
      for (int r = 0; r < NR; ++r) sums[r] += x[i * ldx + t] * w[r * ldw + t];
    }
    for (int r = 0; r < NR; ++r) y[i * ldy + r] += sums[r];
  }
}

template <int MR>
void gemm_tile_rows(int nr, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kc,
                    float* y, int64_t ldy) {
  switch (nr) {
    case 4:
      gemm_tile<MR, 4>(x, ldx, w, ldw, kc, y, ldy);
      break;
    case 3:
      gemm_tile<MR, 3>(x, ldx, w, ldw, kc, y, ldy);
      break;
    case 2:
      gemm_tile<MR, 2>(x, ldx, w, ldw, kc, y, ldy);
      break;
    default:
      gemm_tile<MR, 1>(x, ldx, w, ldw, kc, y, ldy);
      break;
  }
}

void gemm_tile_any(int mr, int nr, const float* x, int64_t ldx, const float* w, int64_t ldw,
                   int64_t kc, float* y, int64_t ldy) {
  switch (mr) {
    case 3:
      gemm_tile_rows<3>(nr, x, ldx, w, ldw, kc, y, ldy);
      break;
    case 2:
      gemm_tile_rows<2>(nr, x, ldx, w, ldw, kc, y, ldy);
      break;
    default:
      gemm_tile_rows<1>(nr, x, ldx, w, ldw, kc, y, ldy);
      break;
  }
}

// dst[r, 0:kc] = f32(src[r, 0:kc]) for rows r < rows; src rows are ld_src apart, dst rows kKBlock.
template <class W>
void widen_tile(const typename W::Elem* src, int64_t ld_src, int64_t rows, int64_t kc, float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const typename W::Elem* s = src + r * ld_src;
    float* d = dst + r * kKBlock;
    int64_t j = 0;
    for (; j + 8 <= kc; j += 8) _mm256_store_ps(d + j, W::load8(s + j));
    for (; j < kc; ++j) d[j] = W::load1(s + j);
  }
}

template <class W>
void gemm(const float* x, int64_t m, int64_t k, const typename W::Elem* w, int64_t n,
          const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  alignas(32) float tile[kLinearRowGroup * kKBlock];
  for (int64_t g = o_begin; g < o_end; g += kLinearRowGroup) {
    const int64_t rows = min_i64(kLinearRowGroup, o_end - g);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < rows; ++r) y[i * n + g + r] = 0.0f;
    }
    for (int64_t kb = 0; kb < k; kb += kKBlock) {
      const int64_t kc = min_i64(kKBlock, k - kb);
      // f32 weights are copied too: in place, rows k floats apart alias the same L1 sets
      // whenever k is a multiple of 1024, and the copy is amortised over all m rows of x.
      widen_tile<W>(w + g * k + kb, k, rows, kc, tile);
      for (int64_t i = 0; i < m; i += kXTile) {
        const int mr = static_cast<int>(min_i64(kXTile, m - i));
        for (int64_t r = 0; r < rows; r += kRowTile) {
          const int nr = static_cast<int>(min_i64(kRowTile, rows - r));
          gemm_tile_any(mr, nr, x + i * k + kb, k, tile + r * kKBlock, kKBlock, kc,
                        y + i * n + g + r, n);
        }
      }
    }
    if (bias != nullptr) {
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < rows; ++r) y[i * n + g + r] += bias[g + r];
      }
    }
  }
}

template <class W>
void linear_typed(const float* x, int64_t m, int64_t k, const void* w, int64_t n, const float* bias,
                  float* y, int64_t o_begin, int64_t o_end) {
  const auto* wt = static_cast<const typename W::Elem*>(w);
  if (m == 1) {
    matvec<W>(x, k, wt, bias, y, o_begin, o_end);
  } else {
    gemm<W>(x, m, k, wt, n, bias, y, o_begin, o_end);
  }
}

}  // namespace

void linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                 const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  switch (wdt) {
    case DType::f16:
      linear_typed<F16Weights>(x, m, k, w, n, bias, y, o_begin, o_end);
      break;
    case DType::bf16:
      linear_typed<BF16Weights>(x, m, k, w, n, bias, y, o_begin, o_end);
      break;
    default:
      linear_typed<F32Weights>(x, m, k, w, n, bias, y, o_begin, o_end);
      break;
  }
}

}  // namespace ferry::kernels::cpu::detail::avx2
