// CudaDevice: the Device interface for one CUDA GPU (name with its sm_XY, free and total memory
// from cudaMemGetInfo), and the questions the command line asks before choosing a backend:
// whether a device exists and, if not, why. No CUDA header here, so the tools and the planner
// can include it.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/core/device.hpp"

namespace ferry::cuda {

class CudaDevice final : public Device {
 public:
  // Throws CudaError "no CUDA device found: …; run without --device cuda to use the CPU" when
  // there is no usable device, or naming the ordinal when it does not exist.
  explicit CudaDevice(int ordinal = 0);
  DeviceKind kind() const override { return DeviceKind::cuda; }
  std::string name() const override { return name_; }  // "NVIDIA T4 (sm_75)"
  std::optional<DeviceMemoryInfo> memory_info() const override;
  // cudaMemcpyAsync from registered, page-aligned host memory on a non-blocking stream; the
  // best of four copies after a warm-up.
  std::optional<double> measure_h2d_bytes_per_s(uint64_t nbytes) const override;

  int ordinal() const { return ordinal_; }
  int compute_capability() const { return cc_; }  // 75 for sm_75
  bool has_bf16() const { return cc_ >= 80; }     // bf16 matrix products (sm_80 and later)

 private:
  int ordinal_ = 0;
  int cc_ = 0;
  std::string name_;
};

// Devices visible now; 0 when there is no driver or no GPU (never throws).
int device_count() noexcept;
// Why device_count() is 0 ("cudaGetDeviceCount: no CUDA-capable device is detected"), or empty.
std::string no_device_reason();
// One line per device: "cuda:0 NVIDIA T4 (sm_75), 14.6 GiB free of 15.0 GiB".
std::vector<std::string> describe_devices();
// The architectures this build was compiled for, "75;80;86;89;90", and the CUDA runtime version.
std::string compiled_architectures();
std::string runtime_version();

}  // namespace ferry::cuda
