#include "offload/io_engine.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include "offload/detail/io_common.hpp"
#include "offload/detail/io_pool_backend.hpp"
#include "offload/detail/io_uring_backend.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry::offload {

namespace {

constexpr uint32_t kMaxQueueDepth = 1024;
constexpr uint64_t kMaxChunkBytes = 64ULL << 20;

void check_queue_depth(uint64_t depth, std::string_view source) {
  FERRY_EXPECT(depth >= 1 && depth <= kMaxQueueDepth,
               "{}: I/O queue depth {} is out of range; use 1 to {} (16 suits an NVMe disk)",
               source, depth, kMaxQueueDepth);
}

void check_chunk_bytes(uint64_t nbytes, std::string_view source) {
  FERRY_EXPECT(
      nbytes >= kDirectIoAlignment && nbytes <= kMaxChunkBytes && nbytes % kDirectIoAlignment == 0,
      "{}: I/O chunk size {} bytes is invalid; it must be a multiple of 4 KiB between "
      "4 KiB and 64 MiB, e.g. 1MiB",
      source, nbytes);
}

std::string lower(std::string_view text) {
  std::string s(text);
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string rethrow_message(const std::exception& e) { return e.what(); }

}  // namespace

std::string_view to_string(IoBackendKind kind) {
  switch (kind) {
    case IoBackendKind::automatic:
      return "auto";
    case IoBackendKind::uring:
      return "uring";
    case IoBackendKind::pread:
      return "pread";
    case IoBackendKind::buffered:
      return "buffered";
    case IoBackendKind::mmap:
      return "mmap";
  }
  return "unknown";
}

IoBackendKind parse_io_backend(std::string_view text) {
  const std::string s = lower(text);
  if (s == "auto") return IoBackendKind::automatic;
  if (s == "uring" || s == "io_uring") return IoBackendKind::uring;
  if (s == "pread") return IoBackendKind::pread;
  if (s == "buffered") return IoBackendKind::buffered;
  if (s == "mmap") return IoBackendKind::mmap;
  FERRY_EXPECT(false, "unknown I/O engine '{}'; use auto, uring, pread, buffered or mmap", text);
  return IoBackendKind::automatic;
}

IoOptions IoOptions::from_env(IoOptions base) {
  if (const char* v = std::getenv("FERRY_IO"); v != nullptr && *v != '\0') {
    try {
      base.backend = parse_io_backend(v);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(fmt::format("FERRY_IO={}: {}", v, rethrow_message(e)));
    }
  }
  if (const char* v = std::getenv("FERRY_IO_QUEUE_DEPTH"); v != nullptr && *v != '\0') {
    const std::string_view text(v);
    uint64_t depth = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), depth);
    FERRY_EXPECT(ec == std::errc() && end == text.data() + text.size(),
                 "FERRY_IO_QUEUE_DEPTH={}: not a whole number; use 1 to {}", text, kMaxQueueDepth);
    check_queue_depth(depth, fmt::format("FERRY_IO_QUEUE_DEPTH={}", text));
    base.queue_depth = static_cast<uint32_t>(depth);
  }
  if (const char* v = std::getenv("FERRY_IO_CHUNK"); v != nullptr && *v != '\0') {
    uint64_t nbytes = 0;
    try {
      nbytes = parse_size(v);
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(fmt::format("FERRY_IO_CHUNK={}: {}", v, rethrow_message(e)));
    }
    check_chunk_bytes(nbytes, fmt::format("FERRY_IO_CHUNK={}", v));
    base.chunk_bytes = nbytes;
  }
  if (const char* v = std::getenv("FERRY_IO_DIRECT"); v != nullptr && *v != '\0') {
    const std::string s = lower(v);
    if (s == "1" || s == "on" || s == "true" || s == "yes") {
      base.direct = true;
    } else if (s == "0" || s == "off" || s == "false" || s == "no") {
      base.direct = false;
    } else {
      FERRY_EXPECT(false, "FERRY_IO_DIRECT={}: use 1 or 0", v);
    }
  }
  base.validate();
  return base;
}

void IoOptions::validate() const {
  check_queue_depth(queue_depth, "I/O options");
  check_chunk_bytes(chunk_bytes, "I/O options");
}

