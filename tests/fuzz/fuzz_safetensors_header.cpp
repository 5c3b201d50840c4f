// Fuzzes the safetensors header: the input is a whole safetensors file (length prefix, JSON,
// data), and also, reinterpreted, a bare JSON header after an 8-byte data-section size.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "offload/detail/safetensors_header.hpp"
#include "offload/detail/source.hpp"
#include "runtime/core/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto found = ferry::offload::detail::read_safetensors(
        size, ferry::offload::detail::buffer_read_at(bytes, "fuzz"), "fuzz");
    // Every tensor it returns must lie inside the input.
    for (const auto& t : found.tensors) {
      if (t.offset_bytes > size || t.nbytes > size - t.offset_bytes) __builtin_trap();
    }
  } catch (const ferry::Error&) {
  }
  if (size >= 8) {
    uint64_t data_nbytes = 0;
    for (int i = 7; i >= 0; --i) data_nbytes = (data_nbytes << 8) | data[i];
    try {
      (void)ferry::offload::detail::parse_safetensors_header(bytes.substr(8), size, data_nbytes,
                                                             "fuzz");
    } catch (const ferry::Error&) {
    }
  }
  return 0;
}
