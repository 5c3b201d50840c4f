// The row dots of FERRY_GGUF_PRODUCTS=fast (ggml_dot.hpp) with AVX2: maddubs, then madd (the
// kernels are in detail/ggml_dot_body.inc).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ggml_dot.hpp"
#include "runtime/core/error.hpp"

namespace ferry::kernels::cpu::ggml_dot::avx2 {
namespace {

struct Ops {
  static __m256i madd_add(__m256i acc, __m256i p, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
  }
  static __m256i dot_u8s8_add(__m256i acc, __m256i a, __m256i b) {
    return _mm256_add_epi32(acc,
                            _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)));
  }
};

#include "kernels/cpu/detail/ggml_dot_body.inc"
#include "kernels/cpu/detail/ggml_panel_body.inc"

}  // namespace

#include "kernels/cpu/detail/ggml_dot_exports.inc"

}  // namespace ferry::kernels::cpu::ggml_dot::avx2
