// linear (y = x · wᵀ + bias) on ferry's packed weights (q8, q4_g64, q4_g128; runtime/core/quant.hpp)
// with AVX2 + FMA + F16C.
//
// Decode works on the codes in the inner loop — q8 rounds x to int16 per 64 columns (a 3e-5
// relative step), multiplies 16 codes by it per _mm256_madd_epi16 and applies the row's scale to
// the finished sum; q4 factors each group's scale and minimum out of the group's sum (scale·Σq·x
// + min·Σx, Σx shared by all rows) and forms Σq·x in integers: x is rounded to int8 per group
// once per call (max|x|/127 steps, ~0.3% of the group's size) and 32 nibble×byte products go
// through one _mm256_maddubs_epi16 — so a weight costs half or a quarter of an f16's memory
// traffic and, for q4, about ten instructions per 64 (rows past 65536 columns keep x in f32).
// Many rows of x (a prompt, a batch) go through the same decode kernels, row by row over chunks
// of weights that stay in L2, so a row's result does not depend on the rows beside it.
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
// Weight bytes a many-row product of packed weights multiplies by every row of x before moving
// on: well inside L2, so each weight comes from DRAM once.
constexpr uint64_t kReuseBytes = 256 * 1024;

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

// ---- Packed weights. The layout arithmetic of runtime/core/quant.hpp is repeated here on
// purpose: this file must not instantiate inline functions other files share (see paths.hpp).

struct PackedLayout {
  int64_t group = 0;  // q4: columns per group; q8: 0
  int64_t ng = 0;     // q4: groups per row
  uint64_t row_bytes = 0;
  uint64_t mins = 0;     // q4: offset of the minima in a row
  uint64_t nibbles = 0;  // q4: offset of the nibbles in a row
};

PackedLayout packed_layout(DType t, int64_t k) {
  PackedLayout l;
  if (t == DType::q8) {
    l.row_bytes = 4 + static_cast<uint64_t>((k + 3) / 4 * 4);
    return l;
  }
  l.group = t == DType::q4_g64 ? 64 : 128;
  l.ng = (k + l.group - 1) / l.group;
  l.mins = static_cast<uint64_t>(l.ng) * 2;
  l.nibbles = static_cast<uint64_t>(l.ng) * 4;
  l.row_bytes = static_cast<uint64_t>(l.ng) * (4 + static_cast<uint64_t>(l.group / 2));
  return l;
}

float f16_at(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

float q4_scalar(const unsigned char* row, const PackedLayout& l, int64_t j) {
  const int64_t g = j / l.group;
  const int64_t i = j - g * l.group;
  const unsigned char* bytes = row + l.nibbles + static_cast<uint64_t>(g * (l.group / 2));
  const unsigned code = i < l.group / 2 ? (bytes[i] & 0x0fu) : (bytes[i - l.group / 2] >> 4);
  return f16_at(row + l.mins + 2 * g) + f16_at(row + 2 * g) * static_cast<float>(code);
}

// A q8 row's codes as weights: the row's scale is applied to the finished sum.
struct Q8Codes {
  using Elem = int8_t;
  static __m256 load8(const Elem* p) {
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static float load1(const Elem* p) { return static_cast<float>(*p); }
};

// Per-group sums of x, for the factored q4 decode below: Σ_j x_j (min + scale·q_j) =
// scale·Σ x_j q_j + min·Σ x_j, so the second term needs only x's group sums, which every row
// shares. They are computed once per call into a stack array when k allows (GPT-J's widest k needs
// 256), else per row tile.
constexpr int64_t kMaxGroupSums = 1024;

float group_sum(const float* x, int64_t group) {
  __m256 a0 = _mm256_setzero_ps();
  __m256 a1 = _mm256_setzero_ps();
  for (int64_t i = 0; i < group; i += 16) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
  }
  return hsum(_mm256_add_ps(a0, a1));
}

// sums[r] = x · w[r, :] for NR ≤ 4 q4 rows of G-column groups: whole groups with SIMD, a partial
// last group scalar. Per group and row the codes q (0…15, exact in f32) are dotted with x into one
// 8-wide sum, the group's scale applied to that sum with one FMA into the row's accumulator, and
// min·Σx added as a scalar: a convert and an FMA per 8 weights, the rows' chains interleaved.
template <int NR, int G>
void matvec_q4_rows(const float* x, int64_t k, const unsigned char* w, const PackedLayout& l,
                    const float* xsum, float* sums) {  // xsum: nullptr = computed here
  constexpr int kHalf = G / 2;
  __m256 acc[kRowTile];
  float mins[kRowTile] = {};
  for (int r = 0; r < kRowTile; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t full_groups = k / G;
  const __m256i low4 = _mm256_set1_epi32(0x0f);
  for (int64_t g = 0; g < full_groups; ++g) {
    const float* xg = x + g * G;
    const unsigned char* bytes = w + l.nibbles + static_cast<uint64_t>(g * kHalf);
    __m256 d[kRowTile];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) d[r] = _mm256_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < kHalf; i += 8) {
      const __m256 x0 = _mm256_loadu_ps(xg + i);
      const __m256 x1 = _mm256_loadu_ps(xg + kHalf + i);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const __m256i b = _mm256_cvtepu8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes + r * l.row_bytes + i)));
        d[r] = _mm256_fmadd_ps(x0, _mm256_cvtepi32_ps(_mm256_and_si256(b, low4)), d[r]);
        d[r] = _mm256_fmadd_ps(x1, _mm256_cvtepi32_ps(_mm256_srli_epi32(b, 4)), d[r]);
      }
    }
    const float sx = xsum != nullptr ? xsum[g] : group_sum(xg, G);
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const unsigned char* row = w + r * l.row_bytes;
      acc[r] = _mm256_fmadd_ps(d[r], _mm256_set1_ps(f16_at(row + 2 * g)), acc[r]);
      mins[r] += f16_at(row + l.mins + 2 * g) * sx;
    }
  }
  _mm_storeu_ps(sums, hsum4(acc[0], acc[1], acc[2], acc[3]));
  for (int r = 0; r < NR; ++r) {
    sums[r] += mins[r];
    for (int64_t t = full_groups * G; t < k; ++t)
      sums[r] += x[t] * q4_scalar(w + r * l.row_bytes, l, t);
  }
}

