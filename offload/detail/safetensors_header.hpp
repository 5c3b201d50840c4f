// safetensors: the 8-byte header length and the JSON header, parsed and validated from bytes.
#pragma once

#include <cstdint>
#include <string_view>

#include "offload/detail/source.hpp"

namespace ferry::offload::detail {

// The header may not exceed this (the safetensors reference implementation's own limit), so a
// hostile length cannot make us allocate gigabytes.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// Validates the little-endian u64 header length in the first 8 bytes of a file of file_size
// bytes and returns it. Throws FormatError naming `source`.
uint64_t parse_safetensors_header_length(const unsigned char (&prefix)[8], uint64_t file_size,
                                         std::string_view source);

// Parses the JSON header. data_nbytes is the size of the data section that follows it and
// data_start its absolute offset in the file (8 + header length). Validates dtypes, shapes,
// data_offsets (in range, ordered, matching numel·dtype_size, not overlapping). Returns every
// tensor with absolute offsets, sorted by offset; bool tensors and mask buffers are skipped.
FileTensors parse_safetensors_header(std::string_view json, uint64_t data_start,
                                     uint64_t data_nbytes, std::string_view source);

// Reads and parses a whole safetensors file's metadata (never its tensor data).
FileTensors read_safetensors(uint64_t file_size, const ReadAt& read_at, std::string_view source);

}  // namespace ferry::offload::detail
