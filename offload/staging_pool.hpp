// StagingPool: the fixed set of page-aligned, locked host slots that streamed layers are read
// into, handed out as move-only leases. Allocation (anonymous mmap, never the heap allocator)
// is separate from pinning, so the CUDA backend can pin the same slots with cudaHostRegister.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "offload/io_engine.hpp"

namespace ferry::offload {

namespace detail {
struct StagingPoolState;
}

// Keeps host memory resident (and, for a GPU, DMA-able). pin() returns 0 or an errno value and
// never throws; unpin() undoes a successful pin().
class HostMemoryPinner {
 public:
  virtual ~HostMemoryPinner() = default;
  virtual std::string_view name() const = 0;
  virtual int pin(void* data, std::size_t nbytes) noexcept = 0;
  virtual void unpin(void* data, std::size_t nbytes) noexcept = 0;
};

// mlock/munlock: what the CPU backend uses. Bound by RLIMIT_MEMLOCK without CAP_IPC_LOCK.
class MlockPinner final : public HostMemoryPinner {
 public:
  std::string_view name() const override { return "mlock"; }
  int pin(void* data, std::size_t nbytes) noexcept override;
  void unpin(void* data, std::size_t nbytes) noexcept override;
};

struct StagingPoolOptions {
  std::size_t slot_count = 2;
  uint64_t slot_bytes = 0;  // each slot's usable size; rounded up to whole pages
  // nullptr leaves the memory unlocked on purpose (no warning).
  std::shared_ptr<HostMemoryPinner> pinner = std::make_shared<MlockPinner>();
};

// One slot, held until destroyed or release()d. Move-only. The memory stays valid while a
// lease exists, even past the pool's destruction.
class StagingLease {
 public:
  StagingLease() = default;
  StagingLease(StagingLease&& o) noexcept;
  StagingLease& operator=(StagingLease&& o) noexcept;
  StagingLease(const StagingLease&) = delete;
  StagingLease& operator=(const StagingLease&) = delete;
  ~StagingLease() { release(); }

  bool valid() const { return state_ != nullptr; }
  std::size_t slot() const { return slot_; }
  std::byte* data() const { return data_; }
  uint64_t nbytes() const { return nbytes_; }
  std::span<std::byte> bytes() const { return {data_, static_cast<std::size_t>(nbytes_)}; }
  // Returns the slot to the pool now (a blocked acquire() may take it).
  void release() noexcept;

 private:
  friend class StagingPool;
  StagingLease(std::shared_ptr<detail::StagingPoolState> state, std::size_t slot);
  std::shared_ptr<detail::StagingPoolState> state_;
  std::size_t slot_ = 0;
  std::byte* data_ = nullptr;
  uint64_t nbytes_ = 0;
};

class StagingPool {
 public:
  // Maps slot_count × slot_bytes (page-rounded) and pins each slot with the pinner. Where the
  // pinner refuses (RLIMIT_MEMLOCK), the pool still works unlocked: one warning per process on
  // stderr, and lock_note() says why. Throws InvalidArgument for zero slots or bytes and
  // IoError when the memory cannot be mapped.
  explicit StagingPool(StagingPoolOptions options);
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  // Blocks until a slot is free.
  StagingLease acquire();
  // A slot if one is free now.
  std::optional<StagingLease> try_acquire();

  std::size_t slot_count() const;
  uint64_t slot_bytes() const;  // page-rounded
  std::size_t free_slots() const;
  // slot_count × slot_bytes, and how much of it the pinner really pinned.
  uint64_t bytes_requested() const;
  uint64_t bytes_locked() const;
  // Empty when everything is locked (or no pinner was asked for); else why not.
  const std::string& lock_note() const;
  // Every slot, for IoEngine::register_buffers.
  std::vector<MemoryRegion> regions() const;

 private:
  std::shared_ptr<detail::StagingPoolState> state_;
};

}  // namespace ferry::offload
