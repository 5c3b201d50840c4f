// cuBLAS is opened on first use (kernels/cuda/cublas_loader.cpp), not linked: the library is
// found where the toolkit was at build time, and its entry points forward without crashing
// even where no driver or GPU is present. Runs everywhere the CUDA backend is built.
#include <gtest/gtest.h>

#include "kernels/cuda/ops.hpp"
#include "runtime/cuda/cuda_device.hpp"

namespace ferry::kernels::cuda {
namespace {

TEST(CublasLoader, OpensTheToolkitsLibrary) {
  EXPECT_EQ(cublas_load_error(), "") << "libcublas was not found";
}

TEST(CublasLoader, ForwardsCallsWithOrWithoutADevice) {
  cublasHandle_t h = nullptr;
  const cublasStatus_t st = cublasCreate(&h);
  if (ferry::cuda::device_count() == 0) {
    EXPECT_NE(st, CUBLAS_STATUS_SUCCESS);  // no driver or device: an error status, not a crash
  } else {
    ASSERT_EQ(st, CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(cublasDestroy(h), CUBLAS_STATUS_SUCCESS);
  }
}

}  // namespace
}  // namespace ferry::kernels::cuda
