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

// The fifth bits of a q5_0 / q5_1 block's 32 weights (bit l of qh is weight l's) as bytes of
// 0 or 16: each byte of qh spread over 8 bytes, then each byte tested for its own bit.
__m256i q5_high_bytes(uint32_t qh) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(static_cast<int>(qh)),
      _mm256_setr_epi64x(0x0000000000000000, 0x0101010101010101, 0x0202020202020202,
                         0x0303030303030303));
  const __m256i bits = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ULL));
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits),
                          _mm256_set1_epi8(16));
}

// A q4_k / q5_k block's 8 sub-block scales d·sc and minima −(dmin·mn) as f32 (ggml's
// get_scale_min_k4 for all eight at once, on 32-bit words as ggml's own SIMD code unpacks them).
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

// Calls f(g, w) for g = 0 … elems/8 − 1 with w the block's weights 8g … 8g + 7, bit for bit
// ggml's. The codes of a run of weights are put together as bytes in a small stack buffer first
// (whole 16- or 32-byte vectors), then widened 8 at a time.
template <DType T, class F>
void for_each8(const unsigned char* b, F f) {
  alignas(32) uint8_t codes[128];
  if constexpr (T == DType::q8_0) {
    const __m256 d = _mm256_set1_ps(f16_at(b));
    for (int g = 0; g < 4; ++g)
      f(g, scale(_mm256_cvtepi8_epi32(
                     _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + 2 + 8 * g))),
                 d));
  } else if constexpr (T == DType::q4_0 || T == DType::q4_1 || T == DType::q5_0 ||
                       T == DType::q5_1) {
    constexpr bool kFive = T == DType::q5_0 || T == DType::q5_1;
    constexpr bool kMin = T == DType::q4_1 || T == DType::q5_1;
    constexpr int kQs = (kMin ? 4 : 2) + (kFive ? 4 : 0);
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + kQs));
    const __m128i low4 = _mm_set1_epi8(0xF);
    __m256i q = _mm256_setr_m128i(_mm_and_si128(v, low4),
                                  _mm_and_si128(_mm_srli_epi16(v, 4), low4));
    if constexpr (kFive) {
      uint32_t qh;
      std::memcpy(&qh, b + kQs - 4, 4);
      q = _mm256_or_si256(q, q5_high_bytes(qh));
    }
    _mm256_store_si256(reinterpret_cast<__m256i*>(codes), q);
    const __m256 d = _mm256_set1_ps(f16_at(b));
    const __m256i offset = _mm256_set1_epi32(kMin ? 0 : (kFive ? 16 : 8));
    for (int g = 0; g < 4; ++g) {
      const __m256i c = _mm256_sub_epi32(u8x8(codes + 8 * g), offset);
      if constexpr (kMin) {
        f(g, scale_add(c, d, _mm256_set1_ps(f16_at(b + 2))));
      } else {
        f(g, scale(c, d));
      }
    }
  } else if constexpr (T == DType::q4_k || T == DType::q5_k) {
    alignas(32) float ds[8];
    alignas(32) float ms[8];
    k4_scales(b, ds, ms);
    const unsigned char* qs = b + (T == DType::q4_k ? 16 : 48);
    const __m256i low4 = _mm256_set1_epi8(0xF);
    __m256i qh;
    if constexpr (T == DType::q5_k) qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
    for (int j = 0; j < 4; ++j) {  // chunks 2j (low nibbles) and 2j + 1 (high nibbles)
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs + 32 * j));
      __m256i lo = _mm256_and_si256(v, low4);
      __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
      if constexpr (T == DType::q5_k) {
        // Bit 2j of qh[l] is chunk 2j's fifth bit, bit 2j + 1 chunk 2j + 1's: moved to bit 4.
        const __m256i sixteen = _mm256_set1_epi8(16);
        const __m256i h = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * j));
        lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16(h, 4), sixteen));
        hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16(h, 3), sixteen));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes), lo);
      _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32), hi);
      for (int h = 0; h < 2; ++h) {
        const __m256 dv = _mm256_broadcast_ss(ds + 2 * j + h);
        const __m256 mv = _mm256_broadcast_ss(ms + 2 * j + h);
        for (int g = 0; g < 4; ++g)
          f(8 * j + 4 * h + g, scale_add(u8x8(codes + 32 * h + 8 * g), dv, mv));
      }
    }
  } else {  // q6_k: per half h, ql (64 bytes) and qh (32) give chunks 4h … 4h + 3
    alignas(32) float ds[16];
    const __m128i sc = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192));
    const __m256 d = _mm256_set1_ps(f16_at(b + 208));
    _mm256_store_ps(ds, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
    _mm256_store_ps(ds + 8,
                    _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))));
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
      const __m256i hi[4] = {_mm256_and_si256(qh, three),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 2), three),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 4), three),
                             _mm256_and_si256(_mm256_srli_epi16(qh, 6), three)};
      for (int t = 0; t < 4; ++t) {
        const __m256i q = _mm256_sub_epi8(_mm256_or_si256(lo[t], _mm256_slli_epi16(hi[t], 4)), bias);
        _mm256_store_si256(reinterpret_cast<__m256i*>(codes + 32 * t), q);
      }
      for (int g = 0; g < 16; ++g) {
        const __m256i c = _mm256_cvtepi8_epi32(
            _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + 8 * g)));
        f(16 * h + g, scale(c, _mm256_broadcast_ss(ds + 8 * h + g / 2)));
      }
    }
  }
}

// x · row over k columns (k a multiple of the block): four accumulators, weights 8g … 8g + 7 of
// a block into accumulator g mod 4, summed (a0 + a1) + (a2 + a3) at the end.
template <DType T>
float dot_row(const unsigned char* row, const float* x, int64_t k) {
  constexpr Sizes kS = sizes<T>();
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  const int64_t blocks = k / kS.elems;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const float* xb = x + blk * kS.elems;
    for_each8<T>(row + blk * kS.bytes, [&](int g, __m256 w) {
      acc[g & 3] = _mm256_fmadd_ps(w, _mm256_loadu_ps(xb + 8 * g), acc[g & 3]);
    });
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
  const auto& src = *static_cast<const TileSource*>(ctx);
  for (int64_t r = 0; r < rows; ++r) {
    const unsigned char* row = src.w + static_cast<uint64_t>(g + r) * src.row_bytes;
    float* dst = tile + r * kLinearTileCols;
    for (int64_t j = 0; j < kc; j += kS.elems) {
      float* out = dst + j;
      for_each8<T>(row + (kb + j) / kS.elems * kS.bytes,
                   [&](int i, __m256 w) { _mm256_store_ps(out + 8 * i, w); });
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
