#include "offload/detail/io_common.hpp"

#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/core/error.hpp"

namespace ferry::offload::detail {

void TicketState::finish_chunk(std::exception_ptr chunk_error) noexcept {
  std::lock_guard lock(mu);
  if (chunk_error) {
    if (!error) error = std::move(chunk_error);
    failed.store(true, std::memory_order_release);
  }
  if (--remaining_chunks == 0) {
    done = true;
    done_at = std::chrono::steady_clock::now();
    cv.notify_all();
  }
}

void TicketState::wait() noexcept {
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return done; });
}

FileSlot::FileSlot(std::filesystem::path path, uint32_t index, UniqueFd fd, bool direct)
    : path_(std::move(path)), index_(index), fd_(fd.get()), direct_(direct) {
  if (direct)
    direct_fd_ = std::move(fd);
  else
    buffered_fd_ = std::move(fd);
}

FileSlot::~FileSlot() {
  if (mapping != nullptr &&
      ::munmap(const_cast<std::byte*>(mapping), static_cast<std::size_t>(mapping_nbytes)) != 0) {
    std::fprintf(stderr, "ferry: warning: munmap of %s failed: %s\n", path_.c_str(),
                 std::strerror(errno));
  }
}

uint64_t FileSlot::current_size() const { return offload::file_size(fd(), path_); }

int FileSlot::fall_back_to_buffered() {
  std::lock_guard lock(mu_);
  if (!direct_.load(std::memory_order_acquire)) return fd_.load(std::memory_order_acquire);
  buffered_fd_ = open_read(path_);
  fd_.store(buffered_fd_.get(), std::memory_order_release);
  direct_.store(false, std::memory_order_release);
  return buffered_fd_.get();
}

int64_t filter_result(const IoTestHooks& hooks, const Chunk& chunk, int64_t result) {
  if (!hooks.on_completion) return result;
  const IoFaultSite site{chunk.file->path(), chunk.file->index(), chunk.piece_offset(),
                         chunk.piece_nbytes(), chunk.attempt};
  const int64_t rewritten = hooks.on_completion(site, result);
  if (rewritten > 0 && result >= 0 && rewritten > result) return result;
  if (rewritten > 0 && result < 0) return result;  // cannot invent bytes that never arrived
  return rewritten;
}

std::exception_ptr make_read_error(const Chunk& chunk, int errno_value, const std::string& what) {
  return std::make_exception_ptr(IoError(
      errno_value, fmt::format("read of {} bytes at offset {} of {} failed{}", chunk.piece_nbytes(),
                               chunk.piece_offset(), chunk.file->path().string(), what)));
}

namespace {

ChunkStep transient(Chunk& chunk, int errno_value, const char* what) {
  ++chunk.attempt;
  if (++chunk.transient_failures > kMaxTransientRetries) {
    return {ChunkStep::failed,
            {},
            make_read_error(chunk, errno_value,
                            fmt::format(" ({} {} in a row; the device is not making progress)",
                                        kMaxTransientRetries, what))};
  }
  const uint32_t shift = std::min<uint32_t>(chunk.transient_failures - 1, 20);
  const auto delay =
      std::min<std::chrono::microseconds>(kFirstRetryDelay * (1LL << shift), kMaxRetryDelay);
  return {ChunkStep::retry_after, delay, nullptr};
}

}  // namespace

ChunkStep apply_result(Chunk& chunk, int64_t result, const std::function<uint64_t()>& file_size) {
  const uint64_t wanted = chunk.piece_nbytes();
  if (result < 0) {
    const int err = static_cast<int>(-result);
    if (err == EAGAIN || err == EINTR) return transient(chunk, err, "EAGAIN/EINTR results");
    if (err == EINVAL && chunk.file->direct()) {
      // Validated alignment leaves only the filesystem refusing O_DIRECT.
      ++chunk.attempt;
      return {ChunkStep::refused_direct, {}, nullptr};
    }
    return {ChunkStep::failed, {}, make_read_error(chunk, err, "")};
  }
  const auto got = static_cast<uint64_t>(result);
  if (got >= wanted) {
    chunk.done_bytes = chunk.nbytes;
    return {ChunkStep::complete, {}, nullptr};
  }
  // A short read is either EOF or the kernel stopping early; only the file's size tells which.
  const uint64_t reached = chunk.piece_offset() + got;
  const uint64_t size_now = file_size();
  if (got == 0 || reached >= size_now) {
    if (reached >= chunk.required_end) {
      chunk.done_bytes += got;
      return {ChunkStep::complete, {}, nullptr};
    }
    // Name the file's real end: a chunk that starts past it only knows where it started.
    return {ChunkStep::failed,
            {},
            std::make_exception_ptr(FormatError(fmt::format(
                "{} ends at byte {} but a read needs bytes up to {} (read of {} bytes at offset "
                "{}); the file is truncated or was changed while ferry ran — download or "
                "convert it again",
                chunk.file->path().string(), std::min(reached, size_now), chunk.required_end,
                chunk.nbytes, chunk.offset_bytes)))};
  }
  // O_DIRECT can only resume at an aligned offset; the bytes read again are the same bytes.
  const uint64_t advance =
      chunk.file->direct() ? got / kDirectIoAlignment * kDirectIoAlignment : got;
  if (advance == 0) return transient(chunk, EIO, "short reads without progress");
  chunk.done_bytes += advance;
  chunk.attempt = 0;
  chunk.transient_failures = 0;
  return {ChunkStep::resubmit, {}, nullptr};
}

ChunkStep judge_completion(const IoTestHooks& hooks, Chunk& chunk, int64_t real_result,
                           const std::function<uint64_t()>& file_size) noexcept {
  try {
    return apply_result(chunk, filter_result(hooks, chunk, real_result), file_size);
  } catch (...) {
    return {ChunkStep::failed, {}, std::current_exception()};
  }
}

void FallbackNotes::add(const std::string& note) {
  std::lock_guard lock(mu_);
  if (std::find(notes_.begin(), notes_.end(), note) != notes_.end()) return;
  notes_.push_back(note);
  if (print_) std::fprintf(stderr, "ferry: note: %s\n", note.c_str());
}

std::vector<std::string> FallbackNotes::all() const {
  std::lock_guard lock(mu_);
  return notes_;
}

}  // namespace ferry::offload::detail
