// Internals of write_checkpoint shared by the format writers, and the knobs tests turn.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "offload/checkpoint_writer.hpp"

namespace ferry::offload::detail {

// Production code uses the defaults; tests shrink chunks (to see many fill() calls without
// big tensors) and force zip64 (to exercise the >4 GiB layout with a small file).
struct WriterTuning {
  // Bytes per fill() call; a tensor's chunks start at multiples of it. A multiple of 8, so a
  // chunk never splits an element.
  std::size_t chunk_bytes = std::size_t{8} << 20;
  // Write every zip entry with zip64 sizes and offsets, as entries past 4 GiB are written.
  bool force_zip64 = false;

  // The write buffer: at least one chunk, and never so small that headers and small tensors
  // go out in tiny writes when a test shrinks the chunks.
  std::size_t buffer_bytes() const { return std::max(chunk_bytes, std::size_t{1} << 20); }
};

std::vector<std::filesystem::path> write_checkpoint_tuned(const std::filesystem::path& dir,
                                                          const std::vector<TensorSpec>& tensors,
                                                          const TensorFiller& fill,
                                                          const WriteOptions& options,
                                                          const WriterTuning& tuning);

// Counts tensor bytes across all shards and reports them through WriteOptions::progress.
class ProgressReporter {
 public:
  ProgressReporter(const WriteProgress& callback, uint64_t total_bytes)
      : callback_(callback), total_bytes_(total_bytes) {}
  void tensor_written(uint64_t nbytes) {
    done_bytes_ += nbytes;
    if (callback_) callback_(done_bytes_, total_bytes_);
  }

 private:
  const WriteProgress& callback_;
  uint64_t done_bytes_ = 0;
  uint64_t total_bytes_ = 0;
};

}  // namespace ferry::offload::detail
