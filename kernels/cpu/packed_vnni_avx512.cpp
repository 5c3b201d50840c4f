// linear on ferry's packed weights (q8, q4_g64, q4_g128) with AVX-512 F/BW/VL and AVX512-VNNI
// (VPDPBUSD, VPDPWSSD), chosen at run time where the processor has them (packed.cpp decides):
// kernels/cpu/detail/packed_avx512_body.inc built with -mavx512vnni (kernels/CMakeLists.txt).
#if !defined(__AVX512VNNI__)
#error "packed_vnni_avx512.cpp is built with -mavx512vnni (kernels/CMakeLists.txt)"
#endif
#define FERRY_PACKED_ENTRY packed_linear_rows_vnni
#include "kernels/cpu/detail/packed_avx512_body.inc"
