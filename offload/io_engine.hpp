// IoEngine: reads byte ranges of checkpoint files into caller memory with a queue of large
// reads kept in flight (io_uring, a pread thread pool, or buffered reads), every completion
// checked, and fallbacks chosen once and reported. The layer streamer sits on top of it: a
// layer is one or a few 4 KiB-aligned ranges read into a page-aligned staging slot.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::offload {

namespace detail {
class IoBackend;
class IoEngineCore;
class BufferTable;
struct TicketState;
}  // namespace detail

// O_DIRECT needs offsets, lengths and buffers aligned to the device's logical block; 4 KiB
// covers every block size in use, so ferry aligns everything to it.
inline constexpr uint64_t kDirectIoAlignment = 4096;

// Which mechanism performs the reads. `mmap` copies out of a mapping and exists only to be
// benchmarked against: a file truncated under a mapping raises SIGBUS instead of an error.
enum class IoBackendKind { automatic, uring, pread, buffered, mmap };

std::string_view to_string(IoBackendKind kind);
// "auto", "uring" (or "io_uring"), "pread", "buffered", "mmap". Throws InvalidArgument naming
// the text and the accepted values.
IoBackendKind parse_io_backend(std::string_view text);

// Where a completion happened, as shown to a fault hook.
struct IoFaultSite {
  const std::filesystem::path& path;
  uint32_t file_index;
  uint64_t offset_bytes;  // where this read (or resubmission) starts
  uint64_t nbytes;        // how many bytes it asked for
  uint32_t attempt;       // 0 for the first try of this piece, then counts retries
};
// Sees every completion result (bytes read, or -errno) before the engine does and returns
// the result to act on: tests inject -EIO at an offset, short reads or -EAGAIN storms through
// it in every backend. A positive result larger than the real one is clamped to the real one.
// Called from the engine's I/O threads, so it must be thread-safe.
using IoFaultHook = std::function<int64_t(const IoFaultSite& site, int64_t result)>;

// Failures to simulate where the real ones cannot be provoked on a test machine.
struct IoTestHooks {
  IoFaultHook on_completion;
  int uring_init_errno = 0;        // pretend io_uring_queue_init failed with this errno
  int register_buffers_errno = 0;  // pretend buffer registration failed (e.g. ENOMEM)
  int open_direct_errno = 0;       // pretend open(O_DIRECT) failed with this errno
};

// The engine's settings; defaults suit an NVMe disk. Each is overridable from the environment
// (see from_env) and from the command line by the tools.
struct IoOptions {
  IoBackendKind backend = IoBackendKind::automatic;
  uint32_t queue_depth = 16;          // reads kept in flight (pread: worker threads)
  uint64_t chunk_bytes = 1ULL << 20;  // a large read is split into pieces of this size
  bool direct = true;                 // O_DIRECT where the filesystem allows it
  bool report_fallbacks = true;       // print each fallback once on stderr
  // Told (bytes loaded, bytes to load) as each resident unit of a LayerStreamer arrives at load
  // time, for a progress line; empty: nobody is told.
  std::function<void(uint64_t done_bytes, uint64_t total_bytes)> on_load_progress;
  IoTestHooks test;

  // `base` with FERRY_IO (backend), FERRY_IO_QUEUE_DEPTH, FERRY_IO_CHUNK (a size such as
  // "1MiB") and FERRY_IO_DIRECT (0/1) applied, then validated. Throws InvalidArgument naming
  // the variable, its value and what is accepted.
  static IoOptions from_env(IoOptions base);
  static IoOptions from_env() { return from_env(IoOptions{}); }

  // Throws InvalidArgument unless queue_depth is in [1, 1024] and chunk_bytes is a multiple
  // of 4 KiB in [4 KiB, 64 MiB].
  void validate() const;
};

// An unaligned byte range widened to the aligned range O_DIRECT can read: read
// [offset_bytes, offset_bytes + nbytes) and find the wanted bytes at skip_bytes inside it.
// The widened end may lie past EOF; min_bytes() is what must really arrive.
struct AlignedRange {
  uint64_t offset_bytes = 0;
  uint64_t nbytes = 0;
  uint64_t skip_bytes = 0;
  uint64_t wanted_nbytes = 0;
  uint64_t min_bytes() const { return skip_bytes + wanted_nbytes; }
};
AlignedRange aligned_superset(uint64_t offset_bytes, uint64_t nbytes,
                              uint64_t alignment = kDirectIoAlignment);

// A file opened by an engine; valid for the engine's lifetime.
using IoFileIndex = uint32_t;

// One read: bytes [offset_bytes, offset_bytes + nbytes) of a file into dst. Only the first
// min_bytes must exist; the read may end at EOF after that (the bytes of dst beyond EOF are
// left as they were). With O_DIRECT, offset_bytes, nbytes and dst must be multiples of
// engine.alignment(file); use aligned_superset() for an unaligned tensor.
struct ReadRequest {
  static constexpr uint64_t kAll = UINT64_MAX;
  IoFileIndex file = 0;
  uint64_t offset_bytes = 0;
  uint64_t nbytes = 0;
  void* dst = nullptr;
  uint64_t min_bytes = kAll;  // kAll: all nbytes must exist
};

