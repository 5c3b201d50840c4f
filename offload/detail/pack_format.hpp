// The fixed part of the ferry pack format (docs/pack-format.md), shared by its reader and writer.
#pragma once

#include <cstdint>

namespace ferry::offload::detail {

inline constexpr char kPackMagic[8] = {'F', 'E', 'R', 'R', 'Y', 'P', 'A', 'K'};
inline constexpr uint32_t kPackVersion = 1;
// Blobs start at multiples of this (O_DIRECT's alignment), and the preamble fills the first one.
inline constexpr uint64_t kPackAlignment = 4096;
// Every blob is checksummed in chunks of this many bytes (the last one shorter), so a read of
// part of a blob (an embedding row) checks a few chunks, not the blob.
inline constexpr uint64_t kPackChecksumChunk = 256 * 1024;
// Tensors inside a blob start at multiples of this (cache lines, for the kernels).
inline constexpr uint64_t kPackTensorAlignment = 64;
// A header larger than this is not a ferry pack's (GPT-J-6B's f16 pack has ~200 KiB).
inline constexpr uint64_t kPackMaxHeaderBytes = 256ull << 20;

// The preamble at offset 0, little-endian:
//   [0, 8)   magic "FERRYPAK"
//   [8, 12)  u32 version
//   [12, 16) u32 flags (0; a reader refuses other values)
//   [16, 24) u64 header_offset: where the JSON header starts
//   [24, 32) u64 header_bytes
//   [32, 40) u64 header_xxh64: XXH64 (seed 0) of the header bytes
//   [40, 48) u64 file_bytes: the whole file's size (header_offset + header_bytes)
//   [48, 56) u64 preamble_xxh64: XXH64 of bytes [0, 48)
struct PackPreamble {
  uint32_t version = kPackVersion;
  uint32_t flags = 0;
  uint64_t header_offset = 0;
  uint64_t header_bytes = 0;
  uint64_t header_xxh64 = 0;
  uint64_t file_bytes = 0;
};
inline constexpr std::size_t kPackPreambleBytes = 56;

inline constexpr uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }

}  // namespace ferry::offload::detail
