// Reading a ferry pack's preamble and JSON header (docs/pack-format.md), and checking blob bytes
// against the header's checksums.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "offload/detail/source.hpp"

namespace ferry {
class ThreadPool;
}  // namespace ferry

namespace ferry::offload::detail {

struct PackBlob {
  std::string name;  // "layer 3", for messages
  uint64_t offset_bytes = 0;
  uint64_t nbytes = 0;
  std::vector<uint64_t> checksums;  // XXH64 of each kPackChecksumChunk of the blob
};

struct PackContents {
  FileTensors tensors;          // absolute offsets, sorted
  std::vector<PackBlob> blobs;  // sorted by offset
  nlohmann::json metadata;      // the header's "metadata" object (model config, quantization, …)
};

// True when the first 8 bytes are a ferry pack's magic.
bool is_pack_magic(const unsigned char* first8);

// Parses and validates the preamble and the header: a wrong magic, another version, a truncated
// file, a damaged header or a tensor outside its blob raise FormatError naming `source`, the
// problem and what to do.
PackContents read_pack(uint64_t file_size, const ReadAt& read_at, const std::string& source);

// Checks the checksum of every chunk that lies wholly inside bytes [offset_bytes, offset_bytes +
// nbytes) of the pack, whose contents are at data. Throws FormatError naming the blob and the
// tensor holding the first damaged chunk. Returns the number of bytes checked. With `verified`
// (one flag per chunk per blob), chunks already flagged are skipped and good ones flagged. With
// a pool, the chunks are hashed on all its threads (the caller must not be inside one of its
// parallel_for calls); which chunk is reported does not depend on it.
uint64_t verify_pack_range(const PackContents& pack, uint64_t offset_bytes, const void* data,
                           uint64_t nbytes, const std::string& source,
                           std::vector<std::vector<char>>* verified = nullptr,
                           ThreadPool* pool = nullptr);

// The chunks [first, last) of blob b that overlap bytes [offset_bytes, offset_bytes + nbytes).
struct ChunkSpan {
  std::size_t blob = 0;
  uint64_t first = 0;
  uint64_t last = 0;
};
std::vector<ChunkSpan> pack_chunks_overlapping(const PackContents& pack, uint64_t offset_bytes,
                                               uint64_t nbytes);

}  // namespace ferry::offload::detail
