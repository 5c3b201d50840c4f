// linear (y = x · wᵀ + bias) on ferry's packed weights (q8, q4_g64, q4_g128;
// runtime/core/quant.hpp) with AVX2 + FMA + F16C, and the run-time switch to the AVX-512 kernels
// (packed_avx512.cpp, packed_vnni_avx512.cpp) where packed.cpp picks them.
//
// The codes are multiplied in integers: x is rounded once per call — q4: to int8 per group
// (max|x|/127 steps, ~0.3% of the group's size), 32 nibble×byte products per
// _mm256_maddubs_epi16; q8: to int16 per 64 columns (a 3e-5 relative step), 16 code×x products
// per _mm256_madd_epi16 — and each group's integer sum is scaled in f32 (q4: by scale·dx, with
// min·Σx factored out of the group and added per row at the end from x's group sums; q8: by dx,
// the row's scale on the finished sum). A weight costs half or a quarter of an f16's memory
// traffic.
//
// Many rows of x (batched decoding, drafts, prompts) share each decoded weight: a register tile
// is up to 4 rows of x by 4 / rows weight rows (4 accumulators, so the 16 ymm registers hold
// them, their integer sums and one decoded weight row), and a weight row tile stays in L1 while
// every row of x takes its turn. Every output's f32 operations are the same whatever its tile
// (the per-group FMA into its own accumulator, hsum4's tree, which is the same in every slot,
// the minima, the columns past the last whole group in f32, the bias), so a row of x gets the
// same bits alone or among others.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cpu/detail/avx2_simd.hpp"
#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx2 {
namespace {

constexpr int kTile = 4;  // accumulators per register tile: rows of x × weight rows
// Rows of x rounded at once: their int8/int16 copies stay in L2 while the thread's weight rows
// pass, so the weights come from memory once per this many rows.
constexpr int64_t kXRowsPerPass = 64;
// Weight bytes multiplied by every row of a pass before the next ones: well inside L2.
constexpr uint64_t kReuseBytes = 256 * 1024;

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// ---- The layout arithmetic of runtime/core/quant.hpp, repeated here on purpose: this file must
// not instantiate inline functions other files share (see paths.hpp).

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

float group_sum(const float* x, int64_t group) {
  __m256 a0 = _mm256_setzero_ps();
  __m256 a1 = _mm256_setzero_ps();
  for (int64_t i = 0; i < group; i += 16) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
  }
  return hsum(_mm256_add_ps(a0, a1));
}

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

// Up to kXRowsPerPass rows of x rounded for the integer kernels (per row: xq, then dx per group
// or block, and for q4 x's exact group sums), in a per-thread buffer.
struct XRows {
  const float* x = nullptr;  // the f32 rows (columns past the whole groups)
  int64_t k = 0;
  const int8_t* xq = nullptr;
  int64_t xq_stride = 0;  // bytes
  const float* dx = nullptr;
  const float* xsum = nullptr;
  int64_t s_stride = 0;  // floats, for dx and xsum
};

// A buffer that grows and lives as long as its thread (one per pool worker), so a prompt's call
// does not map fresh pages every time.
struct Scratch {
  void* data = nullptr;
  std::size_t bytes = 0;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data); }
  void* get(std::size_t want) {
    if (want > bytes) {
      std::free(data);
      bytes = static_cast<std::size_t>(round_up(static_cast<int64_t>(want), 4096));
      data = std::aligned_alloc(64, bytes);
      if (data == nullptr) std::abort();  // a few MiB of scratch: nothing sensible is left to do
    }
    return data;
  }
};

thread_local Scratch tls_scratch;

XRows quantize_rows(const float* x, int64_t m, int64_t k, const PackedLayout& l, bool q8) {
  const int64_t group = q8 ? kQ8Block : l.group;
  const int64_t groups = k / group;
  XRows r;
  r.x = x;
  r.k = k;
  r.xq_stride = round_up(groups * group * (q8 ? 2 : 1), 64);
  r.s_stride = round_up(groups, 16);
  const auto xq_bytes = static_cast<std::size_t>(m * r.xq_stride);
  auto* base = static_cast<unsigned char*>(
      tls_scratch.get(xq_bytes + static_cast<std::size_t>(2 * m * r.s_stride) * 4));
  auto* dx = reinterpret_cast<float*>(base + xq_bytes);
  float* xsum = dx + m * r.s_stride;
  r.xq = reinterpret_cast<int8_t*>(base);
  r.dx = dx;
  r.xsum = xsum;
  for (int64_t i = 0; i < m; ++i) {
    const float* xi = x + i * k;
    if (q8) {
      quantize_x16(xi, groups, reinterpret_cast<int16_t*>(base + i * r.xq_stride),
                   dx + i * r.s_stride);
    } else {
      quantize_x(xi, groups, group, reinterpret_cast<int8_t*>(base + i * r.xq_stride),
                 dx + i * r.s_stride);
      for (int64_t g = 0; g < groups; ++g)
        xsum[i * r.s_stride + g] = group_sum(xi + g * group, group);
    }
  }
  return r;
}

