// What a model path (-m) names, whatever its format: a Hugging Face directory (config.json,
// tokenizer files, weights), a ferry pack's directory, or a GGUF file (or a directory holding
// one), whose metadata carries the architecture and the tokenizer. Every tool reads a model's
// description, tokenizer and stop ids through these, so each format is known in one place.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/model/model_config.hpp"
#include "runtime/text/gguf_vocab.hpp"
#include "runtime/text/tokenizer.hpp"

namespace ferry::offload {
class Checkpoint;
}  // namespace ferry::offload

namespace ferry::engine {

// The GGUF file the path names: the path itself when it is a GGUF file, the lone .gguf (or the
// first part of a lone split set) in a directory that has no config.json; none otherwise.
std::optional<std::filesystem::path> gguf_model_file(const std::filesystem::path& model);

// The architecture description: config.json, or the GGUF file's metadata (with Llama 3's rope
// frequency factors read from its rope_freqs.weight). Throws naming the file and what is wrong.
model::ModelConfig read_model_config(const std::filesystem::path& model);
// The same from a GGUF checkpoint already open.
model::ModelConfig gguf_model_config(const offload::Checkpoint& checkpoint);

// The tokenizer: tokenizer.json (+ tokenizer_config.json), vocab.json + merges.txt, or the GGUF
// file's tokenizer.ggml.* metadata.
text::Tokenizer read_tokenizer(const std::filesystem::path& model);

// The ids generation stops at: generation_config.json's or config.json's (generation_eos_ids), or
// a GGUF file's end-of-generation ids as llama.cpp finds them (eos, eot, eom, and by their text).
// `tokenizer`, when given, is the model's own (read_tokenizer's), so a GGUF file's is not built
// a second time.
std::vector<int32_t> read_eos_ids(const std::filesystem::path& model,
                                  const model::ModelConfig& config,
                                  const text::Tokenizer* tokenizer = nullptr);

// A GGUF file's metadata (its header read and checked, no tensor data), for what the model's
// description does not carry: the tokenizer, the chat template.
nlohmann::json gguf_file_metadata(const std::filesystem::path& file);

// A GGUF file's tokenizer.ggml.* metadata, checked for types; source names the file.
text::GgufVocabulary gguf_vocabulary(const nlohmann::json& metadata, const std::string& source);

}  // namespace ferry::engine
