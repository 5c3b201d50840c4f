// linear (y = x · wᵀ + bias) on llama.cpp's block-quantized weights (q8_0 … q6_k,
// runtime/core/ggml_quant.hpp) with AVX2 + FMA + F16C.
//
// The product is the exact f32 product of x with the exactly dequantized weights, summed in f32:
// every weight is formed as ggml's dequantize_row_* forms it (kernels/common/ggml_quant_math.hpp
// states the order of operations: each product and sum its own rounding, which is why the
// decoders below multiply and add and never fuse the two), then multiplied with x by an FMA.
// Unlike llama.cpp, x is never rounded to int8, so ferry matches llama.cpp's "F32 on dequantized
// weights" results.
//
// Decode (m = 1) reads each weight once: it is bound by memory, so a row's blocks are decoded a
// chunk of 32 weights at a time into four registers (codes widened to int32, converted, scaled)
// and multiplied straight away with x (which stays in L1/L2), four accumulators per row to keep
// the FMA chains short. Rows go one at a time, so a row's summation order depends only on k.
//
// Prompt processing (m > 1) dequantizes 16 rows × 256 columns into linear_avx2.cpp's f32 tile once
// and runs its register-tiled product over every row of x (gemm_filled).
//
// Rows start at no particular alignment (a q6_k row is 210·n bytes), so every load is unaligned.
// Like every *_avx2.cpp file this one instantiates no inline function that other files share
// (see paths.hpp): the shared header's layout is restated here with intrinsics.
#include <cstring>