// sums[i][r] = x_i · w_r for MR rows of x (from row i0) and NR q4 rows of G-column groups at w
// (MR·NR ≤ 4): per group and row, the 32-byte runs of nibbles are split into low and high nibbles
// (columns c… and G/2 + c…), multiplied by the matching xq bytes and summed in 32 bits; scale·dx
// (formed 8 groups at a time) is applied to that sum with one FMA; Σ min·Σx is one short dot
// product per output at the end. A partial last group goes through f32.
template <int MR, int NR, int G>
void q4_tile(const XRows& xr, int64_t i0, const unsigned char* w, const PackedLayout& l,
             float (&sums)[kTile][kTile]) {
  static_assert(MR * NR <= kTile, "the register tile holds 4 accumulators");
  constexpr int kHalf = G / 2;
  const int64_t k = xr.k;
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) acc[i][r] = _mm256_setzero_ps();
  }
  const int64_t full_groups = k / G;
  const __m256i low4 = _mm256_set1_epi8(0x0f);
  const __m256i ones = _mm256_set1_epi16(1);
  alignas(32) float sc[MR][NR][8];
  // The scales and minima at each row's head, away from the nibbles' stream, asked for 64 groups
  // ahead (and the next tile's first lines now): waiting on them held the AVX-512 kernel's
  // mat-vec to half the read loop (packed_avx512_body.inc).
#pragma GCC unroll 4
  for (int r = 0; r < NR; ++r) {
    const char* next = reinterpret_cast<const char*>(w + (NR + r) * l.row_bytes);
    _mm_prefetch(next, _MM_HINT_T0);
    _mm_prefetch(next + l.mins, _MM_HINT_T0);
  }
  for (int64_t g0 = 0; g0 < full_groups; g0 += 8) {
    const int64_t gn = full_groups - g0 < 8 ? full_groups - g0 : 8;
    if (g0 % 32 == 0) {
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const char* head = reinterpret_cast<const char*>(w + r * l.row_bytes + 2 * (g0 + 64));
        _mm_prefetch(head, _MM_HINT_T0);
        _mm_prefetch(head + l.mins, _MM_HINT_T0);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const float* dx = xr.dx + (i0 + i) * xr.s_stride;
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const unsigned char* row = w + r * l.row_bytes;
        if (gn == 8) {
          _mm256_store_ps(
              sc[i][r],
              _mm256_mul_ps(
                  _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 2 * g0))),
                  _mm256_loadu_ps(dx + g0)));
        } else {
          for (int64_t j = 0; j < gn; ++j) sc[i][r][j] = f16_at(row + 2 * (g0 + j)) * dx[g0 + j];
        }
      }
    }
    for (int64_t j = 0; j < gn; ++j) {
      const int64_t g = g0 + j;
      const unsigned char* bytes = w + l.nibbles + static_cast<uint64_t>(g * kHalf);
      __m256i d[MR][NR];
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) d[i][r] = _mm256_setzero_si256();
      }
#pragma GCC unroll 2
      for (int c = 0; c < kHalf; c += 32) {
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r) {
          const __m256i v =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + r * l.row_bytes + c));
          const __m256i lo = _mm256_and_si256(v, low4);
          const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
