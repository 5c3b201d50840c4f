// The thread-pool backends: a pool of threads each doing one blocking read at a time (pread,
// with or without O_DIRECT), or copying out of a read-only mapping (mmap, for benchmarks).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "offload/detail/io_common.hpp"

namespace ferry::offload::detail {

class PoolBackend final : public IoBackend {
 public:
  enum class Mode { pread, mmap };

  // Starts n_threads workers. hooks and notes must outlive the backend.
  PoolBackend(Mode mode, uint32_t n_threads, const IoTestHooks& hooks, FallbackNotes& notes,
              std::string label);
  ~PoolBackend() override;
  PoolBackend(const PoolBackend&) = delete;
  PoolBackend& operator=(const PoolBackend&) = delete;

  void start(std::vector<Chunk> chunks, IoPriority priority) override;
  void add_file(FileSlot& file) override;
  std::string describe() const override { return label_; }
  void shutdown() noexcept override;

 private:
  void worker_loop() noexcept;
  void run_chunk(Chunk& chunk) noexcept;
  int64_t read_piece(const Chunk& chunk) const noexcept;

  Mode mode_;
  const IoTestHooks& hooks_;
  FallbackNotes& notes_;
  std::string label_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Chunk> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace ferry::offload::detail
