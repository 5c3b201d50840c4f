// Helpers for the GPU tests: skip without a device, and copy vectors to and from device memory
// on a test stream.
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <vector>

#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device.hpp"
#include "runtime/cuda/resources.hpp"

namespace ferry::cuda::test {

// GTEST_SKIP() must run in the test body or SetUp; this fixture does it in SetUp.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (device_count() == 0) GTEST_SKIP() << "no CUDA device: " << no_device_reason();
    FERRY_CUDA_TRY(cudaSetDevice(0));
    stream_.emplace();
  }
  const CudaStream& stream() const { return *stream_; }

  template <class T>
  DeviceBuffer upload(const std::vector<T>& host) const {
    DeviceBuffer d(host.size() * sizeof(T));
    FERRY_CUDA_TRY(cudaMemcpyAsync(d.data(), host.data(), host.size() * sizeof(T),
                                   cudaMemcpyHostToDevice, stream_->get()));
    stream_->synchronize();
    return d;
  }
  template <class T>
  std::vector<T> download(const DeviceBuffer& d, std::size_t n) const {
    std::vector<T> host(n);
    FERRY_CUDA_TRY(cudaMemcpyAsync(host.data(), d.data(), n * sizeof(T), cudaMemcpyDeviceToHost,
                                   stream_->get()));
    stream_->synchronize();
    return host;
  }

 private:
  std::optional<CudaStream> stream_;
};

}  // namespace ferry::cuda::test
