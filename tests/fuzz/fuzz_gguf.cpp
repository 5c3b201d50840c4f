// Fuzzes the GGUF reader and everything built from a file's metadata: the header and tensor
// infos, the tensors as a checkpoint lists them, the model description (config_from_gguf) and the
// tokenizer (tokenizer.ggml.*), which then encodes and decodes a short text. Every tensor returned
// must lie inside the input.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "offload/detail/gguf.hpp"
#include "offload/detail/source.hpp"
#include "runtime/core/error.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/model/gguf_config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  namespace d = ferry::offload::detail;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  try {
    const d::GgufHeader h = d::read_gguf_header(size, d::buffer_read_at(bytes, "fuzz"), "fuzz");
    const d::FileTensors found = d::gguf_file_tensors(h, "fuzz");
    for (const auto& t : found.tensors) {
      if (t.offset_bytes > size || t.nbytes > size - t.offset_bytes) __builtin_trap();
    }
    try {
      (void)ferry::model::config_from_gguf(
          h.metadata,
          [&found](std::string_view name) -> const ferry::Shape* {
            for (const auto& t : found.tensors)
              if (t.name == name) return &t.shape;
            return nullptr;
          },
          "fuzz");
    } catch (const ferry::Error&) {
    }
    const auto tok =
        ferry::text::Tokenizer::from_gguf(ferry::engine::gguf_vocabulary(h.metadata, "fuzz"));
    const auto ids = tok.encode("Hello, world <s> 123", true, true);
    (void)tok.decode(ids);
  } catch (const ferry::Error&) {
  }
  return 0;
}