// urgent batches go ahead of every queued read (not of reads already in flight): for the few
// bytes compute is waiting on now (embedding rows) while layers are being prefetched.
enum class IoPriority { normal, urgent };

// The completion of a submitted batch. Move-only; its destructor waits for the reads still in
// flight (so their destination cannot be freed under them) and logs an error nobody waited
// for. Destroy the ticket before the staging lease it reads into.
class IoTicket {
 public:
  IoTicket() = default;
  IoTicket(IoTicket&&) noexcept;
  IoTicket& operator=(IoTicket&&) noexcept;
  IoTicket(const IoTicket&) = delete;
  IoTicket& operator=(const IoTicket&) = delete;
  ~IoTicket();

  bool valid() const { return state_ != nullptr; }
  // True once every read of the batch has finished (successfully or not); never blocks, never
  // throws.
  bool poll() const;
  // Blocks until every byte is in. Throws IoError (naming file, offset and errno) or
  // FormatError (file truncated) if any read failed; no read of the batch is in flight then.
  void wait();
  // When the batch's last read finished; meaningful once poll() is true (for traces).
  std::chrono::steady_clock::time_point completed_at() const;

 private:
  friend class detail::IoEngineCore;
  explicit IoTicket(std::shared_ptr<detail::TicketState> state);
  void wait_noexcept() noexcept;
  std::shared_ptr<detail::TicketState> state_;
  bool observed_ = false;  // wait() has reported the outcome to someone
};

// A piece of host memory to register with the engine (a staging slot).
struct MemoryRegion {
  void* data = nullptr;
  uint64_t nbytes = 0;
};

// Buffers registered with an io_uring (fixed-buffer reads skip the per-read page pinning);
// unregistered on destruction. Registration may be refused (RLIMIT_MEMLOCK) or meaningless
// (not io_uring): then registered() is false, why() says so, and reads into the memory still
// work as normal reads.
class RegisteredBuffers {
 public:
  RegisteredBuffers() = default;
  RegisteredBuffers(RegisteredBuffers&&) noexcept;
  RegisteredBuffers& operator=(RegisteredBuffers&&) noexcept;
  RegisteredBuffers(const RegisteredBuffers&) = delete;
  RegisteredBuffers& operator=(const RegisteredBuffers&) = delete;
  ~RegisteredBuffers();

  bool registered() const { return n_entries_ > 0; }
  uint64_t nbytes() const { return nbytes_; }
  const std::string& why() const { return why_; }

 private:
  friend class detail::IoEngineCore;
  void reset() noexcept;
  std::shared_ptr<detail::BufferTable> table_;
  uint32_t first_entry_ = 0;
  uint32_t n_entries_ = 0;
  uint64_t nbytes_ = 0;
  std::string why_;
};

// The I/O engine. Thread-safe: any thread may open files, submit batches and wait on tickets.
// Destruction waits for every read still in flight.
class IoEngine {
 public:
  explicit IoEngine(IoOptions options);
  IoEngine() : IoEngine(IoOptions::from_env()) {}
  ~IoEngine();
  IoEngine(const IoEngine&) = delete;
  IoEngine& operator=(const IoEngine&) = delete;

  // Opens a file for reading (O_DIRECT when the options and the filesystem allow, else
  // buffered, reported) and registers it with the ring. Throws IoError naming the path.
  IoFileIndex open(const std::filesystem::path& path);
  const std::filesystem::path& path(IoFileIndex file) const;
  // The file's current size (fstat; it follows a truncation).
  uint64_t file_size(IoFileIndex file) const;
  // Whether reads of the file bypass the page cache right now.
  bool is_direct(IoFileIndex file) const;
  // What offsets, lengths and destinations of reads of the file must be multiples of.
  uint64_t alignment(IoFileIndex file) const;

  // Queues a batch of reads and returns at once. Throws InvalidArgument for a bad request
  // (unknown file, null dst, misaligned under O_DIRECT) before anything is queued.
  IoTicket submit(std::span<const ReadRequest> requests, IoPriority priority = IoPriority::normal);
  // submit(...).wait().
  void read(std::span<const ReadRequest> requests, IoPriority priority = IoPriority::normal);

  // Registers memory for fixed-buffer reads (io_uring only; see RegisteredBuffers). The
  // handle must be destroyed before the memory is freed.
  RegisteredBuffers register_buffers(std::span<const MemoryRegion> regions);

  // The backend really in use, after fallbacks (never automatic).
  IoBackendKind backend() const;
  const IoOptions& options() const;
  // One line, e.g. "io_uring (O_DIRECT, qd 16, 1 MiB chunks, registered files)", followed by
  // every fallback taken ("; pread pool: io_uring unavailable: ...").
  std::string describe() const;

 private:
  std::unique_ptr<detail::IoEngineCore> core_;
};

}  // namespace ferry::offload
