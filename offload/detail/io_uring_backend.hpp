// The io_uring backend: one thread owns the ring, keeps queue_depth reads in flight across all
// submitted batches, checks every completion and resubmits what is left. Files and (when the
// caller registers them) staging buffers sit in the ring's registered tables.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "offload/detail/io_common.hpp"
#include "offload/file.hpp"

namespace ferry::offload::detail {

// The one owner of an io_uring instance.
class IoUring {
 public:
  // Throws IoError carrying the errno io_uring_queue_init returned (or inject_errno, when
  // non-zero, without trying: tests simulate a kernel or seccomp filter refusing io_uring).
  IoUring(unsigned entries, int inject_errno);
  ~IoUring();
  IoUring(const IoUring&) = delete;
  IoUring& operator=(const IoUring&) = delete;
  io_uring* get() { return &ring_; }

 private:
  io_uring ring_{};
};

// The ring's sparse table of registered buffers, shared with the RegisteredBuffers handles so
// a handle outliving the engine finds the ring gone and does nothing.
class BufferTable {
 public:
  static constexpr uint32_t kCapacity = 1024;
  // A registered buffer may not exceed 1 GiB; larger regions take several entries.
  static constexpr uint64_t kMaxEntryBytes = 1ULL << 30;

  // refuse_errno non-zero: every add() fails with it (registration unsupported or simulated
  // refused).
  BufferTable(io_uring* ring, int refuse_errno) : ring_(ring), refuse_errno_(refuse_errno) {}

  // Registers the regions in consecutive free entries. Returns 0 and sets first/count, or an
  // errno value (nothing registered).
  int add(std::span<const MemoryRegion> regions, uint32_t& first, uint32_t& count);
  void remove(uint32_t first, uint32_t count) noexcept;
  // The entry holding all of [p, p + nbytes), or -1.
  int32_t find(const void* p, uint64_t nbytes) const;
  // The ring is being torn down (which drops every registration): later calls do nothing.
  void detach() noexcept;

 private:
  mutable std::mutex mu_;
  io_uring* ring_;
  int refuse_errno_;
  std::vector<iovec> entries_ = std::vector<iovec>(kCapacity, iovec{nullptr, 0});
};

class UringBackend final : public IoBackend {
 public:
  // Throws IoError with io_uring_queue_init's errno when io_uring is unavailable.
  UringBackend(const IoOptions& options, FallbackNotes& notes);
  ~UringBackend() override;
  UringBackend(const UringBackend&) = delete;
  UringBackend& operator=(const UringBackend&) = delete;

  void start(std::vector<Chunk> chunks, IoPriority priority) override;
  void add_file(FileSlot& file) override;
  std::shared_ptr<BufferTable> buffer_table() override { return buffers_; }
  std::string describe() const override;
  void shutdown() noexcept override;

 private:
  using Clock = std::chrono::steady_clock;
  struct Deferred {
    Clock::time_point due;
    Chunk chunk;
  };

  void loop() noexcept;
  void arm_wakeup();
  bool prep_read(uint32_t slot);
  void submit_prepared();
  void handle_completion(uint64_t user_data, int32_t res);
  void finish(Chunk& chunk, std::exception_ptr error) noexcept;
  uint32_t n_in_flight() const;

  const IoOptions& options_;
  FallbackNotes& notes_;
  IoUring ring_;
  UniqueFd wake_fd_;
  bool files_registered_ = false;
  std::shared_ptr<BufferTable> buffers_;
  bool buffers_supported_ = false;

  std::mutex mu_;
  std::deque<Chunk> incoming_;
  std::deque<Chunk> incoming_urgent_;
  bool stopping_ = false;

  // Owned by the ring thread.
  std::deque<Chunk> ready_;
  std::vector<Deferred> deferred_;
  std::vector<std::optional<Chunk>> in_flight_;  // indexed by slot; user_data = slot
  std::vector<uint32_t> free_slots_;
  std::deque<uint64_t> prepared_;  // user_data of sqes not yet accepted by the kernel
  bool wake_armed_ = false;
  std::exception_ptr broken_;  // the ring failed as a whole; every later chunk fails with it

  std::thread thread_;
};

}  // namespace ferry::offload::detail
