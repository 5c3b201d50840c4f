// linear on llama.cpp's block formats with AVX-512 (F, BW, VL), chosen at run time over
// ggml_linear_avx2.cpp where the processor has it (ops.cpp; FERRY_SIMD=avx2 keeps AVX2). Same
// contract: every weight the exact f32 ggml decodes, multiplied with x (never rounded) by an FMA.
//
// What AVX-512 adds is a 16-entry permute: a 4-bit format's chunk of 32 weights has only 16
// possible weights (32 for the 5-bit ones), so they are computed once per chunk into a register
// — with the very operations ggml uses, (q − 8)·d, q·d + m, (d·sc)·q − dmin·mn, so each entry is
// ggml's weight bit for bit — and a weight is then one VPERMPS (VPERMT2PS) of its code: per 16
// weights a byte widening, a permute and an FMA, against a conversion, a multiply and an add more
// in the AVX2 path. q6_k (64 levels) converts and scales as the AVX2 path does; q8_0, with
// nothing to look up, stays on the AVX2 path.
//
// Like every file built with extra instruction sets, it instantiates no inline function shared
// with other files (see paths.hpp); the m > 1 tile product is linear_avx2.cpp's (gemm_filled).
// GCC 12's AVX-512 headers start conversions from _mm512_undefined_*(), which
// -W(maybe-)uninitialized takes for a read of an uninitialized value (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx512 {
namespace {

float f16_at(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

struct Sizes {
  int elems;
  int bytes;
};
template <DType T>
constexpr Sizes sizes() {
  switch (T) {
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

__m512i u8x16(const unsigned char* p) {
  return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// 0, 1, …, 15 as f32.
__m512 iota16() {
  return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
}

// d·q and then + m, each rounded once (no FMA), as ggml forms a weight.
__m512 mul_add(__m512 q, __m512 d, __m512 m) { return _mm512_add_ps(_mm512_mul_ps(q, d), m); }

// A q4_k / q5_k block's 8 sub-block scales d·sc and minima −(dmin·mn) (ggml's get_scale_min_k4
// for all eight at once, on 32-bit words as ggml's SIMD code unpacks them).
void k4_scales(const unsigned char* b, float* ds, float* ms) {
  constexpr uint32_t kMask1 = 0x3f3f3f3f;
  constexpr uint32_t kMask2 = 0x0f0f0f0f;
  constexpr uint32_t kMask3 = 0x03030303;
  uint32_t u[4];
  std::memcpy(u, b + 4, 12);
  u[3] = ((u[2] >> 4) & kMask2) | (((u[1] >> 6) & kMask3) << 4);
  const uint32_t mins_lo = u[1] & kMask1;
  u[1] = (u[2] & kMask2) | (((u[0] >> 6) & kMask3) << 4);
  u[2] = mins_lo;
  u[0] &= kMask1;
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(u));  // sc[0…7], mn[0…7]
  _mm256_store_ps(ds, _mm256_mul_ps(_mm256_set1_ps(f16_at(b)),
                                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))));
  _mm256_store_ps(ms, _mm256_mul_ps(_mm256_set1_ps(-f16_at(b + 2)),
                                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)))));
}

