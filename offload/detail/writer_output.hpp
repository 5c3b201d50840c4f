// OutputFile: one checkpoint file being written, buffered, under a private temporary name beside
// it until it is complete, so an interrupted write never leaves a file that looks whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "offload/checkpoint_writer.hpp"
#include "offload/file.hpp"
#include "runtime/core/file_output.hpp"

namespace ferry::offload::detail {

class Crc32;

class OutputFile {
 public:
  // Creates a fresh temporary beside final_path (its own, so two writers never share one).
  // buffer_bytes is the most claim() may ask.
  OutputFile(std::filesystem::path final_path, std::size_t buffer_bytes);
  // Removes the temporary unless commit() succeeded: a failed write leaves nothing behind.
  ~OutputFile();
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  void write(std::span<const std::byte> bytes);
  void write(std::string_view bytes) { write(std::as_bytes(std::span(bytes))); }
  // n writable bytes inside the buffer (n <= buffer_bytes), valid until the next call. They
  // become file content only when advance() says so; this lets fill() write straight into the
  // buffer with no extra copy.
  std::span<std::byte> claim(std::size_t n);
  void advance(std::size_t n);

  // Bytes of the file written so far (buffered ones included): the next byte's offset.
  uint64_t offset() const { return flushed_bytes_ + used_; }
  const std::filesystem::path& final_path() const { return final_path_; }

  // Flushes, fsyncs, closes and renames the temporary to its final name.
  void commit();

 private:
  void flush();

  std::filesystem::path final_path_;
  std::filesystem::path partial_path_;
  UniqueFd fd_;
  std::unique_ptr<RemoveOnSignal> remove_on_signal_;
  std::unique_ptr<std::byte[]> buffer_;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
  uint64_t flushed_bytes_ = 0;
  bool committed_ = false;
};

// Streams spec's bytes from fill into out, chunk_bytes per call (chunks start at multiples of
// chunk_bytes within the tensor), feeding every chunk to crc when crc is not null.
void stream_tensor(OutputFile& out, const TensorSpec& spec, const TensorFiller& fill,
                   std::size_t chunk_bytes, Crc32* crc);

// fsyncs a directory so the renames into it survive a crash.
void sync_directory(const std::filesystem::path& dir);

// Little-endian integers appended to a byte string (zip and safetensors headers, pickles).
template <class T>
void append_le(std::string& out, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) {
    out.push_back(static_cast<char>(static_cast<uint64_t>(value) >> (8 * i) & 0xFFU));
  }
}

}  // namespace ferry::offload::detail
