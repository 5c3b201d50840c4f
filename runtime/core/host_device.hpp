// FERRY_HD marks inline math shared by the CPU kernels and the CUDA kernels; the header
// compiles with a plain C++ compiler too.
#pragma once

#if defined(__CUDACC__)
#define FERRY_HD __host__ __device__ __forceinline__
#else
#define FERRY_HD inline
#endif