// x quantized for the integer q4 decode below: per group g of G columns, dx[g] = max|x| / 127
// and xq = round-half-even(x / dx) in [-127, 127]. Σ_j q_j·x_j is then dx·Σ q_j·xq_j, an integer
// sum (_mm256_maddubs_epi16 multiplies the unsigned nibbles by the signed bytes: 32 products per
// instruction, exact in 16 bits since 2·15·127 < 2^15). x's rounding adds a relative error of
// about 0.3% per group to each row's sum, far below the 4-bit codes' own ~8.5%.
constexpr int64_t kMaxQuantizedX = 65536;  // int8 on the stack: k up to 65536

// max |x_i| over n floats (n a multiple of 8).
float abs_max(const float* x, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8)
    m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + i), abs_mask));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h);
}

void quantize_x(const float* x, int64_t groups, int64_t group, int8_t* xq, float* dx) {
  for (int64_t g = 0; g < groups; ++g) {
    const float* xg = x + g * group;
    const float amax = abs_max(xg, group);
    dx[g] = amax / 127.0f;
    const __m256 inv = _mm256_set1_ps(amax > 0 ? 127.0f / amax : 0.0f);
    for (int64_t i = 0; i < group; i += 8) {
      // Rounded in the current (round-to-nearest-even) mode; |x|·127/amax ≤ 127 up to rounding.
      const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xg + i), inv));
      alignas(32) int32_t tmp[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(tmp), v);
      for (int t = 0; t < 8; ++t)
        xq[g * group + i + t] = static_cast<int8_t>(tmp[t] > 127    ? 127
                                                    : tmp[t] < -127 ? -127
                                                                    : tmp[t]);
    }
  }
}

// Σ_g f16 values[g] · xsum[g] over n groups (a q4 row's minima against x's group sums).
float f16_dot(const unsigned char* values, const float* xsum, int64_t n) {
  __m256 m = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= n; g += 8)
    m = _mm256_fmadd_ps(
        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(values + 2 * g))),
        _mm256_loadu_ps(xsum + g), m);
  float sum = hsum(m);
  for (; g < n; ++g) sum += f16_at(values + 2 * g) * xsum[g];
  return sum;
}

