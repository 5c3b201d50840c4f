#include "offload/detail/safetensors_writer_file.hpp"

#include <nlohmann/json.hpp>

#include "offload/detail/writer_output.hpp"

namespace ferry::offload::detail {

std::string safetensors_header(std::span<const TensorSpec* const> tensors,
                               const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the library's key order: "__metadata__", then tensors by offset, and
  // each tensor's fields as dtype, shape, data_offsets.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorSpec* t : tensors) {
    nlohmann::ordered_json shape = nlohmann::ordered_json::array();
    for (int i = 0; i < t->shape.rank; ++i) shape.push_back(t->shape[i]);
    nlohmann::ordered_json info;
    info["dtype"] = dtype_to_safetensors(t->dtype);
    info["shape"] = std::move(shape);
    info["data_offsets"] = {offset, offset + t->nbytes()};
    header[t->name] = std::move(info);
    offset += t->nbytes();
  }
  // Compact, raw UTF-8 (as serde_json writes it), then padded with spaces to a multiple of 8.
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

void write_safetensors_file(const std::filesystem::path& path,
                            std::span<const TensorSpec* const> tensors,
                            const std::map<std::string, std::string>& metadata,
                            const TensorFiller& fill, ProgressReporter& progress,
                            const WriterTuning& tuning) {
  const std::string header = safetensors_header(tensors, metadata);
  OutputFile out(path, tuning.buffer_bytes());
  std::string length;
  append_le(length, static_cast<uint64_t>(header.size()));
  out.write(length);
  out.write(header);
  for (const TensorSpec* t : tensors) {
    stream_tensor(out, *t, fill, tuning.chunk_bytes, nullptr);
    progress.tensor_written(t->nbytes());
  }
  out.commit();
}

}  // namespace ferry::offload::detail
