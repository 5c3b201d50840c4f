// ModelConfig: what config.json says about a GPT-J model, validated, with the derived shapes
// every other module needs.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "runtime/core/dtype.hpp"

namespace ferry::model {

struct ModelConfig {
  std::string model_type = "gptj";
  int64_t vocab_size = 50400;
  int64_t n_positions = 2048;
  int64_t n_embd = 4096;
  int64_t n_layer = 28;
  int64_t n_head = 16;
  int64_t rotary_dim = 64;
  int64_t n_inner = 16384;  // config.json's null means 4 · n_embd
  float layer_norm_epsilon = 1e-5f;
  std::string activation_function = "gelu_new";
  int32_t bos_token_id = 50256;
  int32_t eos_token_id = 50256;
  bool tie_word_embeddings = false;
  DType torch_dtype = DType::f32;  // the dtype the checkpoint says it stores

  int64_t head_dim() const { return n_embd / n_head; }

  // Parses and validates; `source` names the file in error messages. Throws FormatError for
  // a malformed file and InvalidArgument naming the field for an unsupported model.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::filesystem::path& config_json);
  // Reads <dir>/config.json.
  static ModelConfig from_model_dir(const std::filesystem::path& dir);

  // The fields above in Hugging Face's config.json layout (what make-model writes).
  nlohmann::json to_json() const;

  // Checks the numbers make a GPT-J (positive sizes, n_embd divisible by n_head, even
  // rotary_dim ≤ head_dim, ...). `source` names the file in the message.
  void validate(const std::string& source) const;
};

// The presets make-model and plan know: "tiny" and "gptj-6b".
ModelConfig preset_config(const std::string& name);

}  // namespace ferry::model