AlignedRange aligned_superset(uint64_t offset_bytes, uint64_t nbytes, uint64_t alignment) {
  FERRY_EXPECT(alignment != 0 && (alignment & (alignment - 1)) == 0,
               "alignment {} is not a power of two", alignment);
  FERRY_EXPECT(nbytes <= UINT64_MAX - offset_bytes - alignment,
               "byte range at offset {} of {} bytes overflows", offset_bytes, nbytes);
  AlignedRange r;
  r.offset_bytes = offset_bytes & ~(alignment - 1);
  r.skip_bytes = offset_bytes - r.offset_bytes;
  r.wanted_nbytes = nbytes;
  if (nbytes == 0) return r;  // nothing to read; nbytes stays 0
  const uint64_t end = (offset_bytes + nbytes + alignment - 1) & ~(alignment - 1);
  r.nbytes = end - r.offset_bytes;
  return r;
}

// ---- IoTicket ----

IoTicket::IoTicket(std::shared_ptr<detail::TicketState> state) : state_(std::move(state)) {}

IoTicket::IoTicket(IoTicket&& o) noexcept
    : state_(std::move(o.state_)), observed_(std::exchange(o.observed_, false)) {}

IoTicket& IoTicket::operator=(IoTicket&& o) noexcept {
  if (this != &o) {
    wait_noexcept();
    state_ = std::move(o.state_);
    observed_ = std::exchange(o.observed_, false);
  }
  return *this;
}

IoTicket::~IoTicket() { wait_noexcept(); }

bool IoTicket::poll() const {
  if (!state_) return true;
  std::lock_guard lock(state_->mu);
  return state_->done;
}

std::chrono::steady_clock::time_point IoTicket::completed_at() const {
  if (!state_) return {};
  std::lock_guard lock(state_->mu);
  return state_->done_at;
}

void IoTicket::wait() {
  FERRY_EXPECT(state_ != nullptr, "wait() on an empty IoTicket");
  state_->wait();
  observed_ = true;
  if (state_->error) std::rethrow_exception(state_->error);
}

void IoTicket::wait_noexcept() noexcept {
  if (!state_) return;
  state_->wait();
  if (!observed_ && state_->error) {
    // Dropping a ticket is how a streamer abandons a prefetch; still, a failed read should
    // not vanish without a trace.
    try {
      std::rethrow_exception(state_->error);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry: warning: a read nobody waited for failed: %s\n", e.what());
    } catch (...) {
      std::fprintf(stderr, "ferry: warning: a read nobody waited for failed\n");
    }
  }
  state_.reset();
  observed_ = false;
}

// ---- RegisteredBuffers ----

RegisteredBuffers::RegisteredBuffers(RegisteredBuffers&& o) noexcept
    : table_(std::move(o.table_)),
      first_entry_(std::exchange(o.first_entry_, 0)),
      n_entries_(std::exchange(o.n_entries_, 0)),
      nbytes_(std::exchange(o.nbytes_, 0)),
      why_(std::move(o.why_)) {}

RegisteredBuffers& RegisteredBuffers::operator=(RegisteredBuffers&& o) noexcept {
  if (this != &o) {
    reset();
    table_ = std::move(o.table_);
    first_entry_ = std::exchange(o.first_entry_, 0);
    n_entries_ = std::exchange(o.n_entries_, 0);
    nbytes_ = std::exchange(o.nbytes_, 0);
    why_ = std::move(o.why_);
  }
  return *this;
}

RegisteredBuffers::~RegisteredBuffers() { reset(); }

void RegisteredBuffers::reset() noexcept {
  if (table_ && n_entries_ > 0) table_->remove(first_entry_, n_entries_);
  table_.reset();
  n_entries_ = 0;
  nbytes_ = 0;
}

// ---- the engine ----

namespace detail {

class IoEngineCore {
 public:
  explicit IoEngineCore(IoOptions options);
  ~IoEngineCore();
  IoEngineCore(const IoEngineCore&) = delete;
  IoEngineCore& operator=(const IoEngineCore&) = delete;

  IoFileIndex open(const std::filesystem::path& path);
  FileSlot& file(IoFileIndex index) const;
  IoTicket submit(std::span<const ReadRequest> requests, IoPriority priority);
  RegisteredBuffers register_buffers(std::span<const MemoryRegion> regions);
  IoBackendKind kind() const { return kind_; }
  const IoOptions& options() const { return options_; }
  std::string describe() const;

 private:
  std::unique_ptr<IoBackend> make_pool(IoBackendKind kind);

