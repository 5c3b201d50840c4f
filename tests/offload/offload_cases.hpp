// Shared by the offload tests: the I/O engine configurations every reading path is run through,
// and the byte pattern of generated tensors.
#pragma once

#include <cstdint>
#include <ostream>
#include <string_view>

#include "offload/io_engine.hpp"

namespace ferry::test {

struct BackendCase {
  const char* name;
  offload::IoBackendKind kind;
  bool direct;
};

// gtest prints the case by name instead of as raw bytes.
inline void PrintTo(const BackendCase& c, std::ostream* os) { *os << c.name; }

inline constexpr BackendCase kBackendCases[] = {
    {"uring_direct", offload::IoBackendKind::uring, true},
    {"uring_buffered", offload::IoBackendKind::uring, false},
    {"pread_direct", offload::IoBackendKind::pread, true},
    {"pread_buffered", offload::IoBackendKind::pread, false},
    {"buffered", offload::IoBackendKind::buffered, false},
    {"mmap", offload::IoBackendKind::mmap, false},
};

// The byte at position i of tensor `name`. It depends on both, so bytes read from the wrong
// offset or from another tensor do not match.
inline uint8_t pattern_byte(std::string_view name, uint64_t i) {
  uint64_t h = 1469598103934665603ULL;  // FNV-1a of the name
  for (const char c : name) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ULL;
  }
  const uint64_t x = (h ^ i) * 0x9E3779B97F4A7C15ULL;
  return static_cast<uint8_t>(x >> 56);
}

}  // namespace ferry::test
