// The row dots of FERRY_GGUF_PRODUCTS=fast (ggml_dot.hpp) with AVX2: a weight row's codes times
// the q8 activations, summed exactly in integers per block (_mm256_maddubs_epi16: unsigned weight
// codes × signed activations into int16 pairs, which cannot overflow: at most 2·63·127; then
// _mm256_madd_epi16 by the sub-block scales into int32), and scaled per block in f32:
//
//   q4_k  Σ_b  (d_x·d)·Σ_j sc_j·Σ q·q8  −  (d_x·dmin)·Σ_j mn_j·(bsums of sub-block j)
//   q6_k  Σ_b  (d·d_x)·(Σ_s sc_s·Σ q·q8  −  32·Σ_s sc_s·bsums_s)      (q the unsigned 6-bit code)
//   q8_0  Σ_b  (d_w·d_x)·Σ w·x                                         (f32 lanes, summed at the end)
//
// The K formats sum each block's integers horizontally and add the block's f32 term in order, so
// their result is a plain scalar loop's; q8_0 keeps eight f32 partial sums. Rows sit at no
// alignment: every load is unaligned. Only file-local functions (see detail/paths.hpp).
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/ggml_dot.hpp"

namespace ferry::kernels::cpu::ggml_dot::avx2 {
namespace {

float f16_at(const unsigned char* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

__m256i load(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

int hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The eight 6-bit scales and minimums of a q4_k block from its 12 scale bytes (ggml's
// get_scale_min_k4, restated for eight at once on 32-bit words: bytes 0–3 hold sub-blocks 0–3's
// scales in their low 6 bits, bytes 4–7 their minimums; bytes 8–11 the low 4 bits of sub-blocks
// 4–7's scale (low nibble) and minimum (high nibble), whose top 2 bits are the top bits of bytes
// 0–3 and 4–7). Byte j of sc / mn is sub-block j's.
void scales_mins_k4(const unsigned char* q, uint64_t& sc, uint64_t& mn) {
  uint32_t a;
  uint32_t b;
  uint32_t c;
  std::memcpy(&a, q, 4);
  std::memcpy(&b, q + 4, 4);
  std::memcpy(&c, q + 8, 4);
  const uint32_t sc_hi = (c & 0x0F0F0F0Fu) | (((a >> 6) & 0x03030303u) << 4);
  const uint32_t mn_hi = ((c >> 4) & 0x0F0F0F0Fu) | (((b >> 6) & 0x03030303u) << 4);
  sc = (a & 0x3F3F3F3Fu) | (uint64_t{sc_hi} << 32);
  mn = (b & 0x3F3F3F3Fu) | (uint64_t{mn_hi} << 32);
}

// A byte shuffle that spreads 16-bit word j of a 128-bit lane over the whole lane.
__m128i word_mask(int j) { return _mm_set1_epi16(static_cast<short>((2 * j) | ((2 * j + 1) << 8))); }

}  // namespace

float dot_q4_k(const unsigned char* row, const Q8K* x, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const unsigned char* b = row + i * 144;
    const Q8K& y = x[i];
    uint64_t sc;
    uint64_t mn;
    scales_mins_k4(b + 4, sc, mn);
    // The scales as 16-bit words in both lanes; the minimums each twice, to meet bsums' pairs.
    const __m256i sc16 =
        _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(static_cast<int64_t>(sc))));
    const __m128i mn8 = _mm_cvtsi64_si128(static_cast<int64_t>(mn));
    const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn8, mn8));
    __m256i acc = _mm256_setzero_si256();
    for (int p = 0; p < 4; ++p) {
      const __m256i q = load(b + 16 + 32 * p);
      const __m256i lo = _mm256_and_si256(q, m4);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      const __m256i plo = _mm256_maddubs_epi16(lo, load(y.qs + 64 * p));
      const __m256i phi = _mm256_maddubs_epi16(hi, load(y.qs + 64 * p + 32));
      const __m256i slo = _mm256_shuffle_epi8(sc16, _mm256_broadcastsi128_si256(word_mask(2 * p)));
      const __m256i shi =
          _mm256_shuffle_epi8(sc16, _mm256_broadcastsi128_si256(word_mask(2 * p + 1)));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(plo, slo));
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(phi, shi));
    }
    const __m256i mins = _mm256_madd_epi16(load(y.bsums), mn16);
    const float d = y.d * f16_at(b);
    const float dmin = y.d * f16_at(b + 2);
    const float term = d * static_cast<float>(hsum(acc));
    sum += term - dmin * static_cast<float>(hsum(mins));
  }
  return sum;
}

float dot_q6_k(const unsigned char* row, const Q8K* x, int64_t nb) {
  const __m256i m4 = _mm256_set1_epi8(0xF);
  const __m256i m3 = _mm256_set1_epi8(3);
  float sum = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    const unsigned char* b = row + i * 210;
    const Q8K& y = x[i];
    // The 16 int8 scales as 16-bit words; half h's eight in both lanes of sc_half[h].
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 192)));
    const __m256i sc_half[2] = {_mm256_permute2x128_si256(sc16, sc16, 0x00),
                                _mm256_permute2x128_si256(sc16, sc16, 0x11)};
    // The codes' offset of 32: Σ_s sc_s·bsums_s, taken 32 times.
    __m256i acc = _mm256_sub_epi32(_mm256_setzero_si256(),
                                   _mm256_slli_epi32(_mm256_madd_epi16(sc16, load(y.bsums)), 5));
    for (int h = 0; h < 2; ++h) {
      const __m256i ql0 = load(b + 64 * h);
      const __m256i ql1 = load(b + 64 * h + 32);
      const __m256i qh = load(b + 128 + 32 * h);
      for (int t = 0; t < 4; ++t) {
        const __m256i ql = (t & 1) != 0 ? ql1 : ql0;
        const __m256i lo = t >= 2 ? _mm256_and_si256(_mm256_srli_epi16(ql, 4), m4)
                                  : _mm256_and_si256(ql, m4);
        const __m256i hi =
            _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * t)), m3);
        const __m256i q = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
        const __m256i p = _mm256_maddubs_epi16(q, load(y.qs + 32 * (4 * h + t)));
        // Elements 0–15 of the chunk take scale 2t of the half, 16–31 scale 2t + 1.
        const __m256i s = _mm256_shuffle_epi8(
            sc_half[h], _mm256_set_m128i(word_mask(2 * t + 1), word_mask(2 * t)));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
      }
    }
    const float d = f16_at(b + 208) * y.d;
    sum += d * static_cast<float>(hsum(acc));
  }
  return sum;
}

float dot_q8_0(const unsigned char* row, const Q80* x, int64_t nb) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < nb; ++i) {
    const unsigned char* b = row + i * 34;
    const __m256i w = load(b + 2);
    const __m256i xv = load(x[i].qs);
    // |w| (unsigned; −128 reads as 128) times x with w's sign: at most 2·128·127 per pair.
    const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(xv, w));
    const __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(f16_at(b) * x[i].d), s, acc);
  }
  return hsum(acc);
}

}  // namespace ferry::kernels::cpu::ggml_dot::avx2
