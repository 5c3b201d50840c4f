// UniqueFd (the one owner of a file descriptor) and checked positional I/O helpers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace ferry::offload {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  int release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_ = -1;
};

// Opens for reading (O_RDONLY | O_CLOEXEC | extra_flags). Throws IoError naming the path.
UniqueFd open_read(const std::filesystem::path& path, int extra_flags = 0);
// Creates or truncates for writing. Throws IoError naming the path.
UniqueFd open_write(const std::filesystem::path& path);

uint64_t file_size(int fd, const std::filesystem::path& path_for_errors);

// Reads exactly nbytes at offset, retrying short reads and EINTR. Throws FormatError if the
// file ends first ("<path> ends at byte N but <what> needs bytes [a, b)") and IoError on errors.
void pread_full(int fd, void* dst, std::size_t nbytes, uint64_t offset,
                const std::filesystem::path& path_for_errors, const char* what);

// Writes exactly nbytes at the current position, retrying short writes and EINTR.
void write_full(int fd, const void* src, std::size_t nbytes,
                const std::filesystem::path& path_for_errors);

}  // namespace ferry::offload
