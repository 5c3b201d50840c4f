#include "runtime/cuda/resources.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdio>

#include "kernels/cuda/ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/cuda/cuda_check.hpp"

namespace ferry::cuda {

namespace detail {
void log_destroy_error(const char* what, cudaError_t err) noexcept {
  std::fprintf(stderr, "ferry: warning: %s failed: %s\n", what, cudaGetErrorString(err));
}
}  // namespace detail

CudaStream::CudaStream() { FERRY_CUDA_TRY(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }

CudaStream::~CudaStream() {
  if (s_ == nullptr) return;
  if (const cudaError_t e = cudaStreamDestroy(s_); e != cudaSuccess)
    detail::log_destroy_error("cudaStreamDestroy", e);
}

CudaStream& CudaStream::operator=(CudaStream&& o) noexcept {
  if (this != &o) {
    CudaStream dead(std::move(*this));
    s_ = std::exchange(o.s_, nullptr);
  }
  return *this;
}

void CudaStream::synchronize() const { FERRY_CUDA_TRY(cudaStreamSynchronize(s_)); }
void CudaStream::wait(cudaEvent_t event) const {
  FERRY_CUDA_TRY(cudaStreamWaitEvent(s_, event, 0));
}

CudaEvent::CudaEvent() { FERRY_CUDA_TRY(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }

CudaEvent::~CudaEvent() {
  if (e_ == nullptr) return;
  if (const cudaError_t e = cudaEventDestroy(e_); e != cudaSuccess)
    detail::log_destroy_error("cudaEventDestroy", e);
}

CudaEvent& CudaEvent::operator=(CudaEvent&& o) noexcept {
  if (this != &o) {
    CudaEvent dead(std::move(*this));
    e_ = std::exchange(o.e_, nullptr);
  }
  return *this;
}

void CudaEvent::record(const CudaStream& stream) const {
  FERRY_CUDA_TRY(cudaEventRecord(e_, stream.get()));
}

bool CudaEvent::done() const {
  const cudaError_t e = cudaEventQuery(e_);
  if (e == cudaErrorNotReady) return false;
  FERRY_CUDA_TRY(e);
  return true;
}

void CudaEvent::synchronize() const { FERRY_CUDA_TRY(cudaEventSynchronize(e_)); }

DeviceBuffer::DeviceBuffer(std::size_t nbytes) : n_(nbytes) {
  if (nbytes == 0) return;
  const cudaError_t e = cudaMalloc(&p_, nbytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    std::size_t free_bytes = 0;
    std::size_t total_bytes = 0;
    (void)cudaMemGetInfo(&free_bytes, &total_bytes);
    throw CudaError(fmt::format(
        "cudaMalloc of {} failed: {} ({} of {} free on the device); lower --max-vram so that "
        "more layers stream, or shorten --ctx",
        format_bytes(nbytes), cudaGetErrorString(e), format_bytes(free_bytes),
        format_bytes(total_bytes)));
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (p_ == nullptr) return;
  if (const cudaError_t e = cudaFree(p_); e != cudaSuccess)
    detail::log_destroy_error("cudaFree", e);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    DeviceBuffer dead(std::move(*this));
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

MappedHostBuffer::MappedHostBuffer(std::size_t nbytes) {
  if (nbytes == 0) return;
  const cudaError_t e = cudaHostAlloc(&host_, nbytes, cudaHostAllocMapped);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    host_ = nullptr;
    throw CudaError(fmt::format(
        "cudaHostAlloc of {} of mapped page-locked host memory failed: {}; free host memory or "
        "ask for less",
        format_bytes(nbytes), cudaGetErrorString(e)));
  }
  // With unified addressing (every 64-bit platform CUDA supports) the device pointer is the
  // host pointer; asked all the same, as the runtime documents.
  const cudaError_t d = cudaHostGetDevicePointer(&device_, host_, 0);
  if (d != cudaSuccess) {
    (void)cudaGetLastError();
    (void)cudaFreeHost(host_);
    host_ = nullptr;
    throw CudaError(fmt::format(
        "the device cannot address mapped host memory (cudaHostGetDevicePointer: {}); keep the "
        "buffer in VRAM",
        cudaGetErrorString(d)));
  }
  n_ = nbytes;
}

MappedHostBuffer::~MappedHostBuffer() {
  if (host_ == nullptr) return;
  if (const cudaError_t e = cudaFreeHost(host_); e != cudaSuccess)
    detail::log_destroy_error("cudaFreeHost", e);
}

MappedHostBuffer& MappedHostBuffer::operator=(MappedHostBuffer&& o) noexcept {
  if (this != &o) {
    MappedHostBuffer dead(std::move(*this));
    host_ = std::exchange(o.host_, nullptr);
    device_ = std::exchange(o.device_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

std::size_t DeviceArena::reserve(std::size_t nbytes) {
  constexpr std::size_t kAlign = 256;
  const std::size_t at = total_;
  total_ += (nbytes + kAlign - 1) / kAlign * kAlign;
  return at;
}

void DeviceArena::allocate() { buffer_ = DeviceBuffer(total_); }

CublasHandle::CublasHandle(const CudaStream& stream, std::size_t workspace_bytes)
    : workspace_(workspace_bytes) {
  const cublasStatus_t created = cublasCreate(&h_);
  if (created != CUBLAS_STATUS_SUCCESS) {
    if (const std::string why = kernels::cuda::cublas_load_error(); !why.empty())
      throw CudaError(fmt::format(
          "cannot load cuBLAS ({}); install the CUDA toolkit's cuBLAS or add its directory to "
          "LD_LIBRARY_PATH",
          why));
    FERRY_CUBLAS_TRY(created);
  }
  try {
    FERRY_CUBLAS_TRY(cublasSetStream(h_, stream.get()));
    FERRY_CUBLAS_TRY(cublasSetWorkspace(h_, workspace_.data(), workspace_.size()));
    FERRY_CUBLAS_TRY(cublasSetPointerMode(h_, CUBLAS_POINTER_MODE_HOST));
  } catch (...) {
    cublasDestroy(h_);
    throw;
  }
}

CublasHandle::~CublasHandle() {
  if (h_ != nullptr && cublasDestroy(h_) != CUBLAS_STATUS_SUCCESS)
    std::fprintf(stderr, "ferry: warning: cublasDestroy failed\n");
}

HostRegistration::HostRegistration(void* data, std::size_t nbytes) {
  if (data == nullptr || nbytes == 0) return;
  FERRY_CUDA_TRY(cudaHostRegister(data, nbytes, cudaHostRegisterDefault));
  p_ = data;
  n_ = nbytes;
}

HostRegistration::~HostRegistration() {
  if (p_ == nullptr) return;
  if (const cudaError_t e = cudaHostUnregister(p_); e != cudaSuccess)
    detail::log_destroy_error("cudaHostUnregister", e);
}

HostRegistration& HostRegistration::operator=(HostRegistration&& o) noexcept {
  if (this != &o) {
    HostRegistration dead(std::move(*this));
    p_ = std::exchange(o.p_, nullptr);
    n_ = std::exchange(o.n_, 0);
  }
  return *this;
}

int CudaHostPinner::pin(void* data, std::size_t nbytes) noexcept {
  const cudaError_t e = cudaHostRegister(data, nbytes, cudaHostRegisterDefault);
  if (e == cudaSuccess) return 0;
  (void)cudaGetLastError();
  return e == cudaErrorMemoryAllocation ? ENOMEM : EPERM;
}

void CudaHostPinner::unpin(void* data, std::size_t /*nbytes*/) noexcept {
  if (const cudaError_t e = cudaHostUnregister(data); e != cudaSuccess)
    detail::log_destroy_error("cudaHostUnregister", e);
}

}  // namespace ferry::cuda
