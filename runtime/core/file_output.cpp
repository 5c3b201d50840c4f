#include "runtime/core/file_output.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "runtime/core/error.hpp"

namespace ferry {

namespace fs = std::filesystem;

namespace {

// ---- removal on signals ---------------------------------------------------------------------
// A fixed table the handler reads without locks or allocation.
constexpr int kSlots = 32;
constexpr std::size_t kPathBytes = 4096;

struct Slot {
  std::atomic<bool> used{false};
  char path[kPathBytes] = {};
};

Slot g_slots[kSlots];
std::mutex g_slots_mutex;
std::once_flag g_handlers_installed;
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};

// Removes a directory's entries (one level) and the directory, or a file: only system calls,
// since this runs in a signal handler (getdents64 instead of readdir, which allocates).
void remove_path_in_handler(const char* path) {
  if (::unlink(path) == 0 || errno != EISDIR) return;
  const int dir = ::open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    alignas(8) char buf[4096];
    // Entries removed while reading may make getdents skip others: read again from the top
    // until a pass removes nothing ("." and ".." are always there, so n is never 0 then).
    for (bool removed = true; removed;) {
      removed = false;
      ::lseek(dir, 0, SEEK_SET);
      for (;;) {
        const long n = ::syscall(SYS_getdents64, dir, buf, sizeof buf);
        if (n <= 0) break;
        for (long off = 0; off < n;) {
          const auto* d = reinterpret_cast<const dirent64*>(buf + off);
          const char* name = d->d_name;
          if (std::strcmp(name, ".") != 0 && std::strcmp(name, "..") != 0 &&
              ::unlinkat(dir, name, 0) == 0)
            removed = true;
          off += d->d_reclen;
        }
      }
    }
    ::close(dir);
  }
  ::rmdir(path);
}

void on_signal(int sig) {
  for (Slot& s : g_slots)
    if (s.used.load(std::memory_order_acquire)) remove_path_in_handler(s.path);
  // Die of the signal as if nothing had caught it, so the parent sees why.
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void install_handlers() {
  for (const int sig : kSignals) {
    struct sigaction old {};
    ::sigaction(sig, nullptr, &old);
    if (old.sa_handler == SIG_IGN) continue;  // e.g. nohup: keep ignoring it
    struct sigaction sa {};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (const int other : kSignals) sigaddset(&sa.sa_mask, other);
    ::sigaction(sig, &sa, nullptr);
  }
}

// ---- writing --------------------------------------------------------------------------------
void write_all(int fd, std::string_view bytes, const fs::path& tmp, const fs::path& path,
               std::string_view what) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    FERRY_SYSCALL(w, "cannot write {} to {} ({} of {} bytes written to {})", what, path.string(),
                  done, bytes.size(), tmp.string());
    done += static_cast<std::size_t>(w);
  }
}

void sync_directory_of(const fs::path& path) {
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;  // the rename is done; a directory we cannot open cannot be synced
  ::fsync(fd);
  ::close(fd);
}

std::string temp_name_prefix(const fs::path& dest) {
  const fs::path dir = dest.parent_path();
  std::string name = dest.filename().string();
  name.insert(name.begin(), '.');  // (not "." + name: GCC 12 warns falsely on that)
  name.append(".tmp-");
  return (dir.empty() ? fs::path(name) : dir / name).string();
}

}  // namespace

RemoveOnSignal::RemoveOnSignal(const fs::path& path) {
  std::call_once(g_handlers_installed, install_handlers);
  const std::string p = fs::absolute(path).string();
  if (p.size() >= kPathBytes) return;
  const std::lock_guard lock(g_slots_mutex);
  for (int i = 0; i < kSlots; ++i) {
    if (g_slots[i].used.load(std::memory_order_relaxed)) continue;
    std::memcpy(g_slots[i].path, p.c_str(), p.size() + 1);
    g_slots[i].used.store(true, std::memory_order_release);
    slot_ = i;
    return;
  }
}

RemoveOnSignal::~RemoveOnSignal() {
  if (slot_ < 0) return;
  const std::lock_guard lock(g_slots_mutex);
  g_slots[slot_].used.store(false, std::memory_order_release);
}

int create_temp_file_beside(const fs::path& dest, fs::path& tmp) {
  std::string tmpl = temp_name_prefix(dest) + "XXXXXX";
  const int fd = ::mkostemp(tmpl.data(), O_CLOEXEC);
  FERRY_SYSCALL(fd, "cannot write {}: cannot create a file in its directory", dest.string());
  // mkostemp makes the file 0600; outputs are rw-r--r-- like any file ferry writes.
  ::fchmod(fd, 0644);
  tmp = tmpl;
  return fd;
}

void write_file_atomically(const fs::path& path, std::string_view bytes, std::string_view what) {
  fs::path tmp;
  const int fd = create_temp_file_beside(path, tmp);
  const RemoveOnSignal guard(tmp);
  int open_fd = fd;
  try {
    write_all(fd, bytes, tmp, path, what);
    FERRY_SYSCALL(::fsync(fd), "cannot write {} to {}: flushing it to disk failed", what,
                  path.string());
    open_fd = -1;  // close() releases the descriptor even when it reports an error
    FERRY_SYSCALL(::close(fd), "cannot write {} to {}: closing it failed", what, path.string());
    FERRY_SYSCALL(::rename(tmp.c_str(), path.c_str()), "cannot write {} to {}: renaming {} failed",
                  what, path.string(), tmp.string());
  } catch (...) {
    if (open_fd >= 0) ::close(open_fd);
    ::unlink(tmp.c_str());
    throw;
  }
  sync_directory_of(path);
}

void check_writable(const fs::path& path, std::string_view flag) {
  std::error_code ec;
  FERRY_EXPECT(!fs::is_directory(path, ec), "{} {}: is a directory; give a file name", flag,
               path.string());
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  FERRY_EXPECT(fs::is_directory(dir, ec), "{} {}: the directory {} does not exist; create it first",
               flag, path.string(), dir.string());
  FERRY_EXPECT(::access(dir.c_str(), W_OK | X_OK) == 0,
               "{} {}: cannot write in {} ({}); choose a writable directory", flag, path.string(),
               dir.string(), std::strerror(errno));
}

fs::path make_temp_dir_beside(const fs::path& dest) {
  std::string tmpl = temp_name_prefix(dest) + "XXXXXX";
  FERRY_SYSCALL(::mkdtemp(tmpl.data()) == nullptr ? -1 : 0,
                "cannot create a temporary directory beside {}", dest.string());
  return tmpl;
}

FileLock::FileLock(const fs::path& lock_path) {
  int fd;
  do {
    fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  } while (fd < 0 && errno == EINTR);
  FERRY_SYSCALL(fd, "cannot open the lock file {}", lock_path.string());
  int rc;
  do {
    rc = ::flock(fd, LOCK_EX);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    const int err = errno;
    ::close(fd);
    throw IoError(err, fmt::format("cannot lock {}", lock_path.string()));
  }
  fd_ = fd;
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the lock
}

}  // namespace ferry
