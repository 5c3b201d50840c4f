// Device: what the runtime asks of a compute device — what it is and how much of its memory is
// free. The planner probes VRAM through it (so it never includes CUDA headers); the CPU device
// is the host itself, whose memory is the RAM budget, and the CUDA device (runtime/cuda/)
// answers with cudaMemGetInfo.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ferry {

enum class DeviceKind { cpu, cuda };

struct DeviceMemoryInfo {
  uint64_t free_bytes = 0;
  uint64_t total_bytes = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;  // "cpu (avx2, 2 threads)", "NVIDIA T4 (sm_75)"
  // Memory of the device apart from host RAM; none for the CPU, whose memory is the host's.
  virtual std::optional<DeviceMemoryInfo> memory_info() const = 0;
  // Host → device copies from page-locked memory, bytes per second (the best of a few copies of
  // nbytes); none for the CPU, which has no such link.
  virtual std::optional<double> measure_h2d_bytes_per_s(uint64_t nbytes) const {
    (void)nbytes;
    return std::nullopt;
  }
};

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(std::string name = "cpu") : name_(std::move(name)) {}
  DeviceKind kind() const override { return DeviceKind::cpu; }
  std::string name() const override { return name_; }
  std::optional<DeviceMemoryInfo> memory_info() const override { return std::nullopt; }

 private:
  std::string name_;
};

}  // namespace ferry