#pragma GCC unroll 4
          for (int i = 0; i < MR; ++i) {
            const int8_t* xg = xr.xq + (i0 + i) * xr.xq_stride + g * G;
            const __m256i x_lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + c));
            const __m256i x_hi =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xg + kHalf + c));
            const __m256i p =
                _mm256_add_epi16(_mm256_maddubs_epi16(lo, x_lo), _mm256_maddubs_epi16(hi, x_hi));
            d[i][r] = _mm256_add_epi32(d[i][r], _mm256_madd_epi16(p, ones));
          }
        }
      }
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
        for (int r = 0; r < NR; ++r)
          acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[i][r]),
                                      _mm256_broadcast_ss(&sc[i][r][j]), acc[i][r]);
      }
    }
  }
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    alignas(16) float s[kTile];
    _mm_storeu_ps(
        s, hsum4(acc[i][0], NR > 1 ? acc[i][NR > 1 ? 1 : 0] : zero,
                 NR > 2 ? acc[i][NR > 2 ? 2 : 0] : zero, NR > 3 ? acc[i][NR > 3 ? 3 : 0] : zero));
    const float* xi = xr.x + (i0 + i) * k;
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      const unsigned char* row = w + r * l.row_bytes;
      s[r] += f16_dot(row + l.mins, xr.xsum + (i0 + i) * xr.s_stride, full_groups);
      for (int64_t t = full_groups * G; t < k; ++t) s[r] += xi[t] * q4_scalar(row, l, t);
      sums[i][r] = s[r];
    }
  }
}

// sums[i][r] = Σ_j q[r, j]·x_ij (the codes; the caller applies each row's scale) for MR rows of x
// and NR q8 rows (MR·NR ≤ 4), x as int16 per 64-column block: per block, 16 codes widened to 16
// bits and multiplied-and-paired with xq per instruction into 32-bit sums, then dx applied with
// one FMA. Columns past the last whole block in f32.
template <int MR, int NR>
void q8_tile(const XRows& xr, int64_t i0, const int8_t* w, int64_t ldw,
             float (&sums)[kTile][kTile]) {
  static_assert(MR * NR <= kTile, "the register tile holds 4 accumulators");
  const int64_t k = xr.k;
  __m256 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) acc[i][r] = _mm256_setzero_ps();
  }
  const int64_t blocks = k / kQ8Block;
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i d[MR][NR];
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) d[i][r] = _mm256_setzero_si256();
    }
#pragma GCC unroll 4
    for (int64_t c = 0; c < kQ8Block; c += 16) {
      const int64_t j = b * kQ8Block + c;
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r) {
        const __m256i wv = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + r * ldw + j)));
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
          const auto* xq = reinterpret_cast<const int16_t*>(xr.xq + (i0 + i) * xr.xq_stride);
          const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + j));
          d[i][r] = _mm256_add_epi32(d[i][r], _mm256_madd_epi16(wv, xv));
        }
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m256 scale = _mm256_broadcast_ss(xr.dx + (i0 + i) * xr.s_stride + b);
#pragma GCC unroll 4
      for (int r = 0; r < NR; ++r)
        acc[i][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d[i][r]), scale, acc[i][r]);
    }
  }
  const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    alignas(16) float s[kTile];
    _mm_storeu_ps(
        s, hsum4(acc[i][0], NR > 1 ? acc[i][NR > 1 ? 1 : 0] : zero,
                 NR > 2 ? acc[i][NR > 2 ? 2 : 0] : zero, NR > 3 ? acc[i][NR > 3 ? 3 : 0] : zero));
    const float* xi = xr.x + (i0 + i) * k;
#pragma GCC unroll 4
    for (int r = 0; r < NR; ++r) {
      for (int64_t j = blocks * kQ8Block; j < k; ++j)
        s[r] += xi[j] * static_cast<float>(w[r * ldw + j]);
      sums[i][r] = s[r];
    }
  }
}

// The tile shapes: mr rows of x (1 to 4) by 4 / mr weight rows, both compile-time constants.
template <class Tile>
void tile_for(int mr, Tile tile) {
  switch (mr) {
    case 4:
      tile(std::integral_constant<int, 4>{}, std::integral_constant<int, 1>{});
      break;
    case 3:
      tile(std::integral_constant<int, 3>{}, std::integral_constant<int, 1>{});
      break;
    case 2:
      tile(std::integral_constant<int, 2>{}, std::integral_constant<int, 2>{});
      break;
    default:
      tile(std::integral_constant<int, 1>{}, std::integral_constant<int, 4>{});
      break;
  }
}

// mr rows of x by one weight row.
template <class Tile>
void tile_one_row(int mr, Tile tile) {
  switch (mr) {
    case 4:
      tile(std::integral_constant<int, 4>{}, std::integral_constant<int, 1>{});
      break;
    case 3:
      tile(std::integral_constant<int, 3>{}, std::integral_constant<int, 1>{});
      break;
    case 2:
      tile(std::integral_constant<int, 2>{}, std::integral_constant<int, 1>{});
      break;
    default:
      tile(std::integral_constant<int, 1>{}, std::integral_constant<int, 1>{});
      break;
  }
}