#include "kernels/cpu/detail/avx2_simd.hpp"
#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx2 {
namespace {

constexpr int kChunk = 32;

float f16_at(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// Eight bytes at p widened to int32, unsigned.
__m256i u8x8(const unsigned char* p) {
  return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

// d·q, then + m: two roundings, never one fused.
__m256 scale(__m256i q, __m256 d) { return _mm256_mul_ps(_mm256_cvtepi32_ps(q), d); }
__m256 scale_add(__m256i q, __m256 d, __m256 m) { return _mm256_add_ps(scale(q, d), m); }

struct Sizes {
  int elems;
  int bytes;
};
template <DType T>
constexpr Sizes sizes() {
  switch (T) {
    case DType::q8_0:
      return {32, 34};
    case DType::q4_0:
      return {32, 18};
    case DType::q4_1:
      return {32, 20};
    case DType::q5_0:
      return {32, 22};
    case DType::q5_1:
      return {32, 24};
    case DType::q4_k:
      return {256, 144};
    case DType::q5_k:
      return {256, 176};
    default:
      return {256, 210};
  }
}

// The fifth bits of weights 8i … 8i + 7 of a q5_0 / q5_1 block (bit l of qh is weight l's) as
// 0 or 16 per int32 lane.
__m256i q5_high8(uint32_t qh, int i) {
  const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i v = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(qh >> (8 * i))), bits);
  return _mm256_and_si256(_mm256_cmpeq_epi32(v, bits), _mm256_set1_epi32(16));
}

// w[0…3] = weights 0–7, 8–15, 16–23, 24–31 of chunk c of the block at b, bit for bit ggml's.
template <DType T>
void decode_chunk(const unsigned char* b, int c, __m256 (&w)[4]) {
  const __m256i low4 = _mm256_set1_epi32(0xF);
  if constexpr (T == DType::q8_0) {
    const __m256 d = _mm256_set1_ps(f16_at(b));
    for (int i = 0; i < 4; ++i)
      w[i] = scale(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * i))),
          d);
  } else if constexpr (T == DType::q4_0 || T == DType::q4_1 || T == DType::q5_0 ||
                       T == DType::q5_1) {
    constexpr bool kFive = T == DType::q5_0 || T == DType::q5_1;
    constexpr bool kMin = T == DType::q4_1 || T == DType::q5_1;
    constexpr int kQs = (kMin ? 4 : 2) + (kFive ? 4 : 0);
    const __m256 d = _mm256_set1_ps(f16_at(b));
    uint32_t qh = 0;
    if constexpr (kFive) std::memcpy(&qh, b + kQs - 4, 4);
    const __m256i offset = _mm256_set1_epi32(kMin ? 0 : (kFive ? 16 : 8));
    for (int i = 0; i < 4; ++i) {
      const __m256i v = u8x8(b + kQs + 8 * (i & 1));
      __m256i q = i < 2 ? _mm256_and_si256(v, low4) : _mm256_srli_epi32(v, 4);
      if constexpr (kFive) q = _mm256_or_si256(q, q5_high8(qh, i));
      q = _mm256_sub_epi32(q, offset);
      if constexpr (kMin) {
        w[i] = scale_add(q, d, _mm256_set1_ps(f16_at(b + 2)));
      } else {
        w[i] = scale(q, d);
      }
    }
  } else if constexpr (T == DType::q4_k || T == DType::q5_k) {
    const unsigned char* sc = b + 4;
    int s = 0;
    int mn = 0;
    if (c < 4) {
      s = sc[c] & 63;
      mn = sc[c + 4] & 63;
    } else {
      s = (sc[c + 4] & 0xF) | ((sc[c - 4] >> 6) << 4);
      mn = (sc[c + 4] >> 4) | ((sc[c] >> 6) << 4);
    }
    const float d1 = f16_at(b) * static_cast<float>(s);
    const float m1 = f16_at(b + 2) * static_cast<float>(mn);
    const __m256 dv = _mm256_set1_ps(d1);
    const __m256 mv = _mm256_set1_ps(-m1);
    const unsigned char* qs = b + (T == DType::q4_k ? 16 : 48) + 32 * (c / 2);
    const __m128i shift = _mm_cvtsi32_si128(4 * (c & 1));
    for (int i = 0; i < 4; ++i) {
      __m256i q = _mm256_and_si256(_mm256_srl_epi32(u8x8(qs + 8 * i), shift), low4);
      if constexpr (T == DType::q5_k) {
        const __m256i h = _mm256_srl_epi32(u8x8(b + 16 + 8 * i), _mm_cvtsi32_si128(c));
        q = _mm256_add_epi32(q, _mm256_slli_epi32(_mm256_and_si256(h, _mm256_set1_epi32(1)), 4));
      }
      w[i] = scale_add(q, dv, mv);
    }
  } else {  // q6_k: chunk c is quarter t of half h
    const int h = c / 4;
    const int t = c % 4;
    const auto* sc = reinterpret_cast<const int8_t*>(b + 192 + 8 * h + 2 * t);
    const float d = f16_at(b + 208);
    const __m256 d0 = _mm256_set1_ps(d * static_cast<float>(sc[0]));
    const __m256 d1 = _mm256_set1_ps(d * static_cast<float>(sc[1]));
    const unsigned char* ql = b + 64 * h + 32 * (t & 1);
    const unsigned char* qh = b + 128 + 32 * h;
    const __m128i lo_shift = _mm_cvtsi32_si128(t >= 2 ? 4 : 0);
    const __m128i hi_shift = _mm_cvtsi32_si128(2 * t);
    const __m256i three = _mm256_set1_epi32(3);
    const __m256i bias = _mm256_set1_epi32(32);
    for (int i = 0; i < 4; ++i) {
      const __m256i lo = _mm256_and_si256(_mm256_srl_epi32(u8x8(ql + 8 * i), lo_shift), low4);
      const __m256i hi = _mm256_and_si256(_mm256_srl_epi32(u8x8(qh + 8 * i), hi_shift), three);
      const __m256i q = _mm256_sub_epi32(_mm256_or_si256(lo, _mm256_slli_epi32(hi, 4)), bias);
      w[i] = scale(q, i < 2 ? d0 : d1);
    }
  }
}

