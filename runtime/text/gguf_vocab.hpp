// GgufVocabulary: a GGUF file's tokenizer.ggml.* metadata, as the GGUF reader hands it to
// Tokenizer::from_gguf (the text module reads no files of that format itself).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ferry::text {

struct GgufVocabulary {
  std::string source;       // the file, for messages ("model.gguf")
  std::string model;        // tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SPM), ...
  std::string pre;          // tokenizer.ggml.pre: "llama-bpe", "qwen2", "default", ... ("" if absent)
  std::vector<std::string> tokens;     // tokenizer.ggml.tokens
  std::vector<float> scores;           // tokenizer.ggml.scores (empty if absent)
  std::vector<int32_t> token_types;    // tokenizer.ggml.token_type (empty if absent): llama.cpp's
                                       // 1 normal, 2 unknown, 3 control, 4 user-defined,
                                       // 5 unused, 6 byte
  std::vector<std::string> merges;     // tokenizer.ggml.merges, "a b" (empty if absent)
  std::optional<int32_t> bos_id;       // tokenizer.ggml.bos_token_id
  std::optional<int32_t> eos_id;       // tokenizer.ggml.eos_token_id
  std::optional<int32_t> eot_id;       // tokenizer.ggml.eot_token_id
  std::optional<int32_t> eom_id;       // tokenizer.ggml.eom_token_id
  std::optional<int32_t> unk_id;       // tokenizer.ggml.unknown_token_id
  std::optional<int32_t> pad_id;       // tokenizer.ggml.padding_token_id
  std::optional<bool> add_bos;         // tokenizer.ggml.add_bos_token
  std::optional<bool> add_eos;         // tokenizer.ggml.add_eos_token
  std::optional<bool> add_space_prefix;  // tokenizer.ggml.add_space_prefix
  std::string chat_template;           // tokenizer.chat_template ("" if absent)
};

}  // namespace ferry::text
