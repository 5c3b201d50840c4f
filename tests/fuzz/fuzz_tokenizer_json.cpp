// Fuzzes tokenizer.json: loading (models, pre-tokenizers, normalizers, decoders, added tokens),
// then encoding and decoding a fixed text with whatever was accepted.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/text/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto tok = ferry::text::Tokenizer::from_json_strings(text, "", "tokenizer.json");
    const std::vector<int32_t> ids = tok.encode("Hello, wörld! <s> 123\n\t  x", true);
    for (const int32_t id : ids)
      if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
    (void)tok.decode(ids);
  } catch (const ferry::Error&) {
  }
  return 0;
}
