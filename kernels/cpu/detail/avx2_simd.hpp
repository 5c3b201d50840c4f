// AVX2 building blocks shared by the *_avx2.cpp kernel files, and only by them: they need
// -mavx2 -mfma -mf16c. Everything here has internal linkage (an unnamed namespace), so no copy
// compiled with AVX2 can be picked by the linker for code that runs on a processor without it.
#pragma once

#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "kernels/cpu/detail/avx2_simd.hpp is for files compiled with -mavx2 -mfma -mf16c"
#endif

#include <immintrin.h>

#include <cstdint>
#include <cstring>

namespace ferry::kernels::cpu::detail::avx2 {
namespace {  // NOLINT(cert-dcl59-cpp,google-build-namespaces): internal linkage on purpose

inline int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// The four sums of a, b, c, d, each as ((e0+e1)+(e2+e3))+((e4+e5)+(e6+e7)) — the same tree for
// every argument position, so a row's result does not depend on which slot it occupies.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

inline float hsum(__m256 a) {
  const __m256 zero = _mm256_setzero_ps();
  return _mm_cvtss_f32(hsum4(a, zero, zero, zero));
}

// Loading 8 weights (or 1) of each storage type as f32. All three conversions are exact:
// VCVTPH2PS widens f16 subnormals to normal f32 values (tests/kernels checks every f16 bit
// pattern), and bf16 is the high half of an f32.
struct F32Weights {
  using Elem = float;
  static __m256 load8(const Elem* p) { return _mm256_loadu_ps(p); }
  static float load1(const Elem* p) { return *p; }
};

struct F16Weights {
  using Elem = uint16_t;
  static __m256 load8(const Elem* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static float load1(const Elem* p) { return _cvtsh_ss(*p); }
};

struct BF16Weights {
  using Elem = uint16_t;
  static __m256 load8(const Elem* p) {
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
  }
  static float load1(const Elem* p) {
    const uint32_t bits = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
  }
};

}  // namespace
}  // namespace ferry::kernels::cpu::detail::avx2
