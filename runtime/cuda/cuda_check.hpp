// Checking CUDA and cuBLAS calls: every call that returns a status goes through FERRY_CUDA_TRY or
// FERRY_CUBLAS_TRY, which throw ferry::CudaError naming the call, its error and file:line, and
// every kernel launch through FERRY_CUDA_LAUNCH (a launcher's cudaGetLastError). Only
// runtime/cuda includes this header.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

namespace ferry::cuda::detail {
[[noreturn]] void throw_cuda_error(const char* call, cudaError_t err, const char* file, int line);
[[noreturn]] void throw_cublas_error(const char* call, cublasStatus_t status, const char* file,
                                     int line);
const char* cublas_status_name(cublasStatus_t status) noexcept;
}  // namespace ferry::cuda::detail

#define FERRY_CUDA_TRY(call)                                                               \
  do {                                                                                     \
    const cudaError_t ferry_cuda_err_ = (call);                                            \
    if (ferry_cuda_err_ != cudaSuccess) [[unlikely]]                                       \
      ::ferry::cuda::detail::throw_cuda_error(#call, ferry_cuda_err_, __FILE__, __LINE__); \
  } while (0)

// A launcher returns cudaGetLastError() after its launch: a bad configuration or a sticky error
// from an earlier kernel shows up here, named by the launch that saw it.
#define FERRY_CUDA_LAUNCH(launch) FERRY_CUDA_TRY(launch)

#define FERRY_CUBLAS_TRY(call)                                                                    \
  do {                                                                                            \
    const cublasStatus_t ferry_cublas_status_ = (call);                                           \
    if (ferry_cublas_status_ != CUBLAS_STATUS_SUCCESS) [[unlikely]]                               \
      ::ferry::cuda::detail::throw_cublas_error(#call, ferry_cublas_status_, __FILE__, __LINE__); \
  } while (0)
