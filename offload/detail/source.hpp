// Shared vocabulary of the checkpoint parsers: a positional-read callback (so each parser can be
// fed a file or, for fuzzing, a byte buffer) and the located tensor every parser produces.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/core/dtype.hpp"
#include "runtime/core/tensor.hpp"

namespace ferry::offload::detail {

// Reads exactly nbytes at offset into dst or throws (FormatError when the source ends first).
// `what` names the bytes being read, for the error message.
using ReadAt =
    std::function<void(uint64_t offset, std::size_t nbytes, void* dst, const char* what)>;

// A ReadAt over an in-memory buffer (tests and fuzz targets); `source` names it in errors.
ReadAt buffer_read_at(std::string_view bytes, std::string source);

// One dense row-major tensor found in a checkpoint file.
struct LocatedTensor {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t offset_bytes = 0;  // absolute, within the file
  uint64_t nbytes = 0;
};

// What a parser found in one file: the tensors a model loads, and the names it deliberately
// left out (non-weight buffers, bool tensors), so an index that lists them still validates.
struct FileTensors {
  std::vector<LocatedTensor> tensors;  // sorted by offset_bytes
  std::vector<std::string> skipped;
};

// True for tensors that are not weights: bool tensors and the causal-mask buffers
// "…attn.bias" / "…attn.masked_bias" that GPT-2-style torch checkpoints carry. Matches whole
// name components only, so "attn.c_attn.bias" is a weight.
bool is_skipped_tensor(std::string_view name, DType dtype);

// a·b and a+b for sizes read from untrusted files; false on overflow.
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}
inline bool checked_add(uint64_t a, uint64_t b, uint64_t& out) {
  return !__builtin_add_overflow(a, b, &out);
}

}  // namespace ferry::offload::detail
