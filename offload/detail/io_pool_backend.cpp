#include "offload/detail/io_pool_backend.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iterator>

#include "runtime/core/error.hpp"

namespace ferry::offload::detail {

PoolBackend::PoolBackend(Mode mode, uint32_t n_threads, const IoTestHooks& hooks,
                         FallbackNotes& notes, std::string label)
    : mode_(mode), hooks_(hooks), notes_(notes), label_(std::move(label)) {
  threads_.reserve(n_threads);
  try {
    for (uint32_t i = 0; i < n_threads; ++i) threads_.emplace_back([this] { worker_loop(); });
  } catch (const std::system_error& e) {
    const std::size_t started = threads_.size();
    shutdown();
    throw IoError(e.code().value(),
                  fmt::format("cannot start I/O thread {} of {} ({}): a memory or process limit "
                              "(ulimit -v or -u) is reached",
                              started + 1, n_threads, label_));
  } catch (...) {
    shutdown();
    throw;
  }
}

PoolBackend::~PoolBackend() { shutdown(); }

void PoolBackend::start(std::vector<Chunk> chunks, IoPriority priority) {
  {
    std::lock_guard lock(mu_);
    const auto at = priority == IoPriority::urgent ? queue_.begin() : queue_.end();
    queue_.insert(at, std::make_move_iterator(chunks.begin()),
                  std::make_move_iterator(chunks.end()));
  }
  cv_.notify_all();
}

void PoolBackend::add_file(FileSlot& file) {
  if (mode_ != Mode::mmap) return;
  const uint64_t nbytes = file.current_size();
  if (nbytes == 0) return;  // mmap of zero bytes is EINVAL; every read is then at EOF
  void* p = ::mmap(nullptr, static_cast<std::size_t>(nbytes), PROT_READ, MAP_SHARED, file.fd(), 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    throw IoError(err, fmt::format("cannot map {} ({} bytes)", file.path().string(), nbytes));
  }
  // The benchmark reads front to back; tell the kernel so it reads ahead like a real loader.
  ::madvise(p, static_cast<std::size_t>(nbytes), MADV_SEQUENTIAL);
  file.mapping = static_cast<const std::byte*>(p);
  file.mapping_nbytes = nbytes;
  file.mapping_guard.emplace(p, nbytes, file.path().string());
}

void PoolBackend::shutdown() noexcept {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

void PoolBackend::worker_loop() noexcept {
  for (;;) {
    Chunk chunk;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      // Queued chunks are finished even when stopping: a waiter may still hold their ticket.
      if (queue_.empty()) return;
      chunk = std::move(queue_.front());
      queue_.pop_front();
    }
    run_chunk(chunk);
  }
}

int64_t PoolBackend::read_piece(const Chunk& chunk) const noexcept {
  if (mode_ == Mode::mmap) {
    const FileSlot& f = *chunk.file;
    const uint64_t offset = chunk.piece_offset();
    if (offset >= f.mapping_nbytes) return 0;
    const uint64_t n = std::min(chunk.piece_nbytes(), f.mapping_nbytes - offset);
    std::memcpy(chunk.piece_dst(), f.mapping + offset, static_cast<std::size_t>(n));
    return static_cast<int64_t>(n);
  }
  const ssize_t r =
      ::pread(chunk.file->fd(), chunk.piece_dst(), static_cast<std::size_t>(chunk.piece_nbytes()),
              static_cast<off_t>(chunk.piece_offset()));
  return r < 0 ? -static_cast<int64_t>(errno) : static_cast<int64_t>(r);
}

void PoolBackend::run_chunk(Chunk& chunk) noexcept {
  const std::function<uint64_t()> file_size = [&chunk, this]() -> uint64_t {
    return mode_ == Mode::mmap ? chunk.file->mapping_nbytes : chunk.file->current_size();
  };
  for (;;) {
    // Another chunk of the batch failed: its waiter gets that error, so stop spending I/O.
    if (chunk.ticket->failed.load(std::memory_order_acquire)) {
      chunk.ticket->finish_chunk(nullptr);
      return;
    }
    const ChunkStep step = judge_completion(hooks_, chunk, read_piece(chunk), file_size);
    switch (step.kind) {
      case ChunkStep::complete:
        chunk.ticket->finish_chunk(nullptr);
        return;
      case ChunkStep::resubmit:
        break;
      case ChunkStep::retry_after:
        std::this_thread::sleep_for(step.delay);
        break;
      case ChunkStep::refused_direct:
        try {
          chunk.file->fall_back_to_buffered();
          notes_.add(fmt::format("buffered reads for {}: the filesystem refused O_DIRECT",
                                 chunk.file->path().string()));
        } catch (...) {
          chunk.ticket->finish_chunk(std::current_exception());
          return;
        }
        break;
      case ChunkStep::failed:
        chunk.ticket->finish_chunk(step.error);
        return;
    }
  }
}

}  // namespace ferry::offload::detail
