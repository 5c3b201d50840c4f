// linear (y = x · wᵀ + bias) with AVX2 + FMA + F16C.
//
// Decode (m = 1) is a matrix–vector product bound by memory bandwidth: each weight is read once
// and used once, so the kernel streams four weight rows at a time in their stored type (f16 via
// VCVTPH2PS, bf16 by a 16-bit shift, f32 as is), with two 8-wide FMA accumulators per row to hide
// FMA latency; x (64 KiB at GPT-J's widest k) stays in L2 and is loaded once per four rows.
//
// Float weights with m > 1 (batches, drafts, prompts) go to gemm_avx2.cpp, which sums every output
// as matvec_rows does. gemm_filled below is the tiled product llama.cpp's block formats use for
// prompts in exact mode: a group of 16 weight rows × 256 columns converted once to f32 in a 16 KiB
// stack tile (L1-resident), then every block of 3 rows of x multiplied against it 4 rows at a time,
// partial sums per 256-column block added to y in a fixed order.
//
// Packed weights (q8, q4_g64, q4_g128; runtime/core/quant.hpp) go to packed_avx2.cpp, llama.cpp's
// block formats (q8_0 … q6_k) to ggml_linear_avx2.cpp.
//
// Every output is a dot product in f32; each row's summation order depends only on k (never on
// which slot of a tile it lands in, nor on the thread), so results are reproducible.
#include <cmath>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/detail/avx2_simd.hpp"
#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx2 {
namespace {

constexpr int64_t kKBlock = kLinearTileCols;
constexpr int kRowTile = 4;  // weight rows per register tile
constexpr int kXTile = 3;    // rows of x per register tile (prompt path)

// sums[r] = x · w[r, :] over k columns for NR ≤ 4 rows (sums has 4 slots). Summed exactly as
// the prompt path (gemm_tiled) sums each of its outputs — per block of kKBlock columns one 8-wide
// accumulator, its horizontal sum, the block's leftover columns, then the blocks in order — so a
// row of x gets the same bits whether it is decoded alone or beside other rows (batched decoding,
// verifying drafts, a prompt): the batch never changes a sequence's tokens. Four rows give four
// independent FMA chains, more than a memory-bound product needs.
template <class W, int NR>
void matvec_rows(const float* x, int64_t k, const typename W::Elem* w, int64_t ldw, float* sums) {
  float total[kRowTile] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t kb = 0; kb < k; kb += kKBlock) {
    const int64_t kc = min_i64(kKBlock, k - kb);
    __m256 acc[kRowTile];
    for (int r = 0; r < kRowTile; ++r) acc[r] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= kc; j += 8) {
      const __m256 xv = _mm256_loadu_ps(x + kb + j);
      for (int r = 0; r < NR; ++r)
        acc[r] = _mm256_fmadd_ps(xv, W::load8(w + r * ldw + kb + j), acc[r]);
    }
    alignas(16) float block[kRowTile];
    _mm_storeu_ps(block, hsum4(acc[0], acc[1], acc[2], acc[3]));
    for (int64_t t = j; t < kc; ++t) {
      for (int r = 0; r < NR; ++r)
        block[r] = std::fma(x[kb + t], W::load1(w + r * ldw + kb + t), block[r]);
    }
    for (int r = 0; r < NR; ++r) total[r] += block[r];
  }
  for (int r = 0; r < kRowTile; ++r) sums[r] = total[r];
}

// The decode loop over tiles of up to kRowTile weight rows: rows(o, NR, sums) puts the dot
// products of rows o … o + NR − 1 in sums, NR a compile-time constant (std::integral_constant).
template <class Rows>
void matvec_tiles(const float* bias, float* y, int64_t o_begin, int64_t o_end, Rows rows) {
  alignas(16) float sums[kRowTile];
  for (int64_t o = o_begin; o < o_end; o += kRowTile) {
    const int64_t nr = min_i64(kRowTile, o_end - o);
    switch (nr) {
      case 4:
        rows(o, std::integral_constant<int, 4>{}, sums);
        break;
      case 3:
        rows(o, std::integral_constant<int, 3>{}, sums);
        break;
      case 2:
        rows(o, std::integral_constant<int, 2>{}, sums);
        break;
      default:
        rows(o, std::integral_constant<int, 1>{}, sums);
        break;
    }
    for (int64_t r = 0; r < nr; ++r) y[o + r] = bias != nullptr ? sums[r] + bias[o + r] : sums[r];
  }
}

template <class W>
void matvec(const float* x, int64_t k, const typename W::Elem* w, const float* bias, float* y,
            int64_t o_begin, int64_t o_end) {
  matvec_tiles(bias, y, o_begin, o_end, [&](int64_t o, auto nr, float* sums) {
    matvec_rows<W, decltype(nr)::value>(x, k, w + o * k, k, sums);
  });
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
      // An explicit FMA, as matvec_rows's leftover columns: the compiler may not contract one
      // and not the other.
      for (int r = 0; r < NR; ++r) sums[r] = std::fma(x[i * ldx + t], w[r * ldw + t], sums[r]);
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

// The prompt path for any weight storage: fill_tile(g, rows, kb, kc, tile) puts weight rows
// g … g + rows − 1, columns kb … kb + kc − 1, as f32 into the tile (rows kKBlock apart).
template <class FillTile>
void gemm_tiled(const float* x, int64_t m, int64_t k, int64_t n, const float* bias, float* y,
                int64_t o_begin, int64_t o_end, FillTile fill_tile) {
  alignas(32) float tile[kLinearRowGroup * kKBlock];
  for (int64_t g = o_begin; g < o_end; g += kLinearRowGroup) {
    const int64_t rows = min_i64(kLinearRowGroup, o_end - g);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < rows; ++r) y[i * n + g + r] = 0.0f;
    }
    for (int64_t kb = 0; kb < k; kb += kKBlock) {
      const int64_t kc = min_i64(kKBlock, k - kb);
      fill_tile(g, rows, kb, kc, tile);
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
void linear_typed(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                  const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  if (m == 1) {
    matvec<W>(x, k, static_cast<const typename W::Elem*>(w), bias, y, o_begin, o_end);
  } else {
    // Batches and prompts: gemm_avx2.cpp, which sums each output as matvec_rows does.
    gemm_float(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
  }
}

}  // namespace

void gemm_filled(const float* x, int64_t m, int64_t k, int64_t n, const float* bias, float* y,
                 int64_t o_begin, int64_t o_end, TileFill fill, const void* ctx) {
  gemm_tiled(x, m, k, n, bias, y, o_begin, o_end,
             [&](int64_t g, int64_t rows, int64_t kb, int64_t kc, float* tile) {
               fill(ctx, g, rows, kb, kc, tile);
             });
}

void linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                 const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  switch (wdt) {
    case DType::f16:
      linear_typed<F16Weights>(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
      break;
    case DType::bf16:
      linear_typed<BF16Weights>(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
      break;
    case DType::q8:
    case DType::q4_g64:
    case DType::q4_g128:
      packed_linear_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
      break;
    case DType::q8_0:
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1:
    case DType::q4_k:
    case DType::q5_k:
    case DType::q6_k:
      ggml_linear_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
      break;
    default:
      linear_typed<F32Weights>(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
      break;
  }
}

}  // namespace ferry::kernels::cpu::detail::avx2
