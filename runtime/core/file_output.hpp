// Files ferry writes are replaced whole or not at all: every output is written to a private
// temporary beside its destination, flushed to disk and renamed over it, and temporaries are
// removed on errors and on SIGINT, SIGTERM and SIGHUP.
#pragma once

#include <filesystem>
#include <string_view>

namespace ferry {

// Writes `bytes` to `path`: a reader sees the old file (or none) or the whole new one, never a
// part; a full disk leaves the old file as it was. `what` names the file in errors ("the
// plan"). Throws IoError naming the path and the cause (ENOSPC, EACCES, a missing directory).
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes,
                           std::string_view what);

// Checks up front that `path` can be written later (its directory exists and is writable, and
// it is not a directory), so that a bad --trace path is refused before a long run, not after.
// Throws InvalidArgument naming `flag` and the path.
void check_writable(const std::filesystem::path& path, std::string_view flag);

// Creates a fresh file beside `dest` ("<dir>/.<name>.tmp-XXXXXX", mode 0644, O_EXCL so no other
// writer shares it) for writing and returns its descriptor; `tmp` receives its path. Throws
// IoError naming `dest`.
int create_temp_file_beside(const std::filesystem::path& dest, std::filesystem::path& tmp);

// A fresh, private (0700) directory beside `dest`: "<dir>/.<name>.tmp-XXXXXX". Throws IoError.
std::filesystem::path make_temp_dir_beside(const std::filesystem::path& dest);

// Registers a temporary file or directory to be removed if the process is ended by SIGINT,
// SIGTERM or SIGHUP before the owner is destroyed (the signal is then re-raised, so the exit
// status still says which). A directory's entries are removed one level deep. The owner still
// removes the path itself on the normal paths; this only covers the signals.
class RemoveOnSignal {
 public:
  explicit RemoveOnSignal(const std::filesystem::path& path);
  ~RemoveOnSignal();
  RemoveOnSignal(const RemoveOnSignal&) = delete;
  RemoveOnSignal& operator=(const RemoveOnSignal&) = delete;

 private:
  int slot_ = -1;
};

// An exclusive advisory lock (flock) on `lock_path`, created if missing, held until destroyed:
// two ferry processes writing one destination take turns instead of interleaving (the second
// waits for the first). Throws IoError.
class FileLock {
 public:
  explicit FileLock(const std::filesystem::path& lock_path);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace ferry
