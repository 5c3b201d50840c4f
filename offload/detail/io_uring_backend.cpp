#include "offload/detail/io_uring_backend.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <iterator>

#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry::offload::detail {

namespace {
constexpr uint64_t kWakeTag = UINT64_MAX;
// Files opened by one engine; a sharded checkpoint has a few dozen.
constexpr unsigned kMaxRegisteredFiles = 1024;
}  // namespace

IoUring::IoUring(unsigned entries, int inject_errno) {
  const int rc = inject_errno != 0 ? -inject_errno : io_uring_queue_init(entries, &ring_, 0);
  if (rc < 0) throw IoError(-rc, fmt::format("io_uring_queue_init({}) failed", entries));
}

IoUring::~IoUring() { io_uring_queue_exit(&ring_); }

int BufferTable::add(std::span<const MemoryRegion> regions, uint32_t& first, uint32_t& count) {
  std::vector<iovec> iovs;
  for (const MemoryRegion& r : regions) {
    for (uint64_t done = 0; done < r.nbytes; done += kMaxEntryBytes) {
      iovs.push_back({static_cast<std::byte*>(r.data) + done,
                      static_cast<std::size_t>(std::min(kMaxEntryBytes, r.nbytes - done))});
    }
  }
  if (iovs.empty()) return EINVAL;
  std::lock_guard lock(mu_);
  if (refuse_errno_ != 0) return refuse_errno_;
  if (ring_ == nullptr) return ENXIO;
  // First fit over the free entries.
  uint32_t run = 0;
  uint32_t start = 0;
  for (uint32_t i = 0; i < kCapacity && run < iovs.size(); ++i) {
    if (entries_[i].iov_base != nullptr) {
      run = 0;
      continue;
    }
    if (run == 0) start = i;
    ++run;
  }
  if (run < iovs.size()) return ENOSPC;
  const std::vector<__u64> tags(iovs.size(), 0);
  const int rc = io_uring_register_buffers_update_tag(ring_, start, iovs.data(), tags.data(),
                                                      static_cast<unsigned>(iovs.size()));
  if (rc < 0) return -rc;
  if (static_cast<std::size_t>(rc) != iovs.size()) {
    // A partial update leaves entries registered that nobody owns: take them out again.
    std::vector<iovec> empty(static_cast<std::size_t>(rc), iovec{nullptr, 0});
    io_uring_register_buffers_update_tag(ring_, start, empty.data(), tags.data(),
                                         static_cast<unsigned>(rc));
    return ENOMEM;
  }
  std::copy(iovs.begin(), iovs.end(), entries_.begin() + start);
  first = start;
  count = static_cast<uint32_t>(iovs.size());
  return 0;
}

void BufferTable::remove(uint32_t first, uint32_t count) noexcept {
  std::lock_guard lock(mu_);
  if (ring_ == nullptr) return;  // the ring is gone and took its registrations with it
  std::vector<iovec> empty(count, iovec{nullptr, 0});
  std::vector<__u64> tags(count, 0);
  const int rc =
      io_uring_register_buffers_update_tag(ring_, first, empty.data(), tags.data(), count);
  if (rc < 0) {
    std::fprintf(stderr, "ferry: warning: unregistering %u io_uring buffers failed: %s\n", count,
                 std::strerror(-rc));
  }
  for (uint32_t i = first; i < first + count; ++i) entries_[i] = iovec{nullptr, 0};
}

int32_t BufferTable::find(const void* p, uint64_t nbytes) const {
  const auto* b = static_cast<const std::byte*>(p);
  std::lock_guard lock(mu_);
  for (uint32_t i = 0; i < kCapacity; ++i) {
    const auto* base = static_cast<const std::byte*>(entries_[i].iov_base);
    if (base != nullptr && b >= base && b + nbytes <= base + entries_[i].iov_len)
      return static_cast<int32_t>(i);
  }
  return -1;
}

void BufferTable::detach() noexcept {
  std::lock_guard lock(mu_);
  ring_ = nullptr;
}

UringBackend::UringBackend(const IoOptions& options, FallbackNotes& notes)
    : options_(options),
      notes_(notes),
      // Room for every read in flight plus the wake-up poll, so get_sqe never comes up empty.
      ring_(std::max(8U, 2 * options.queue_depth), options.test.uring_init_errno) {
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  FERRY_SYSCALL(efd, "cannot create the eventfd that wakes the io_uring thread");
  wake_fd_ = UniqueFd(efd);

  // Registered files spare the kernel a file-table lookup per read. Sparse tables let files
  // and buffers come and go while reads run; kernels before 5.19 lack them and we read
  // without.
  files_registered_ = io_uring_register_files_sparse(ring_.get(), kMaxRegisteredFiles) == 0;
  const int brc = io_uring_register_buffers_sparse(ring_.get(), BufferTable::kCapacity);
  buffers_supported_ = brc == 0;
  buffers_ = std::make_shared<BufferTable>(
      ring_.get(), buffers_supported_ ? options.test.register_buffers_errno : -brc);

  in_flight_.resize(options.queue_depth);
  for (uint32_t i = options.queue_depth; i-- > 0;) free_slots_.push_back(i);
  arm_wakeup();
  submit_prepared();
  if (broken_) std::rethrow_exception(broken_);
  try {
    thread_ = std::thread([this] { loop(); });
  } catch (const std::system_error& e) {
    throw IoError(e.code().value(), "cannot start the io_uring completion thread: a memory or "
                                    "process limit (ulimit -v or -u) is reached");
  }
}

