// Matrix products through cuBLAS. ferry's weights are PyTorch's row-major [n, k] (out, in); in
// cuBLAS's column-major terms that is a k×n matrix W, and the row-major activations [m, k] are
// k×m, so y (row-major [m, n], column-major n×m) = Wᵀ·x: one GemmEx with op T on the weights and
// leading dimensions k, k, n. Inputs share the weights' dtype, the output and the accumulation
// are f32; f32 weights use pedantic f32 so that no TF32 shortcut spoils the checking path.
#include <cublas_v2.h>

#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {

cublasStatus_t linear(cublasHandle_t handle, const void* x, int64_t m, int64_t k, const void* w,
                      DType wdt, int64_t n, float* y, int64_t ldy) {
  if (m <= 0 || n <= 0) return CUBLAS_STATUS_SUCCESS;
  if (ldy == 0) ldy = n;
  if (m > 2147483647 || n > 2147483647 || k > 2147483647 || k <= 0 || ldy < n ||
      ldy > 2147483647)
    return CUBLAS_STATUS_INVALID_VALUE;
  cudaDataType_t type;
  cublasComputeType_t compute;
  switch (wdt) {
    case DType::f32:
      type = CUDA_R_32F;
      compute = CUBLAS_COMPUTE_32F_PEDANTIC;
      break;
    case DType::f16:
      type = CUDA_R_16F;
      compute = CUBLAS_COMPUTE_32F;
      break;
    case DType::bf16:
      type = CUDA_R_16BF;
      compute = CUBLAS_COMPUTE_32F;
      break;
    default:
      return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const int ni = static_cast<int>(n);
  const int mi = static_cast<int>(m);
  const int ki = static_cast<int>(k);
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, ni, mi, ki, &alpha, w, type, ki, x, type,
                      ki, &beta, y, CUDA_R_32F, static_cast<int>(ldy), compute,
                      CUBLAS_GEMM_DEFAULT);
}

}  // namespace ferry::kernels::cuda
