// Which implementation multiplies ferry's packed weights (q8, q4_g64, q4_g128), for `ferry info`
// and the tests. The choice is made once per process, like kernels/cpu/ops.hpp's simd_level().
#pragma once

#include <string_view>

namespace ferry::kernels::cpu {

// "avx512-vnni", "avx512" or "avx2" where the AVX2 path runs (simd_level() == "avx2": AVX-512
// F/BW/VL, with AVX512-VNNI or without, where the processor has them and FERRY_SIMD is not
// "avx2"), else simd_level().
std::string_view packed_linear_level();

}  // namespace ferry::kernels::cpu