UringBackend::~UringBackend() {
  shutdown();
  buffers_->detach();
}

void UringBackend::start(std::vector<Chunk> chunks, IoPriority priority) {
  {
    std::lock_guard lock(mu_);
    std::deque<Chunk>& queue = priority == IoPriority::urgent ? incoming_urgent_ : incoming_;
    for (Chunk& c : chunks) queue.push_back(std::move(c));
  }
  const uint64_t one = 1;
  if (::write(wake_fd_.get(), &one, sizeof one) < 0 && errno != EAGAIN) {
    // The ring thread also wakes on every completion and polls while it cannot be woken, so
    // the chunks still run; say why they may start late.
    std::fprintf(stderr, "ferry: warning: waking the io_uring thread failed: %s\n",
                 std::strerror(errno));
  }
}

void UringBackend::add_file(FileSlot& file) {
  if (!files_registered_) return;
  int fd = file.fd();
  const int rc = io_uring_register_files_update(ring_.get(), file.index(), &fd, 1);
  file.fixed.store(rc == 1, std::memory_order_release);
}

std::string UringBackend::describe() const {
  return fmt::format("io_uring ({}, qd {}, {} chunks{})", options_.direct ? "O_DIRECT" : "buffered",
                     options_.queue_depth, format_bytes(options_.chunk_bytes),
                     files_registered_ ? ", registered files" : "");
}

void UringBackend::shutdown() noexcept {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  const uint64_t one = 1;
  if (::write(wake_fd_.get(), &one, sizeof one) < 0 && errno != EAGAIN) {
    std::fprintf(stderr, "ferry: warning: waking the io_uring thread to stop failed: %s\n",
                 std::strerror(errno));
  }
  thread_.join();
}

uint32_t UringBackend::n_in_flight() const {
  return static_cast<uint32_t>(in_flight_.size() - free_slots_.size());
}

void UringBackend::arm_wakeup() {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  if (sqe == nullptr) return;  // the loop polls with a timeout until it can re-arm
  io_uring_prep_poll_add(sqe, wake_fd_.get(), POLLIN);
  io_uring_sqe_set_data64(sqe, kWakeTag);
  prepared_.push_back(kWakeTag);
  wake_armed_ = true;
}

bool UringBackend::prep_read(uint32_t slot) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  if (sqe == nullptr) return false;
  const Chunk& c = *in_flight_[slot];
  const bool fixed_file = c.file->fixed.load(std::memory_order_acquire);
  const int fd = fixed_file ? static_cast<int>(c.file->index()) : c.file->fd();
  const auto n = static_cast<unsigned>(c.piece_nbytes());
  if (c.buf_index >= 0)
    io_uring_prep_read_fixed(sqe, fd, c.piece_dst(), n, c.piece_offset(), c.buf_index);
  else
    io_uring_prep_read(sqe, fd, c.piece_dst(), n, c.piece_offset());
  if (fixed_file) sqe->flags |= IOSQE_FIXED_FILE;
  io_uring_sqe_set_data64(sqe, slot);
  prepared_.push_back(slot);
  return true;
}

void UringBackend::submit_prepared() {
  while (!prepared_.empty() && !broken_) {
    const int rc = io_uring_submit(ring_.get());
    if (rc > 0) {
      const auto n = std::min<std::size_t>(static_cast<std::size_t>(rc), prepared_.size());
      prepared_.erase(prepared_.begin(), prepared_.begin() + static_cast<std::ptrdiff_t>(n));
      continue;
    }
    // Out of kernel resources for now: completions will free some; submit on the next turn.
    if (rc == 0 || rc == -EAGAIN || rc == -EBUSY || rc == -EINTR) return;
    // The ring itself failed. The unaccepted sqes are never submitted again (nothing calls
    // io_uring_submit once broken_ is set), so their chunks can fail now.
    broken_ = std::make_exception_ptr(IoError(-rc, "io_uring_submit failed"));
    for (const uint64_t tag : prepared_) {
      if (tag == kWakeTag) {
        wake_armed_ = false;
        continue;
      }
      Chunk chunk = std::move(*in_flight_[tag]);
      in_flight_[tag].reset();
      free_slots_.push_back(static_cast<uint32_t>(tag));
      finish(chunk, broken_);
    }
    prepared_.clear();
  }
}

void UringBackend::finish(Chunk& chunk, std::exception_ptr error) noexcept {
  chunk.ticket->finish_chunk(std::move(error));
  chunk.ticket.reset();
}