// y[0 … mx − 1, o_begin:o_end] for the rows of x rounded in a pass, over chunks of weight rows
// that stay in L2 (kReuseBytes): within a chunk, every block of mr rows of x is multiplied by the
// chunk's weight row tiles (4 / mr rows each). tile(MR, NR, o, i, sums) computes the outputs of
// weight rows o… and x rows i… into sums.
template <int MaxMR, class Tile>
void pass(int64_t mx, int64_t n, uint64_t row_bytes, const float* bias, float* y, int64_t o_begin,
          int64_t o_end, Tile tile) {
  float sums[kTile][kTile];
  const auto store = [&](int64_t i, int mr, int64_t o, int nr) {
    for (int a = 0; a < mr; ++a) {
      for (int r = 0; r < nr; ++r)
        y[(i + a) * n + o + r] = bias != nullptr ? sums[a][r] + bias[o + r] : sums[a][r];
    }
  };
  const auto fit = static_cast<int64_t>(kReuseBytes / row_bytes) / kTile * kTile;
  const int64_t chunk = fit > kTile ? fit : kTile;
  for (int64_t oc = o_begin; oc < o_end; oc += chunk) {
    const int64_t oc_end = oc + chunk < o_end ? oc + chunk : o_end;
    for (int64_t i = 0; i < mx; i += MaxMR) {
      const int mr = static_cast<int>(mx - i < MaxMR ? mx - i : MaxMR);
      const int64_t rows = mr == 1 ? 4 : (mr == 2 ? 2 : 1);
      int64_t o = oc;
      for (; o + rows <= oc_end; o += rows) {
        tile_for(mr, [&](auto mr_c, auto nr_c) { tile(mr_c, nr_c, o, i, sums); });
        store(i, mr, o, static_cast<int>(rows));
      }
      // The chunk's last rows, fewer than a tile: one at a time.
      for (; o < oc_end; ++o) {
        tile_one_row(mr, [&](auto mr_c, auto nr_c) { tile(mr_c, nr_c, o, i, sums); });
        store(i, mr, o, 1);
      }
    }
  }
}

void linear_packed(const float* x, int64_t m, int64_t k, const void* wv, DType t, int64_t n,
                   const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  const auto* w = static_cast<const unsigned char*>(wv);
  const PackedLayout l = packed_layout(t, k);
  for (int64_t i0 = 0; i0 < m; i0 += kXRowsPerPass) {
    const int64_t mx = m - i0 < kXRowsPerPass ? m - i0 : kXRowsPerPass;
    const XRows xr = quantize_rows(x + i0 * k, mx, k, l, t == DType::q8);
    float* yp = y + i0 * n;
    if (t == DType::q8) {
      const auto ldw = static_cast<int64_t>(l.row_bytes);
      pass<2>(mx, n, l.row_bytes, bias, yp, o_begin, o_end,
              [&](auto mr, auto nr, int64_t o, int64_t i, float(&sums)[kTile][kTile]) {
                const unsigned char* wo = w + static_cast<uint64_t>(o) * l.row_bytes;
                q8_tile<decltype(mr)::value, decltype(nr)::value>(
                    xr, i, reinterpret_cast<const int8_t*>(wo + 4), ldw, sums);
                for (int r = 0; r < decltype(nr)::value; ++r) {
                  float scale;
                  std::memcpy(&scale, wo + r * l.row_bytes, 4);
                  for (int a = 0; a < decltype(mr)::value; ++a) sums[a][r] *= scale;
                }
              });
    } else if (l.group == 64) {
      pass<kTile>(mx, n, l.row_bytes, bias, yp, o_begin, o_end,
                  [&](auto mr, auto nr, int64_t o, int64_t i, float(&sums)[kTile][kTile]) {
                    q4_tile<decltype(mr)::value, decltype(nr)::value, 64>(
                        xr, i, w + static_cast<uint64_t>(o) * l.row_bytes, l, sums);
                  });
    } else {
      pass<kTile>(mx, n, l.row_bytes, bias, yp, o_begin, o_end,
                  [&](auto mr, auto nr, int64_t o, int64_t i, float(&sums)[kTile][kTile]) {
                    q4_tile<decltype(mr)::value, decltype(nr)::value, 128>(
                        xr, i, w + static_cast<uint64_t>(o) * l.row_bytes, l, sums);
                  });
    }
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