// x · row over k columns (k a multiple of the block): four accumulators, each chunk's four
// 8-weight pieces into one each, summed (a0 + a1) + (a2 + a3) at the end.
template <DType T>
float dot_row(const unsigned char* row, const float* x, int64_t k) {
  constexpr Sizes kS = sizes<T>();
  constexpr int kChunks = kS.elems / kChunk;
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  const int64_t blocks = k / kS.elems;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const unsigned char* b = row + blk * kS.bytes;
    const float* xb = x + blk * kS.elems;
#pragma GCC unroll 8
    for (int c = 0; c < kChunks; ++c) {
      __m256 w[4];
      decode_chunk<T>(b, c, w);
      for (int i = 0; i < 4; ++i)
        acc[i] = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(xb + c * kChunk + 8 * i), acc[i]);
    }
  }
  return hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
}

template <DType T>
void matvec(const float* x, int64_t k, const unsigned char* w, const float* bias, float* y,
            int64_t o_begin, int64_t o_end) {
  const uint64_t row_bytes = static_cast<uint64_t>(k / sizes<T>().elems) * sizes<T>().bytes;
  for (int64_t o = o_begin; o < o_end; ++o) {
    // The next row's first lines, so the prefetcher is already running when the row starts.
    _mm_prefetch(reinterpret_cast<const char*>(w + (o + 1) * row_bytes), _MM_HINT_T0);
    const float s = dot_row<T>(w + o * row_bytes, x, k);
    y[o] = bias != nullptr ? s + bias[o] : s;
  }
}

// The m > 1 tile: rows g … g + rows − 1, columns kb … kb + kc − 1 (whole chunks) as f32, rows
// kLinearTileCols apart.
struct TileSource {
  const unsigned char* w;
  uint64_t row_bytes;
};

template <DType T>
void fill_tile(const void* ctx, int64_t g, int64_t rows, int64_t kb, int64_t kc, float* tile) {
  constexpr Sizes kS = sizes<T>();
  constexpr int kChunks = kS.elems / kChunk;
  const auto& src = *static_cast<const TileSource*>(ctx);
  for (int64_t r = 0; r < rows; ++r) {
    const unsigned char* row = src.w + static_cast<uint64_t>(g + r) * src.row_bytes;
    float* dst = tile + r * kLinearTileCols;
    for (int64_t j = 0; j < kc; j += kChunk) {
      const int64_t ch = (kb + j) / kChunk;
      __m256 v[4];
      decode_chunk<T>(row + (ch / kChunks) * kS.bytes, static_cast<int>(ch % kChunks), v);
      for (int i = 0; i < 4; ++i) _mm256_store_ps(dst + j + 8 * i, v[i]);
    }
  }
}

template <DType T>
void linear_t(const float* x, int64_t m, int64_t k, const void* w, int64_t n, const float* bias,
              float* y, int64_t o_begin, int64_t o_end) {
  const auto* wb = static_cast<const unsigned char*>(w);
  if (m == 1) {
    matvec<T>(x, k, wb, bias, y, o_begin, o_end);
    return;
  }
  const TileSource src{wb, static_cast<uint64_t>(k / sizes<T>().elems) * sizes<T>().bytes};
  gemm_filled(x, m, k, n, bias, y, o_begin, o_end, fill_tile<T>, &src);
}

}  // namespace

void ggml_linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                      const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  switch (wdt) {
    case DType::q8_0:
      return linear_t<DType::q8_0>(x, m, k, w, n, bias, y, o_begin, o_end);
    case DType::q4_0:
      return linear_t<DType::q4_0>(x, m, k, w, n, bias, y, o_begin, o_end);
    case DType::q4_1:
      return linear_t<DType::q4_1>(x, m, k, w, n, bias, y, o_begin, o_end);
    case DType::q5_0:
      return linear_t<DType::q5_0>(x, m, k, w, n, bias, y, o_begin, o_end);
    case DType::q5_1:
      return linear_t<DType::q5_1>(x, m, k, w, n, bias, y, o_begin, o_end);
    case DType::q4_k:
      return linear_t<DType::q4_k>(x, m, k, w, n, bias, y, o_begin, o_end);
    case DType::q5_k:
      return linear_t<DType::q5_k>(x, m, k, w, n, bias, y, o_begin, o_end);
    default:
      return linear_t<DType::q6_k>(x, m, k, w, n, bias, y, o_begin, o_end);
  }
}

}  // namespace ferry::kernels::cpu::detail::avx2
