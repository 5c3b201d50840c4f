#include "runtime/cuda/cuda_device.hpp"

#include <fmt/format.h>
#include <algorithm>
#include <chrono>
#include <cstring>

#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/resources.hpp"

namespace ferry::cuda {

namespace {

struct Probe {
  int count = 0;
  cudaError_t err = cudaSuccess;
};

Probe probe() noexcept {
  Probe p;
  p.err = cudaGetDeviceCount(&p.count);
  if (p.err != cudaSuccess) {
    p.count = 0;
    (void)cudaGetLastError();  // not sticky, but leave no trace for the next call
  }
  return p;
}

}  // namespace

int device_count() noexcept { return probe().count; }

std::string no_device_reason() {
  const Probe p = probe();
  if (p.err != cudaSuccess)
    return fmt::format("cudaGetDeviceCount: {} ({})", cudaGetErrorString(p.err),
                       cudaGetErrorName(p.err));
  if (p.count == 0) return "cudaGetDeviceCount reports 0 devices";
  return {};
}

CudaDevice::CudaDevice(int ordinal) : ordinal_(ordinal) {
  const Probe p = probe();
  if (p.count == 0)
    throw CudaError(fmt::format(
        "no CUDA device found: {}; run without --device cuda to use the CPU", no_device_reason()));
  if (ordinal < 0 || ordinal >= p.count)
    throw CudaError(fmt::format("CUDA device {} does not exist; this machine has {} (0 … {})",
                                ordinal, p.count, p.count - 1));
  cudaDeviceProp prop{};
  FERRY_CUDA_TRY(cudaGetDeviceProperties(&prop, ordinal));
  cc_ = prop.major * 10 + prop.minor;
  name_ = fmt::format("{} (sm_{})", prop.name, cc_);
}

std::optional<DeviceMemoryInfo> CudaDevice::memory_info() const {
  int current = 0;
  FERRY_CUDA_TRY(cudaGetDevice(&current));
  FERRY_CUDA_TRY(cudaSetDevice(ordinal_));
  std::size_t free_bytes = 0;
  std::size_t total_bytes = 0;
  const cudaError_t err = cudaMemGetInfo(&free_bytes, &total_bytes);
  FERRY_CUDA_TRY(cudaSetDevice(current));
  FERRY_CUDA_TRY(err);
  return DeviceMemoryInfo{free_bytes, total_bytes};
}

std::optional<double> CudaDevice::measure_h2d_bytes_per_s(uint64_t nbytes) const {
  int current = 0;
  FERRY_CUDA_TRY(cudaGetDevice(&current));
  FERRY_CUDA_TRY(cudaSetDevice(ordinal_));
  struct Restore {
    int device;
    ~Restore() { (void)cudaSetDevice(device); }
  } restore{current};
  const std::size_t n = std::max<std::size_t>(nbytes / 4096 * 4096, 4096);
  AlignedBuffer host(n, 4096);
  std::memset(host.data(), 1, n);  // fault the pages in before registering them
  const HostRegistration pinned(host.data(), n);
  const DeviceBuffer dev(n);
  const CudaStream stream;
  double best = 0;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    FERRY_CUDA_TRY(
        cudaMemcpyAsync(dev.data(), host.data(), n, cudaMemcpyHostToDevice, stream.get()));
    FERRY_CUDA_TRY(cudaStreamSynchronize(stream.get()));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0 && s > 0) best = std::max(best, static_cast<double>(n) / s);  // the first warms up
  }
  return best > 0 ? std::optional<double>(best) : std::nullopt;
}

std::vector<std::string> describe_devices() {
  std::vector<std::string> lines;
  const int n = device_count();
  for (int i = 0; i < n; ++i) {
    try {
      const CudaDevice d(i);
      const auto mem = d.memory_info();
      lines.push_back(fmt::format("cuda:{} {}, {} free of {}", i, d.name(),
                                  format_bytes(mem->free_bytes), format_bytes(mem->total_bytes)));
    } catch (const Error& e) {
      lines.push_back(fmt::format("cuda:{} unusable: {}", i, e.what()));
    }
  }
  return lines;
}

std::string compiled_architectures() { return FERRY_CUDA_ARCHITECTURES; }

std::string runtime_version() {
  int v = 0;
  if (cudaRuntimeGetVersion(&v) != cudaSuccess) return "unknown";
  return fmt::format("{}.{}", v / 1000, (v % 1000) / 10);
}

}  // namespace ferry::cuda
