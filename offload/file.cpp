#include "offload/file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "runtime/core/error.hpp"

namespace ferry::offload {

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0 && ::close(fd_) != 0) {
    std::fprintf(stderr, "ferry: warning: close(%d) failed: %s\n", fd_, std::strerror(errno));
  }
}

UniqueFd open_read(const std::filesystem::path& path, int extra_flags) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | extra_flags);
  } while (fd < 0 && errno == EINTR);
  FERRY_SYSCALL(fd, "cannot open {} for reading", path.string());
  return UniqueFd(fd);
}

UniqueFd open_write(const std::filesystem::path& path) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  FERRY_SYSCALL(fd, "cannot create {}", path.string());
  return UniqueFd(fd);
}

uint64_t file_size(int fd, const std::filesystem::path& path_for_errors) {
  struct stat st {};
  FERRY_SYSCALL(::fstat(fd, &st), "cannot stat {}", path_for_errors.string());
  return static_cast<uint64_t>(st.st_size);
}

void pread_full(int fd, void* dst, std::size_t nbytes, uint64_t offset,
                const std::filesystem::path& path_for_errors, const char* what) {
  auto* out = static_cast<char*>(dst);
  std::size_t done = 0;
  while (done < nbytes) {
    const ssize_t r = ::pread(fd, out + done, nbytes - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      FERRY_SYSCALL(r, "read of {} bytes at offset {} of {} ({}) failed", nbytes - done,
                    offset + done, path_for_errors.string(), what);
    }
    FERRY_FORMAT_EXPECT(r != 0,
                        "{} ends at byte {} but {} needs bytes [{}, {}); the file is truncated — "
                        "download or convert it again",
                        path_for_errors.string(), offset + done, what, offset, offset + nbytes);
    done += static_cast<std::size_t>(r);
  }
}

void write_full(int fd, const void* src, std::size_t nbytes,
                const std::filesystem::path& path_for_errors) {
  const auto* in = static_cast<const char*>(src);
  std::size_t done = 0;
  while (done < nbytes) {
    const ssize_t r = ::write(fd, in + done, nbytes - done);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      FERRY_SYSCALL(r, "write of {} bytes to {} failed", nbytes - done, path_for_errors.string());
    }
    done += static_cast<std::size_t>(r);
  }
}

}  // namespace ferry::offload
