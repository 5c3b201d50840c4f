// Fuzzes the safe pickle interpreter and the tensor layout checks on what it returns.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "offload/detail/pickle.hpp"
#include "runtime/core/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    for (const auto& t : ferry::offload::detail::parse_torch_pickle(bytes, "fuzz")) {
      try {
        (void)ferry::offload::detail::torch_tensor_layout(t, "fuzz");
      } catch (const ferry::Error&) {
      }
    }
  } catch (const ferry::Error&) {
  }
  return 0;
}