// sums[r] = x · w[r, :] for NR ≤ 4 q4 rows of G-column groups, x given quantized per group (xq,
// dx) and its exact group sums (xsum): per group and row, the 32-byte runs of nibbles are split
// into low and high nibbles (columns c… and G/2 + c…), multiplied by the matching xq bytes and
// summed in 32 bits; scale·dx (formed 8 groups at a time) is applied to that sum with one FMA;
// Σ min·Σx is one short dot product per row at the end. A partial last group goes through f32,
// as in matvec_q4_rows.
template <int NR, int G>
void matvec_q4_rows_i8(const float* x, const int8_t* xq, const float* dx, const float* xsum,
                       int64_t k, const unsigned char* w, const PackedLayout& l, float* sums) {
  constexpr int kHalf = G / 2;
  __m256 acc[kRowTile];
  for (int r = 0; r < kRowTile; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t full_groups = k / G;
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) float sc[kRowTile][8];
  for (int64_t g0 = 0; g0 < full_groups; g0 += 8) {
    const int64_t gn = full_groups - g0 < 8 ? full_groups - g0 : 8;
    for (int r = 0; r < NR; ++r) {
      const unsigned char* row = w + r * l.row_bytes;
      if (gn == 8) {
        _mm256_store_ps(sc[r], _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(
                                                 reinterpret_cast<const __m128i*>(row + 2 * g0))),
                                             _mm256_loadu_ps(dx + g0)));
      } else {
        for (int64_t j = 0; j < gn; ++j) sc[r][j] = f16_at(row + 2 * (g0 + j)) * dx[g0 + j];
      }
    }
    for (int64_t j = 0; j < gn; ++j) {
      const int64_t g = g0 + j;
      const unsigned char* bytes = w + l.nibbles + static_cast<uint64_t>(g * kHalf);
      const int8_t* xg = xq + g * G;
      __m256i d[kRowTile];
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) d[r] = _mm256_setzero_si256();
#pragma GCC unroll 2
      for (int c = 0; c < kHalf; c += 32) {
        const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + c));
        const __m256i x_hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + kHalf + c));
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) {
          const __m256i v =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + r * l.row_bytes + c));
          const __m256i lo = _mm256_and_si256(v, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
          const __m256i p =
              _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
          d[r] = _mm256_add_epi32(d[r], _mm256_madd_epi16(p, ones));
        }
      }
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r)
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r]), _mm256_broadcast_ss(&sc[r][j]), acc[r]);
    }
  }
  _mm_storeu_ps(sums, hsum4(acc[0], acc[1], acc[2], acc[3]));
  for (int r = 0; r < NR; ++r) {
    const unsigned char* row = w + r * l.row_bytes;
    sums[r] += f16_dot(row + l.mins, xsum, full_groups);
    for (int64_t t = full_groups * G; t < k; ++t) sums[r] += x[t] * q4_scalar(row, l, t);
  }
}

// x rounded to int16 per block of 64 columns for the q8 decode below: dx[b] = max|x|/32767 and
// xq = round-half-even(x·(32767/max|x|)) — a relative step of 3e-5 of the block's largest |x|,
// far below the int8 codes' own error — so 16 code×x products and their pairwise sums come from
// one _mm256_madd_epi16.
constexpr int64_t kQ8Block = 64;

void quantize_x16(const float* x, int64_t blocks, int16_t* xq, float* dx) {
  for (int64_t b = 0; b < blocks; ++b) {
    const float* xb = x + b * kQ8Block;
    const float amax = abs_max(xb, kQ8Block);
    dx[b] = amax / 32767.0f;
    const __m256 inv = _mm256_set1_ps(amax > 0 ? 32767.0f / amax : 0.0f);
    for (int64_t i = 0; i < kQ8Block; i += 16) {
      const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i), inv));
      const __m256i c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xb + i + 8), inv));
      // packs saturates to ±32767 (a rounding up past 32767 stays in range) and interleaves the
      // 128-bit lanes; the permute puts the 16 values back in order.
      const __m256i v = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, c), 0xd8);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(xq + b * kQ8Block + i), v);
    }
  }
}

// sums[r] = Σ_j q[r, j]·x_j (the codes; the caller applies each row's scale) for NR ≤ 4 q8 rows,
// x given as int16 per 64-column block (xq, dx): per block, 16 codes widened to 16 bits and
// multiplied-and-paired with xq per instruction into 32-bit sums (at most 4·2·127·32767 < 2^31),
// then dx applied with one FMA. Columns past the last whole block in f32.
template <int NR>
void matvec_q8_rows_i16(const float* x, const int16_t* xq, const float* dx, int64_t k,
                        const int8_t* w, int64_t ldw, float* sums) {
  __m256 acc[kRowTile];
  for (int r = 0; r < kRowTile; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t blocks = k / kQ8Block;
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i d[kRowTile];
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) d[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int64_t c = 0; c < kQ8Block; c += 16) {
      const int64_t j = b * kQ8Block + c;
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + j));
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const __m256i wv = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * ldw + j)));
        d[r] = _mm256_add_epi32(d[r], _mm256_madd_epi16(wv, xv));
      }
    }
    const __m256 scale = _mm256_broadcast_ss(dx + b);
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[r]), scale, acc[r]);
  }
  _mm_storeu_ps(sums, hsum4(acc[0], acc[1], acc[2], acc[3]));
  for (int r = 0; r < NR; ++r)
    for (int64_t j = blocks * kQ8Block; j < k; ++j)
      sums[r] += x[j] * static_cast<float>(w[r * ldw + j]);
}

