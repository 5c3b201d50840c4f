// The architecture description of a GGUF file, from its metadata (general.architecture and the
// <arch>.* keys) and which tensors it holds. llama.cpp's converter stores Llama's q/k rows
// permuted for its adjacent-pair rotary, so a `llama` file is described with interleaved rotary
// over the rows as stored (the same computation as rotate_half on Hugging Face's order); Qwen2's
// and Qwen3's rows are stored unpermuted and keep rotate_half.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

#include "runtime/core/tensor.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::model {

// The shape of a tensor in the file (ferry's row-major order), or null when it has none.
using TensorShapeLookup = std::function<const Shape*(std::string_view name)>;

// The architectures a GGUF file may have for ferry: "llama" (Llama 2/3, Mistral), "qwen2",
// "qwen3", "gptj".
inline constexpr const char* kGgufArchitectures = "llama, qwen2, qwen3, gptj";

// Throws FormatError naming the key for missing or malformed metadata and InvalidArgument for an
// architecture or feature ferry does not run. rope_freq_factors is left empty: the caller reads
// the rope_freqs.weight tensor when rope_freqs_tensor() names one.
ModelConfig config_from_gguf(const nlohmann::json& metadata, const TensorShapeLookup& shape_of,
                             const std::string& source);

// "rope_freqs.weight" when the file stores rotary frequency factors (Llama 3.1's scaling).
inline constexpr const char* kGgufRopeFreqsTensor = "rope_freqs.weight";

}  // namespace ferry::model
