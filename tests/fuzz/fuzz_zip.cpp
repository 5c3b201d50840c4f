// Fuzzes a whole PyTorch zip checkpoint read from memory: end records, central directory,
// local headers, data.pkl and tensor placement.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "offload/detail/source.hpp"
#include "offload/detail/torch_zip.hpp"
#include "runtime/core/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const auto found = ferry::offload::detail::read_torch_zip(
        size, ferry::offload::detail::buffer_read_at(bytes, "fuzz"), "fuzz");
    // Every tensor it returns must lie inside the input.
    for (const auto& t : found.tensors) {
      if (t.offset_bytes > size || t.nbytes > size - t.offset_bytes) __builtin_trap();
    }
  } catch (const ferry::Error&) {
  }
  return 0;
}