// Calls f(g, w) for g = 0 … elems/16 − 1 with w the block's weights 16g … 16g + 15, bit for bit
// ggml's.
template <DType T, class F>
void for_each16(const unsigned char* b, F f) {
  if constexpr (T == DType::q4_0 || T == DType::q4_1) {
    const __m512 d = _mm512_set1_ps(f16_at(b));
    __m512 lut;
    if constexpr (T == DType::q4_0) {
      lut = _mm512_mul_ps(_mm512_sub_ps(iota16(), _mm512_set1_ps(8.0f)), d);  // q − 8 exact
    } else {
      lut = mul_add(iota16(), d, _mm512_set1_ps(f16_at(b + 2)));
    }
    const unsigned char* qs = b + (T == DType::q4_0 ? 2 : 4);
    const __m512i codes = u8x16(qs);  // the permute reads bits 0–3: the low nibbles
    f(0, _mm512_permutexvar_ps(codes, lut));
    f(1, _mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), lut));
  } else if constexpr (T == DType::q5_0 || T == DType::q5_1) {
    constexpr bool kMin = T == DType::q5_1;
    const __m512 d = _mm512_set1_ps(f16_at(b));
    __m512 lo;
    __m512 hi;
    if constexpr (kMin) {
      const __m512 m = _mm512_set1_ps(f16_at(b + 2));
      lo = mul_add(iota16(), d, m);
      hi = mul_add(_mm512_add_ps(iota16(), _mm512_set1_ps(16.0f)), d, m);
    } else {
      lo = _mm512_mul_ps(_mm512_sub_ps(iota16(), _mm512_set1_ps(16.0f)), d);
      hi = _mm512_mul_ps(iota16(), d);
    }
    const int off = kMin ? 4 : 2;
    uint32_t qh;
    std::memcpy(&qh, b + off, 4);
    const __m512i nib = u8x16(b + off + 4);
    const __m512i sixteen = _mm512_set1_epi32(16);
    for (int g = 0; g < 2; ++g) {
      __m512i q = g == 0 ? _mm512_and_si512(nib, _mm512_set1_epi32(0xF)) : _mm512_srli_epi32(nib, 4);
      q = _mm512_mask_or_epi32(q, static_cast<__mmask16>(qh >> (16 * g)), q, sixteen);
      f(g, _mm512_permutex2var_ps(lo, q, hi));  // bits 0–4: bit 4 picks hi
    }
  } else if constexpr (T == DType::q4_k || T == DType::q5_k) {
    alignas(32) float ds[8];
    alignas(32) float ms[8];
    k4_scales(b, ds, ms);
    const unsigned char* qs = b + (T == DType::q4_k ? 16 : 48);
    for (int c = 0; c < 8; ++c) {
      const __m512 d = _mm512_set1_ps(ds[c]);
      const __m512 m = _mm512_set1_ps(ms[c]);
      const __m512 lo = mul_add(iota16(), d, m);
      for (int g = 0; g < 2; ++g) {
        __m512i q = u8x16(qs + 32 * (c / 2) + 16 * g);
        if ((c & 1) != 0) q = _mm512_srli_epi32(q, 4);
        if constexpr (T == DType::q4_k) {
          f(2 * c + g, _mm512_permutexvar_ps(q, lo));
        } else {
          const __m512 hi = mul_add(_mm512_add_ps(iota16(), _mm512_set1_ps(16.0f)), d, m);
          const __m128i qh = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 + 16 * g));
          const __mmask16 fifth = _mm_test_epi8_mask(qh, _mm_set1_epi8(static_cast<char>(1 << c)));
          q = _mm512_and_si512(q, _mm512_set1_epi32(0xF));
          q = _mm512_mask_or_epi32(q, fifth, q, _mm512_set1_epi32(16));
          f(2 * c + g, _mm512_permutex2var_ps(lo, q, hi));
        }
      }
    }
  } else {  // q6_k: codes put together 32 at a time in bytes, then converted and scaled
    alignas(64) float ds[16];
    const __m512 d = _mm512_set1_ps(f16_at(b + 208));
    _mm512_store_ps(ds, _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                                              reinterpret_cast<const __m128i*>(b + 192))))));
    alignas(32) int8_t codes[128];
    const __m256i low4 = _mm256_set1_epi8(0xF);
    const __m256i three = _mm256_set1_epi8(3);
    const __m256i bias = _mm256_set1_epi8(32);
    for (int h = 0; h < 2; ++h) {
      const __m256i l0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h));
      const __m256i l1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h + 32));
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h));
      const __m256i lo[4] = {_mm256_and_si256(l0, low4), _mm256_and_si256(l1, low4),
                             _mm256_and_si256(_mm256_srli_epi16(l0, 4), low4),
                             _mm256_and_si256(_mm256_srli_epi16(l1, 4), low4)};
      const __m256i hb[4] = {_mm256_and_si256(qh, three),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 2), three),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 4), three),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 6), three)};
      for (int t = 0; t < 4; ++t) {
        const __m256i q =
            _mm256_sub_epi8(_mm256_or_si256(lo[t], _mm256_slli_epi16(hb[t], 4)), bias);
        _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32 * t), q);
      }
      for (int g = 0; g < 8; ++g) {
        const __m512i q = _mm512_cvtepi8_epi32(
            _mm_load_si128(reinterpret_cast<const __m128i*>(codes + 16 * g)));
        f(8 * h + g, _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(ds[8 * h + g])));
      }
    }
  }
}

// x · row over k columns: four accumulators, weights 16g … 16g + 15 of a block into accumulator
// g mod 4, summed (a0 + a1) + (a2 + a3) at the end.
template <DType T>
float dot_row(const unsigned char* row, const float* x, int64_t k) {
  constexpr Sizes kS = sizes<T>();
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
  const int64_t blocks = k / kS.elems;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* xb = x + blk * kS.elems;
    for_each16<T>(row + blk * kS.bytes, [&](int g, __m512 w) {
      acc[g & 3] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xb + 16 * g), acc[g & 3]);
    });
  }
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
  for (int half = 8; half > 0; half /= 2)  // a fixed pairwise tree
    for (int i = 0; i < half; ++i) lanes[i] += lanes[i + half];
  return lanes[0];
}

template <DType T>
void matvec(const float* x, int64_t k, const unsigned char* w, const float* bias, float* y,
            int64_t o_begin, int64_t o_end) {
  const uint64_t row_bytes = static_cast<uint64_t>(k / sizes<T>().elems) * sizes<T>().bytes;
  for (int64_t o = o_begin; o < o_end; ++o) {
    _mm_prefetch(reinterpret_cast<const char*>(w + (o + 1) * row_bytes), _MM_HINT_T0);
    const float s = dot_row<T>(w + o * row_bytes, x, k);
    y[o] = bias != nullptr ? s + bias[o] : s;
  }
}

struct TileSource {
  const unsigned char* w;
  uint64_t row_bytes;
};

template <DType T>
void fill_tile(const void* ctx, int64_t g, int64_t rows, int64_t kb, int64_t kc, float* tile) {
  constexpr Sizes kS = sizes<T>();
  const auto& src = *static_cast<const TileSource*>(ctx);
  for (int64_t r = 0; r < rows; ++r) {
    const unsigned char* row = src.w + static_cast<uint64_t>(g + r) * src.row_bytes;
    float* dst = tile + r * avx2::kLinearTileCols;
    for (int64_t j = 0; j < kc; j += kS.elems) {
      float* out = dst + j;
      for_each16<T>(row + (kb + j) / kS.elems * kS.bytes,
                    [&](int i, __m512 w) { _mm512_storeu_ps(out + 16 * i, w); });
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
  avx2::gemm_filled(x, m, k, n, bias, y, o_begin, o_end, fill_tile<T>, &src);
}

}  // namespace

void ggml_linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                      const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  switch (wdt) {
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
    case DType::q6_k:
      return linear_t<DType::q6_k>(x, m, k, w, n, bias, y, o_begin, o_end);
    default:  // q8_0 (no table to gain) and every other dtype: the AVX2 path
      return avx2::linear_rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
  }
}

}  // namespace ferry::kernels::cpu::detail::avx512
