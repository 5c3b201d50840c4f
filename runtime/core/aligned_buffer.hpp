// AlignedBuffer: an owned, uninitialised block of host memory with a chosen alignment
// (64 bytes for SIMD rows, 4096 for O_DIRECT reads).
#pragma once

#include <cstddef>
#include <cstdlib>
#include <new>
#include <utility>

namespace ferry {

class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(std::size_t nbytes, std::size_t alignment = 64) : nbytes_(nbytes) {
    if (nbytes == 0) return;
    const std::size_t rounded = (nbytes + alignment - 1) / alignment * alignment;
    data_ = std::aligned_alloc(alignment, rounded);
    if (data_ == nullptr) throw std::bad_alloc();
  }
  AlignedBuffer(AlignedBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), nbytes_(std::exchange(o.nbytes_, 0)) {}
  AlignedBuffer& operator=(AlignedBuffer&& o) noexcept {
    if (this != &o) {
      std::free(data_);
      data_ = std::exchange(o.data_, nullptr);
      nbytes_ = std::exchange(o.nbytes_, 0);
    }
    return *this;
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  void* data() const { return data_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  std::size_t size() const { return nbytes_; }

 private:
  void* data_ = nullptr;
  std::size_t nbytes_ = 0;
};

}  // namespace ferry
