// The row dots of FERRY_GGUF_PRODUCTS=fast (ggml_dot.hpp) with AVX512-VNNI on 256-bit vectors:
// vpdpbusd for q8_0's byte products and vpdpwssd for the K formats' scaling, the same integers as
// the AVX2 file's (the kernels are in detail/ggml_dot_body.inc). Called only where the processor
// has AVX512-VL and -VNNI (ggml_dot.cpp checks).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ggml_dot.hpp"
#include "runtime/core/error.hpp"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512vnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif

namespace ferry::kernels::cpu::ggml_dot::vnni {
namespace {

struct Ops {
  static __m256i madd_add(__m256i acc, __m256i p, __m256i s) {
    return _mm256_dpwssd_epi32(acc, p, s);
  }
  static __m256i dot_u8s8_add(__m256i acc, __m256i a, __m256i b) {
    return _mm256_dpbusd_epi32(acc, a, b);
  }
};

#define FERRY_GGML_DOT_512 1
// GCC 12's AVX-512 headers start broadcasts and inserts from _mm512_undefined_*(), which its
// flow analysis then reports as uninitialized (as packed_avx512_body.inc notes).
#if !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "kernels/cpu/detail/ggml_dot_body.inc"
#include "kernels/cpu/detail/ggml_panel_body.inc"

}  // namespace

#include "kernels/cpu/detail/ggml_dot_exports.inc"
#undef FERRY_GGML_DOT_512

}  // namespace ferry::kernels::cpu::ggml_dot::vnni

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