  IoOptions options_;
  FallbackNotes notes_;
  IoBackendKind kind_ = IoBackendKind::automatic;
  mutable std::mutex files_mu_;
  std::vector<std::unique_ptr<FileSlot>> files_;
  // Declared after files_ so it is destroyed (and drained) before the files its reads use.
  std::unique_ptr<IoBackend> backend_;
};

IoEngineCore::IoEngineCore(IoOptions options)
    : options_(std::move(options)), notes_(options_.report_fallbacks) {
  options_.validate();
  switch (options_.backend) {
    case IoBackendKind::automatic:
    case IoBackendKind::uring:
      try {
        backend_ = std::make_unique<UringBackend>(options_, notes_);
        kind_ = IoBackendKind::uring;
      } catch (const IoError& e) {
        if (options_.backend == IoBackendKind::uring) {
          throw IoError(e.code().value(),
                        fmt::format("io_uring is unavailable ({}); use --io auto or pread, or "
                                    "FERRY_IO=auto",
                                    e.what()));
        }
        // Old kernels (ENOSYS), seccomp filters in containers (EPERM/ENOSYS) and
        // kernel.io_uring_disabled (EPERM) all land here.
        notes_.add(fmt::format("pread pool instead of io_uring: {}", e.what()));
        backend_ = make_pool(IoBackendKind::pread);
        kind_ = IoBackendKind::pread;
      }
      break;
    case IoBackendKind::pread:
    case IoBackendKind::buffered:
    case IoBackendKind::mmap:
      kind_ = options_.backend;
      backend_ = make_pool(kind_);
      break;
  }
}

std::unique_ptr<IoBackend> IoEngineCore::make_pool(IoBackendKind kind) {
  const std::string chunk = format_bytes(options_.chunk_bytes);
  switch (kind) {
    case IoBackendKind::buffered:
      // Plain reads through the page cache from one thread, as a simple loader would do.
      options_.direct = false;
      return std::make_unique<PoolBackend>(
          PoolBackend::Mode::pread, 1, options_.test, notes_,
          fmt::format("buffered reads (page cache, 1 thread, {} chunks)", chunk));
    case IoBackendKind::mmap:
      options_.direct = false;
      return std::make_unique<PoolBackend>(
          PoolBackend::Mode::mmap, 1, options_.test, notes_,
          "mmap (copies out of a read-only mapping, 1 thread; benchmarks only)");
    default:
      return std::make_unique<PoolBackend>(
          PoolBackend::Mode::pread, options_.queue_depth, options_.test, notes_,
          fmt::format("pread pool ({}, {} threads, {} chunks)",
                      options_.direct ? "O_DIRECT" : "buffered", options_.queue_depth, chunk));
  }
}

IoEngineCore::~IoEngineCore() { backend_->shutdown(); }

IoFileIndex IoEngineCore::open(const std::filesystem::path& path) {
  bool direct = options_.direct;
  UniqueFd fd;
  if (direct) {
    int err = options_.test.open_direct_errno;
    if (err == 0) {
      int raw;
      do {
        raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_DIRECT);
      } while (raw < 0 && errno == EINTR);
      if (raw < 0) err = errno;
      fd = UniqueFd(raw);
    }
    if (err == EINVAL || err == EOPNOTSUPP) {
      direct = false;
      notes_.add(fmt::format("buffered reads for {}: the filesystem refused O_DIRECT ({})",
                             path.string(), std::strerror(err)));
    } else if (err != 0) {
      throw IoError(err, fmt::format("cannot open {} for reading", path.string()));
    }
  }
  if (!direct) fd = open_read(path);
  std::lock_guard lock(files_mu_);
  const auto index = static_cast<IoFileIndex>(files_.size());
  files_.push_back(std::make_unique<FileSlot>(path, index, std::move(fd), direct));
  try {
    backend_->add_file(*files_.back());
  } catch (...) {
    files_.pop_back();
    throw;
  }
  return index;
}

FileSlot& IoEngineCore::file(IoFileIndex index) const {
  std::lock_guard lock(files_mu_);
  FERRY_EXPECT(index < files_.size(), "file index {} is not a file of this I/O engine ({} open)",
               index, files_.size());
  return *files_[index];
}

