// One .safetensors file, written as the safetensors library writes it.
#pragma once

#include <filesystem>
#include <map>
#include <span>
#include <string>

#include "offload/checkpoint_writer.hpp"
#include "offload/detail/writer_internal.hpp"

namespace ferry::offload::detail {

// The header JSON, spaces included: "__metadata__" first (omitted when empty), then the
// tensors in file order with data_offsets relative to the end of the header, padded with
// spaces so the data starts 8-byte aligned.
std::string safetensors_header(std::span<const TensorSpec* const> tensors,
                               const std::map<std::string, std::string>& metadata);

void write_safetensors_file(const std::filesystem::path& path,
                            std::span<const TensorSpec* const> tensors,
                            const std::map<std::string, std::string>& metadata,
                            const TensorFiller& fill, ProgressReporter& progress,
                            const WriterTuning& tuning);

}  // namespace ferry::offload::detail
