// The row dots of FERRY_GGUF_PRODUCTS=fast (ggml_dot.hpp) with AVX2: maddubs, then madd (the
// kernels are in detail/ggml_dot_body.inc).
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/ggml_dot.hpp"

namespace ferry::kernels::cpu::ggml_dot::avx2 {
namespace {

struct Ops {
  static __m256i madd_add(__m256i acc, __m256i p, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
  }
  static __m256i dot_u8s8(__m256i a, __m256i b) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1));
  }
};

#include "kernels/cpu/detail/ggml_dot_body.inc"

}  // namespace

float dot_q4_k(const unsigned char* row, const Q8K* x, int64_t nb) {
  float out;
  dot_k4_rows<false, 1>(row, x, nb, &out);
  return out;
}
float dot_q5_k(const unsigned char* row, const Q8K* x, int64_t nb) {
  float out;
  dot_k4_rows<true, 1>(row, x, nb, &out);
  return out;
}
float dot_q6_k(const unsigned char* row, const Q8K* x, int64_t nb) {
  float out;
  dot_q6_k_rows<1>(row, x, nb, &out);
  return out;
}
float dot_q8_0(const unsigned char* row, const Q80* x, int64_t nb) {
  float out;
  dot_32_rows<Small::q8_0, 1>(row, x, nb, &out);
  return out;
}
float dot_q4_0(const unsigned char* row, const Q80* x, int64_t nb) {
  float out;
  dot_32_rows<Small::q4_0, 1>(row, x, nb, &out);
  return out;
}
float dot_q5_0(const unsigned char* row, const Q80* x, int64_t nb) {
  float out;
  dot_32_rows<Small::q5_0, 1>(row, x, nb, &out);
  return out;
}

void rows_k(DType t, const unsigned char* row, const Q8K* x, int64_t nb, int rows, float* out) {
  if (t == DType::q4_k) {
    dot_rows_any<Q8K, Q4K>(row, x, nb, rows, out);
  } else if (t == DType::q5_k) {
    dot_rows_any<Q8K, Q5K>(row, x, nb, rows, out);
  } else {
    dot_rows_any<Q8K, Q6K>(row, x, nb, rows, out);
  }
}
void rows_32(DType t, const unsigned char* row, const Q80* x, int64_t nb, int rows, float* out) {
  if (t == DType::q8_0) {
    dot_rows_any<Q80, Q8_0>(row, x, nb, rows, out);
  } else if (t == DType::q4_0) {
    dot_rows_any<Q80, Q4_0>(row, x, nb, rows, out);
  } else {
    dot_rows_any<Q80, Q5_0>(row, x, nb, rows, out);
  }
}

}  // namespace ferry::kernels::cpu::ggml_dot::avx2
