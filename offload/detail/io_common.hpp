// What every IoEngine backend shares: open files, batch completion state, the chunk a read is
// split into, and the one function that judges a completion (so every backend checks results
// the same way: short reads, EOF, transient errors, O_DIRECT refusals, real errors).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "offload/detail/mapping_guard.hpp"
#include "offload/file.hpp"
#include "offload/io_engine.hpp"

namespace ferry::offload::detail {

// A transient failure (EAGAIN, EINTR, a short read that made no progress) is retried after a
// growing delay; after this many in a row the read fails instead of spinning forever.
inline constexpr uint32_t kMaxTransientRetries = 100;
inline constexpr std::chrono::microseconds kFirstRetryDelay{20};
inline constexpr std::chrono::microseconds kMaxRetryDelay{10'000};

// The completion state of one submitted batch.
struct TicketState {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t remaining_chunks = 0;
  bool done = false;
  std::chrono::steady_clock::time_point done_at;  // when the last chunk finished (for traces)
  std::exception_ptr error;         // the first failure of the batch
  std::atomic<bool> failed{false};  // lets backends drop queued chunks of a failed batch

  // Called once per chunk by whichever thread finished (or dropped) it.
  void finish_chunk(std::exception_ptr chunk_error) noexcept;
  void wait() noexcept;
};

// A file opened by the engine. Reads go to fd(); after the filesystem refuses O_DIRECT at read
// time the file is reopened buffered and fd() switches, the old descriptor staying open for
// reads still using it.
class FileSlot {
 public:
  FileSlot(std::filesystem::path path, uint32_t index, UniqueFd fd, bool direct);
  ~FileSlot();
  FileSlot(const FileSlot&) = delete;
  FileSlot& operator=(const FileSlot&) = delete;

  const std::filesystem::path& path() const { return path_; }
  uint32_t index() const { return index_; }
  int fd() const { return fd_.load(std::memory_order_acquire); }
  bool direct() const { return direct_.load(std::memory_order_acquire); }
  uint64_t current_size() const;

  // Reopens without O_DIRECT (once; later calls return the same descriptor). Returns the new
  // descriptor; throws IoError if the file cannot be reopened.
  int fall_back_to_buffered();

  // io_uring: whether the file sits in the ring's registered-file table at index().
  std::atomic<bool> fixed{false};

  // mmap backend: the file mapped read-only at open time.
  const std::byte* mapping = nullptr;
  uint64_t mapping_nbytes = 0;
  std::optional<MappingGuard> mapping_guard;  // a truncated file is an error naming it

 private:
  std::filesystem::path path_;
  uint32_t index_;
  std::mutex mu_;
  UniqueFd direct_fd_;
  UniqueFd buffered_fd_;
  std::atomic<int> fd_;
  std::atomic<bool> direct_;
};

// A piece of one request, at most chunk_bytes long: the unit kept in flight.
struct Chunk {
  std::shared_ptr<TicketState> ticket;
  FileSlot* file = nullptr;
  uint64_t offset_bytes = 0;
  uint64_t nbytes = 0;
  std::byte* dst = nullptr;
  uint64_t required_end = 0;  // file offset before which EOF is a truncated file
  uint64_t done_bytes = 0;    // bytes [0, done_bytes) are in
  uint32_t attempt = 0;       // tries of the current piece
  uint32_t transient_failures = 0;
  int32_t buf_index = -1;  // io_uring registered buffer holding the whole chunk, or -1

  uint64_t piece_offset() const { return offset_bytes + done_bytes; }
  uint64_t piece_nbytes() const { return nbytes - done_bytes; }
  std::byte* piece_dst() const { return dst + done_bytes; }
};

// What a backend does with a chunk after a completion.
struct ChunkStep {
  enum Kind {
    complete,        // every byte needed is in
    resubmit,        // read the rest now (short read)
    retry_after,     // transient failure: read the rest after `delay`
    refused_direct,  // O_DIRECT refused: reopen buffered, then read the rest
    failed,          // `error` says why
  };
  Kind kind = complete;
  std::chrono::microseconds delay{0};
  std::exception_ptr error;
};

// Passes a completion result through the test fault hook, if any (positive results clamped to
// the real count, since bytes that were not read cannot be claimed).
int64_t filter_result(const IoTestHooks& hooks, const Chunk& chunk, int64_t result);

// Judges one completion result (bytes read or -errno) for the chunk's current piece and
// advances the chunk. `file_size` gives the file's size now, asked only after a short read to
// tell EOF from a short read in the middle of the file.
ChunkStep apply_result(Chunk& chunk, int64_t result, const std::function<uint64_t()>& file_size);

// filter_result then apply_result, turning anything they throw (a failed fstat, a throwing
// hook) into a failed step: backends call this from their I/O threads.
ChunkStep judge_completion(const IoTestHooks& hooks, Chunk& chunk, int64_t real_result,
                           const std::function<uint64_t()>& file_size) noexcept;

// The error for a failed read, naming file, offset and errno.
std::exception_ptr make_read_error(const Chunk& chunk, int errno_value, const std::string& what);

// Collects the fallbacks an engine took, each reported once.
class FallbackNotes {
 public:
  explicit FallbackNotes(bool print) : print_(print) {}
  void add(const std::string& note);
  std::vector<std::string> all() const;

 private:
  bool print_;
  mutable std::mutex mu_;
  std::vector<std::string> notes_;
};

// A backend performs the chunks an engine hands it.
class IoBackend {
 public:
  virtual ~IoBackend() = default;
  // Takes the chunks of one batch, queued behind the others or (urgent) ahead of them;
  // returns at once. Thread-safe.
  virtual void start(std::vector<Chunk> chunks, IoPriority priority) = 0;
  // A file was opened (register it, map it). May throw.
  virtual void add_file(FileSlot& file) = 0;
  // Fixed-buffer registration (io_uring only); the base refuses.
  virtual std::shared_ptr<BufferTable> buffer_table() { return nullptr; }
  virtual std::string describe() const = 0;
  // Finishes every queued chunk and stops the backend's threads. Idempotent.
  virtual void shutdown() noexcept = 0;
};

}  // namespace ferry::offload::detail
