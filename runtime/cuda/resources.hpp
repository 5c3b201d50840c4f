// Owners of CUDA handles, one move-only type each, destructors noexcept (a failure there is
// logged, never thrown): a non-blocking stream (the default stream is never used), an event with
// timing off, device memory, page-locked host memory the device addresses directly, an arena
// carving one allocation into aligned buffers, a cuBLAS handle bound to a stream, and
// page-locked registration of host memory (cudaHostRegister of page-aligned memory, so an
// O_DIRECT read and a DMA copy use the same bytes).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

#include "offload/staging_pool.hpp"

namespace ferry::cuda {

namespace detail {
void log_destroy_error(const char* what, cudaError_t err) noexcept;
}

class CudaStream {
 public:
  CudaStream();  // cudaStreamNonBlocking: never synchronises with the legacy default stream
  ~CudaStream();
  CudaStream(CudaStream&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  CudaStream& operator=(CudaStream&& o) noexcept;
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  cudaStream_t get() const { return s_; }
  void synchronize() const;
  // Work submitted to this stream after the call waits for the event (on the GPU, not the host).
  void wait(cudaEvent_t event) const;

 private:
  cudaStream_t s_ = nullptr;
};

class CudaEvent {
 public:
  CudaEvent();  // cudaEventDisableTiming: the cheapest kind, for ordering only
  ~CudaEvent();
  CudaEvent(CudaEvent&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& o) noexcept;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  cudaEvent_t get() const { return e_; }
  void record(const CudaStream& stream) const;
  bool done() const;  // cudaEventQuery: true once everything recorded before it has run
  void synchronize() const;

 private:
  cudaEvent_t e_ = nullptr;
};

// cudaMalloc'd bytes.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Throws CudaError naming the size when the device is out of memory.
  explicit DeviceBuffer(std::size_t nbytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return p_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(p_);
  }
  std::size_t size() const { return n_; }

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
};

// Page-locked host memory mapped into the device's address space (cudaHostAlloc with
// cudaHostAllocMapped): kernels read and write it over PCIe through device_data(), so a buffer
// VRAM cannot hold (the KV pool, when the plan puts it in host memory) is used by the same
// kernels unchanged. Freed with cudaFreeHost.
class MappedHostBuffer {
 public:
  MappedHostBuffer() = default;
  // Throws CudaError naming the size when the host cannot pin that much, or when the device
  // cannot address host memory.
  explicit MappedHostBuffer(std::size_t nbytes);
  ~MappedHostBuffer();
  MappedHostBuffer(MappedHostBuffer&& o) noexcept
      : host_(std::exchange(o.host_, nullptr)),
        device_(std::exchange(o.device_, nullptr)),
        n_(std::exchange(o.n_, 0)) {}
  MappedHostBuffer& operator=(MappedHostBuffer&& o) noexcept;
  MappedHostBuffer(const MappedHostBuffer&) = delete;
  MappedHostBuffer& operator=(const MappedHostBuffer&) = delete;
  void* host_data() const { return host_; }
  void* device_data() const { return device_; }  // for kernels only
  std::size_t size() const { return n_; }

 private:
  void* host_ = nullptr;
  void* device_ = nullptr;
  std::size_t n_ = 0;
};

// One device allocation handed out as 256-byte-aligned pieces, all freed together: the
// activations, the KV cache and the weights' norms and biases come from one cudaMalloc each
// instead of dozens.
class DeviceArena {
 public:
  // Two passes: reserve() every piece, then allocate() once and take() them in the same order.
  std::size_t reserve(std::size_t nbytes);  // returns the piece's offset
  void allocate();
  template <class T>
  T* at(std::size_t offset) const {
    return reinterpret_cast<T*>(static_cast<std::byte*>(buffer_.data()) + offset);
  }
  std::size_t size() const { return total_; }

 private:
  std::size_t total_ = 0;
  DeviceBuffer buffer_;
};

// A cuBLAS handle whose work goes to one stream, with its own workspace (so cuBLAS allocates
// nothing behind the plan's back).
class CublasHandle {
 public:
  CublasHandle(const CudaStream& stream, std::size_t workspace_bytes);
  ~CublasHandle();
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
  DeviceBuffer workspace_;
};

// Host memory registered with cudaHostRegister for as long as this lives. The memory must be
// page-aligned and outlive the registration.
class HostRegistration {
 public:
  HostRegistration() = default;
  HostRegistration(void* data, std::size_t nbytes);  // throws CudaError
  ~HostRegistration();
  HostRegistration(HostRegistration&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  HostRegistration& operator=(HostRegistration&& o) noexcept;
  HostRegistration(const HostRegistration&) = delete;
  HostRegistration& operator=(const HostRegistration&) = delete;

 private:
  void* p_ = nullptr;
  std::size_t n_ = 0;
};

// The staging pool's pinner on the CUDA backend: cudaHostRegister instead of mlock, so the
// slots io_uring reads into are also the source of asynchronous host → device copies.
class CudaHostPinner final : public offload::HostMemoryPinner {
 public:
  std::string_view name() const override { return "cudaHostRegister"; }
  int pin(void* data, std::size_t nbytes) noexcept override;
  void unpin(void* data, std::size_t nbytes) noexcept override;
};

}  // namespace ferry::cuda