IoTicket IoEngineCore::submit(std::span<const ReadRequest> requests, IoPriority priority) {
  auto state = std::make_shared<TicketState>();
  const std::shared_ptr<BufferTable> table = backend_->buffer_table();
  std::vector<Chunk> chunks;
  for (const ReadRequest& req : requests) {
    FileSlot& f = file(req.file);
    if (req.nbytes == 0) continue;
    FERRY_EXPECT(req.dst != nullptr, "read of {} bytes at offset {} of {} has no destination",
                 req.nbytes, req.offset_bytes, f.path().string());
    FERRY_EXPECT(req.nbytes <= UINT64_MAX - req.offset_bytes,
                 "read of {} bytes at offset {} of {} overflows", req.nbytes, req.offset_bytes,
                 f.path().string());
    if (f.direct()) {
      const auto dst_addr = reinterpret_cast<uintptr_t>(req.dst);
      FERRY_EXPECT(req.offset_bytes % kDirectIoAlignment == 0 &&
                       req.nbytes % kDirectIoAlignment == 0 && dst_addr % kDirectIoAlignment == 0,
                   "O_DIRECT read of {} bytes at offset {} of {} into {} is not 4 KiB-aligned "
                   "(offset, length and destination must all be); read the range's "
                   "aligned_superset() into page-aligned memory",
                   req.nbytes, req.offset_bytes, f.path().string(), req.dst);
    }
    const uint64_t required_end = req.offset_bytes + std::min(req.min_bytes, req.nbytes);
    auto* dst = static_cast<std::byte*>(req.dst);
    for (uint64_t pos = 0; pos < req.nbytes; pos += options_.chunk_bytes) {
      Chunk c;
      c.ticket = state;
      c.file = &f;
      c.offset_bytes = req.offset_bytes + pos;
      c.nbytes = std::min(options_.chunk_bytes, req.nbytes - pos);
      c.dst = dst + pos;
      c.required_end = required_end;
      c.buf_index = table ? table->find(c.dst, c.nbytes) : -1;
      chunks.push_back(std::move(c));
    }
  }
  state->remaining_chunks = chunks.size();
  state->done = chunks.empty();
  if (!chunks.empty()) backend_->start(std::move(chunks), priority);
  return IoTicket(std::move(state));
}

RegisteredBuffers IoEngineCore::register_buffers(std::span<const MemoryRegion> regions) {
  RegisteredBuffers rb;
  uint64_t total = 0;
  for (const MemoryRegion& r : regions) total += r.nbytes;
  const std::shared_ptr<BufferTable> table = backend_->buffer_table();
  if (!table) {
    rb.why_ =
        fmt::format("not registered: the {} engine has no registered buffers", to_string(kind_));
    return rb;
  }
  uint32_t first = 0;
  uint32_t count = 0;
  const int err = table->add(regions, first, count);
  if (err != 0) {
    std::string hint;
    if (err == ENOMEM || err == EPERM) {
      rlimit lim{};
      if (::getrlimit(RLIMIT_MEMLOCK, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
        hint = fmt::format(
            "; RLIMIT_MEMLOCK is {}: raise it (ulimit -l, LimitMEMLOCK=) for "
            "fixed-buffer reads",
            format_bytes(lim.rlim_cur));
      }
    }
    rb.why_ = fmt::format(
        "ordinary reads instead of fixed buffers: io_uring refused to register "
        "{} ({}){}",
        format_bytes(total), std::strerror(err), hint);
    notes_.add(rb.why_);
    return rb;
  }
  rb.table_ = table;
  rb.first_entry_ = first;
  rb.n_entries_ = count;
  rb.nbytes_ = total;
  rb.why_ = fmt::format("{} registered with io_uring in {} buffers", format_bytes(total), count);
  return rb;
}

std::string IoEngineCore::describe() const {
  std::string s = backend_->describe();
  for (const std::string& note : notes_.all()) s += "; " + note;
  return s;
}

}  // namespace detail

IoEngine::IoEngine(IoOptions options)
    : core_(std::make_unique<detail::IoEngineCore>(std::move(options))) {}

IoEngine::~IoEngine() = default;

IoFileIndex IoEngine::open(const std::filesystem::path& path) { return core_->open(path); }

const std::filesystem::path& IoEngine::path(IoFileIndex file) const {
  return core_->file(file).path();
}

uint64_t IoEngine::file_size(IoFileIndex file) const { return core_->file(file).current_size(); }

bool IoEngine::is_direct(IoFileIndex file) const { return core_->file(file).direct(); }

uint64_t IoEngine::alignment(IoFileIndex file) const {
  return core_->file(file).direct() ? kDirectIoAlignment : 1;
}

IoTicket IoEngine::submit(std::span<const ReadRequest> requests, IoPriority priority) {
  return core_->submit(requests, priority);
}

void IoEngine::read(std::span<const ReadRequest> requests, IoPriority priority) {
  submit(requests, priority).wait();
}

RegisteredBuffers IoEngine::register_buffers(std::span<const MemoryRegion> regions) {
  return core_->register_buffers(regions);
}

IoBackendKind IoEngine::backend() const { return core_->kind(); }

const IoOptions& IoEngine::options() const { return core_->options(); }

std::string IoEngine::describe() const { return core_->describe(); }

}  // namespace ferry::offload
