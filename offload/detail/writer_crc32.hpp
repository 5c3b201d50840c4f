// CRC-32 (the zip/IEEE 802.3 polynomial) computed incrementally, so the PyTorch zip writer can
// checksum each entry while it streams instead of reading the file back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace ferry::offload::detail {

// Extends crc (0 for an empty input) over bytes; crc32_update(crc32_update(0, a), b) equals the
// CRC of a followed by b, as zlib's crc32() does.
uint32_t crc32_update(uint32_t crc, std::span<const std::byte> bytes);

class Crc32 {
 public:
  void update(std::span<const std::byte> bytes) { value_ = crc32_update(value_, bytes); }
  uint32_t value() const { return value_; }

 private:
  uint32_t value_ = 0;
};

}  // namespace ferry::offload::detail
