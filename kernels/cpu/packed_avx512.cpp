// linear on ferry's packed weights (q8, q4_g64, q4_g128) with AVX-512 F/BW/VL, chosen at run time
// over packed_avx2.cpp where the processor has it and lacks AVX512-VNNI (packed.cpp decides). The
// kernels are kernels/cpu/detail/packed_avx512_body.inc, built once more with VNNI in
// packed_vnni_avx512.cpp; both give the same bits.
#define FERRY_PACKED_ENTRY packed_linear_rows
#include "kernels/cpu/detail/packed_avx512_body.inc"
