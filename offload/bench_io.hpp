// bench-io: how fast each I/O engine reads a file from a cold page cache, read the way the
// layer streamer reads (large batches into staging slots, several batches in flight). The
// roofline it is judged against is fio's sequential O_DIRECT io_uring read (bench/io_vs_fio.sh).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "offload/io_engine.hpp"

namespace ferry::offload {

struct BenchIoOptions {
  std::vector<IoBackendKind> engines = {IoBackendKind::uring, IoBackendKind::pread,
                                        IoBackendKind::mmap, IoBackendKind::buffered};
  uint64_t max_bytes = 0;  // 0: the whole file
  uint32_t queue_depth = 16;
  uint64_t chunk_bytes = 1ULL << 20;
  uint64_t batch_bytes = 64ULL << 20;  // one submitted batch, like one layer
  std::size_t batches_in_flight = 4;   // staging slots
  bool evict_page_cache = true;        // before every run, so each engine reads from disk
};

struct BenchIoResult {
  IoBackendKind engine = IoBackendKind::uring;
  std::string description;  // IoEngine::describe() plus buffer registration, or the error
  uint64_t nbytes = 0;
  double seconds = 0;
  double bytes_per_s = 0;
  bool evicted = false;  // the page cache was dropped before the run
  std::string error;     // non-empty: the engine could not run
};

// Drops the file's pages from the page cache (posix_fadvise DONTNEED). Returns false with the
// reason in `why` when the kernel would not.
bool evict_from_page_cache(const std::filesystem::path& path, std::string& why);

// Reads the file (or its first max_bytes) once with each engine, in order. An engine that
// cannot run (io_uring refused) gets `error` set instead of aborting the others. Throws
// InvalidArgument for bad options and IoError when the file cannot be opened at all.
std::vector<BenchIoResult> bench_io(const std::filesystem::path& path,
                                    const BenchIoOptions& options);

// {"uring": {"bytes_per_s": N, "nbytes": N, "seconds": S, "description": "..."}, ...} on one
// line; a failed engine has "bytes_per_s": null and "error".
std::string bench_io_json(const std::vector<BenchIoResult>& results);

}  // namespace ferry::offload
