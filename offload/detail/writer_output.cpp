#include "offload/detail/writer_output.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "offload/detail/writer_crc32.hpp"
#include "runtime/core/error.hpp"

namespace ferry::offload::detail {

OutputFile::OutputFile(std::filesystem::path final_path, std::size_t buffer_bytes)
    : final_path_(std::move(final_path)),
      fd_(create_temp_file_beside(final_path_, partial_path_)),
      remove_on_signal_(std::make_unique<RemoveOnSignal>(partial_path_)),
      buffer_(std::make_unique_for_overwrite<std::byte[]>(buffer_bytes)),
      capacity_(buffer_bytes) {}

OutputFile::~OutputFile() {
  if (committed_) return;
  fd_ = UniqueFd();  // close before unlinking
  if (::unlink(partial_path_.c_str()) != 0 && errno != ENOENT) {
    std::fprintf(stderr, "ferry: warning: cannot remove the unfinished file %s: %s\n",
                 partial_path_.c_str(), std::strerror(errno));
  }
}

void OutputFile::write(std::span<const std::byte> bytes) {
  while (!bytes.empty()) {
    if (used_ == 0 && bytes.size() >= capacity_) {
      // Nothing buffered and more than a buffer's worth: skip the copy.
      write_full(fd_.get(), bytes.data(), bytes.size(), partial_path_);
      flushed_bytes_ += bytes.size();
      return;
    }
    const std::size_t n = std::min(bytes.size(), capacity_ - used_);
    std::memcpy(buffer_.get() + used_, bytes.data(), n);
    used_ += n;
    bytes = bytes.subspan(n);
    if (used_ == capacity_) flush();
  }
}

std::span<std::byte> OutputFile::claim(std::size_t n) {
  FERRY_EXPECT(n <= capacity_, "a write of {} bytes into {} exceeds its {}-byte buffer", n,
               partial_path_.string(), capacity_);
  if (capacity_ - used_ < n) flush();
  return {buffer_.get() + used_, n};
}

void OutputFile::advance(std::size_t n) {
  FERRY_EXPECT(n <= capacity_ - used_, "advance({}) past the claimed bytes of {}", n,
               partial_path_.string());
  used_ += n;
}

void OutputFile::flush() {
  if (used_ == 0) return;
  write_full(fd_.get(), buffer_.get(), used_, partial_path_);
  flushed_bytes_ += used_;
  used_ = 0;
}

void OutputFile::commit() {
  flush();
  // Without the fsync a crash soon after the rename can leave the final name on a file whose
  // blocks never reached the disk: exactly the "looks whole but is not" file to avoid.
  FERRY_SYSCALL(::fsync(fd_.get()), "cannot flush {} to disk", partial_path_.string());
  const int fd = fd_.release();
  // close() reports deferred write errors (e.g. on NFS); on Linux the fd is gone either way.
  FERRY_SYSCALL(::close(fd), "cannot close {}", partial_path_.string());
  FERRY_SYSCALL(::rename(partial_path_.c_str(), final_path_.c_str()), "cannot rename {} to {}",
                partial_path_.string(), final_path_.string());
  committed_ = true;
}

void stream_tensor(OutputFile& out, const TensorSpec& spec, const TensorFiller& fill,
                   std::size_t chunk_bytes, Crc32* crc) {
  const uint64_t nbytes = spec.nbytes();
  for (uint64_t first = 0; first < nbytes; first += chunk_bytes) {
    const auto n = static_cast<std::size_t>(std::min<uint64_t>(chunk_bytes, nbytes - first));
    const std::span<std::byte> dst = out.claim(n);
    fill(spec, first, dst);
    if (crc != nullptr) crc->update(dst);
    out.advance(n);
  }
}

void sync_directory(const std::filesystem::path& dir) {
  int fd;
  do {
    fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  FERRY_SYSCALL(fd, "cannot open directory {} to flush it", dir.string());
  const UniqueFd owner(fd);
  // Some file systems cannot fsync a directory (EINVAL); their renames are as durable as
  // they get, so that is not an error.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    FERRY_SYSCALL(-1, "cannot flush directory {} to disk", dir.string());
  }
}

}  // namespace ferry::offload::detail