// matvec_tiles over the rows of a q4 matrix at w: rows(NR, G, the tile's first row, sums), the
// row count and the group size both compile-time constants (std::integral_constant).
template <class Rows>
void q4_tiles(const unsigned char* w, const PackedLayout& l, const float* bias, float* y,
              int64_t o_begin, int64_t o_end, Rows rows) {
  matvec_tiles(bias, y, o_begin, o_end, [&](int64_t o, auto nr, float* sums) {
    const unsigned char* wo = w + static_cast<uint64_t>(o) * l.row_bytes;
    if (l.group == 64) {
      rows(nr, std::integral_constant<int, 64>{}, wo, sums);
    } else {
      rows(nr, std::integral_constant<int, 128>{}, wo, sums);
    }
  });
}

void matvec_packed(const float* x, int64_t k, const unsigned char* w, DType t, const float* bias,
                   float* y, int64_t o_begin, int64_t o_end) {
  const PackedLayout l = packed_layout(t, k);
  if (t == DType::q8) {
    const int64_t blocks = k / kQ8Block;
    const bool int16_x = blocks * kQ8Block <= kMaxQuantizedX / 2;  // 128 KiB of int16 at most
    alignas(32) int16_t xq[kMaxQuantizedX / 2];
    float dx[kMaxQuantizedX / 2 / kQ8Block];
    if (int16_x) quantize_x16(x, blocks, xq, dx);
    matvec_tiles(bias, y, o_begin, o_end, [&](int64_t o, auto nr, float* sums) {
      const unsigned char* wo = w + static_cast<uint64_t>(o) * l.row_bytes;
      const auto* codes = reinterpret_cast<const int8_t*>(wo + 4);
      const auto ldw = static_cast<int64_t>(l.row_bytes);
      if (int16_x) {
        matvec_q8_rows_i16<decltype(nr)::value>(x, xq, dx, k, codes, ldw, sums);
      } else {
        matvec_rows<Q8Codes, decltype(nr)::value>(x, k, codes, ldw, sums);
      }
      for (int r = 0; r < decltype(nr)::value; ++r) {
        float scale;
        std::memcpy(&scale, wo + r * l.row_bytes, 4);
        sums[r] *= scale;
      }
    });
  } else {
    float xsum_buf[kMaxGroupSums];
    const int64_t groups = k / l.group;
    const float* xsum = nullptr;
    if (groups <= kMaxGroupSums) {
      for (int64_t g = 0; g < groups; ++g) xsum_buf[g] = group_sum(x + g * l.group, l.group);
      xsum = xsum_buf;
    }
    if (xsum != nullptr && groups * l.group <= kMaxQuantizedX) {
      alignas(32) int8_t xq[kMaxQuantizedX];
      float dx[kMaxGroupSums];
      quantize_x(x, groups, l.group, xq, dx);
      q4_tiles(w, l, bias, y, o_begin, o_end,
               [&](auto nr, auto g, const unsigned char* wo, float* sums) {
                 matvec_q4_rows_i8<decltype(nr)::value, decltype(g)::value>(x, xq, dx, xsum, k, wo,
                                                                            l, sums);
               });
      return;
    }
    q4_tiles(w, l, bias, y, o_begin, o_end,
             [&](auto nr, auto g, const unsigned char* wo, float* sums) {
               matvec_q4_rows<decltype(nr)::value, decltype(g)::value>(x, k, wo, l, xsum, sums);
             });
  }
}

void linear_packed(const float* x, int64_t m, int64_t k, const void* w, DType t, int64_t n,
                   const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  const auto* wb = static_cast<const unsigned char*>(w);
  // Every row of x goes through the decode kernel, so a row's result never depends on the
  // others (see matvec_rows). The weights are read from memory once: a chunk of rows small
  // enough to stay in L2 is multiplied by every row of x before the next chunk.
  const PackedLayout l = packed_layout(t, k);
  const auto fit = static_cast<int64_t>(kReuseBytes / (l.row_bytes + 1)) / kRowTile * kRowTile;
  const int64_t chunk = fit > kRowTile ? fit : kRowTile;
  for (int64_t o = o_begin; o < o_end; o += chunk) {
    const int64_t o_stop = min_i64(o_end, o + chunk);
    for (int64_t i = 0; i < m; ++i) matvec_packed(x + i * k, k, wb, t, bias, y + i * n, o, o_stop);
  }
}

}  // namespace

void packed_avx2_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                      const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  linear_packed(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
}

void packed_linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                        const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  // Every row count goes to the same kernels, so a row's bits never depend on the batch.
#if defined(FERRY_KERNELS_AVX512)
  switch (packed_isa()) {
    case PackedIsa::avx512_vnni:
      avx512::packed_linear_rows_vnni(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
      return;
    case PackedIsa::avx512:
      avx512::packed_linear_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
      return;
    default:
      break;
  }
#endif
  linear_packed(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
}

}  // namespace ferry::kernels::cpu::detail::avx2