void UringBackend::handle_completion(uint64_t user_data, int32_t res) {
  if (user_data == kWakeTag) {
    uint64_t count = 0;
    while (::read(wake_fd_.get(), &count, sizeof count) > 0) {
    }
    wake_armed_ = false;
    return;
  }
  const auto slot = static_cast<uint32_t>(user_data);
  Chunk chunk = std::move(*in_flight_[slot]);
  in_flight_[slot].reset();
  free_slots_.push_back(slot);
  const std::function<uint64_t()> file_size = [&chunk] { return chunk.file->current_size(); };
  const ChunkStep step = judge_completion(options_.test, chunk, res, file_size);
  switch (step.kind) {
    case ChunkStep::complete:
      finish(chunk, nullptr);
      return;
    case ChunkStep::resubmit:
      ready_.push_front(std::move(chunk));
      return;
    case ChunkStep::retry_after:
      deferred_.push_back({Clock::now() + step.delay, std::move(chunk)});
      return;
    case ChunkStep::refused_direct:
      try {
        int fd = chunk.file->fall_back_to_buffered();
        if (chunk.file->fixed.load(std::memory_order_acquire) &&
            io_uring_register_files_update(ring_.get(), chunk.file->index(), &fd, 1) != 1) {
          chunk.file->fixed.store(false, std::memory_order_release);
        }
        notes_.add(fmt::format("buffered reads for {}: the filesystem refused O_DIRECT",
                               chunk.file->path().string()));
        ready_.push_front(std::move(chunk));
      } catch (...) {
        finish(chunk, std::current_exception());
      }
      return;
    case ChunkStep::failed:
      finish(chunk, step.error);
      return;
  }
}

void UringBackend::loop() noexcept {
  bool warned_wait = false;
  for (;;) {
    bool stop = false;
    {
      std::lock_guard lock(mu_);
      ready_.insert(ready_.end(), std::make_move_iterator(incoming_.begin()),
                    std::make_move_iterator(incoming_.end()));
      incoming_.clear();
      ready_.insert(ready_.begin(), std::make_move_iterator(incoming_urgent_.begin()),
                    std::make_move_iterator(incoming_urgent_.end()));
      incoming_urgent_.clear();
      stop = stopping_;
    }
    const Clock::time_point now = Clock::now();
    for (auto it = deferred_.begin(); it != deferred_.end();) {
      if (it->due <= now) {
        ready_.push_back(std::move(it->chunk));
        it = deferred_.erase(it);
      } else {
        ++it;
      }
    }
    if (!wake_armed_ && !broken_) arm_wakeup();
    while (!free_slots_.empty() && !ready_.empty()) {
      Chunk chunk = std::move(ready_.front());
      ready_.pop_front();
      if (broken_) {
        finish(chunk, broken_);
        continue;
      }
      // Another chunk of the batch failed and its waiter gets that error: skip the I/O.
      if (chunk.ticket->failed.load(std::memory_order_acquire)) {
        finish(chunk, nullptr);
        continue;
      }
      const uint32_t slot = free_slots_.back();
      free_slots_.pop_back();
      in_flight_[slot] = std::move(chunk);
      if (!prep_read(slot)) {
        submit_prepared();  // frees the submission queue
        if (broken_ || !prep_read(slot)) {
          Chunk back = std::move(*in_flight_[slot]);
          in_flight_[slot].reset();
          free_slots_.push_back(slot);
          ready_.push_front(std::move(back));
          break;
        }
      }
    }
    submit_prepared();
    if (stop && n_in_flight() == 0 && ready_.empty() && deferred_.empty()) return;

    // Sleep until a completion, a wake-up, or the next deferred retry is due. Without an armed
    // wake-up (the ring refused it) poll every millisecond so new chunks are still noticed.
    bool timed = !deferred_.empty() || !wake_armed_ || !prepared_.empty() ||
                 (!ready_.empty() && free_slots_.size() == in_flight_.size());
    std::chrono::nanoseconds timeout = std::chrono::milliseconds(1);
    if (!deferred_.empty()) {
      Clock::time_point due = deferred_.front().due;
      for (const Deferred& d : deferred_) due = std::min(due, d.due);
      timeout = std::clamp<std::chrono::nanoseconds>(due - Clock::now(),
                                                     std::chrono::nanoseconds(0), timeout * 10);
    }
    io_uring_cqe* cqe = nullptr;
    int rc;
    if (timed) {
      __kernel_timespec ts{};
      ts.tv_sec = timeout.count() / 1'000'000'000;
      ts.tv_nsec = timeout.count() % 1'000'000'000;
      rc = io_uring_wait_cqe_timeout(ring_.get(), &cqe, &ts);
    } else {
      rc = io_uring_wait_cqe(ring_.get(), &cqe);
    }
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN) {
      // Reads the kernel still holds may write into caller memory; the only safe course is to
      // keep waiting for them.
      if (!warned_wait) {
        std::fprintf(stderr, "ferry: warning: waiting for io_uring completions failed: %s\n",
                     std::strerror(-rc));
        warned_wait = true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    unsigned head = 0;
    unsigned seen = 0;
    io_uring_for_each_cqe(ring_.get(), head, cqe) {
      ++seen;
      handle_completion(io_uring_cqe_get_data64(cqe), cqe->res);
    }
    io_uring_cq_advance(ring_.get(), seen);
  }
}

}  // namespace ferry::offload::detail
