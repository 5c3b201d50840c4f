#include "runtime/model/model_config.hpp"

#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace ferry::model {

using nlohmann::json;

namespace {

int64_t get_int(const json& j, const char* key, int64_t fallback, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  FERRY_FORMAT_EXPECT(j[key].is_number_integer(), "{}: '{}' must be an integer, found {}", source,
                      key, j[key].dump());
  return j[key].get<int64_t>();
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  FERRY_FORMAT_EXPECT(j.is_object(), "{}: expected a JSON object at the top level", source);
  ModelConfig c;
  FERRY_FORMAT_EXPECT(j.contains("model_type") && j["model_type"].is_string(),
                      "{}: no 'model_type' field; is this a Hugging Face config.json?", source);
  c.model_type = j["model_type"].get<std::string>();
  FERRY_EXPECT(c.model_type == "gptj",
               "{}: model_type '{}' is not supported; ferry runs these model types: gptj", source,
               c.model_type);
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size, source);
  c.n_positions = get_int(j, "n_positions", c.n_positions, source);
  c.n_embd = get_int(j, "n_embd", c.n_embd, source);
  c.n_layer = get_int(j, "n_layer", c.n_layer, source);
  c.n_head = get_int(j, "n_head", c.n_head, source);
  // GPTJConfig's default is 64; an explicit null means "rotate the whole head".
  c.rotary_dim = j.contains("rotary_dim")
                     ? get_int(j, "rotary_dim", c.n_embd / std::max<int64_t>(1, c.n_head), source)
                     : 64;
  c.n_inner = get_int(j, "n_inner", 4 * c.n_embd, source);
  if (j.contains("layer_norm_epsilon")) {
    FERRY_FORMAT_EXPECT(j["layer_norm_epsilon"].is_number(),
                        "{}: 'layer_norm_epsilon' must be a number", source);
    c.layer_norm_epsilon = j["layer_norm_epsilon"].get<float>();
  }
  if (j.contains("activation_function")) {
    FERRY_FORMAT_EXPECT(j["activation_function"].is_string(),
                        "{}: 'activation_function' must be a string", source);
    c.activation_function = j["activation_function"].get<std::string>();
  }
  c.bos_token_id = static_cast<int32_t>(get_int(j, "bos_token_id", c.bos_token_id, source));
  c.eos_token_id = static_cast<int32_t>(get_int(j, "eos_token_id", c.eos_token_id, source));
  if (j.contains("tie_word_embeddings") && j["tie_word_embeddings"].is_boolean())
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    const auto name = j["torch_dtype"].get<std::string>();
    const auto dt = parse_dtype(name);
    FERRY_FORMAT_EXPECT(dt && is_float_weight(*dt),
                        "{}: torch_dtype '{}' is not one ferry reads (float32, float16, bfloat16)",
                        source, name);
    c.torch_dtype = *dt;
  }
  c.validate(source);
  return c;
}

void ModelConfig::validate(const std::string& source) const {
  FERRY_EXPECT(model_type == "gptj",
               "{}: model_type '{}' is not supported; ferry runs these model types: gptj", source,
               model_type);
  FERRY_EXPECT(activation_function == "gelu_new",
               "{}: activation_function '{}' is not supported for gptj; supported: gelu_new",
               source, activation_function);
  FERRY_EXPECT(
      vocab_size > 0 && n_positions > 0 && n_embd > 0 && n_layer > 0 && n_head > 0 && n_inner > 0,
      "{}: vocab_size, n_positions, n_embd, n_layer, n_head and n_inner must all be "
      "positive (got {}, {}, {}, {}, {}, {})",
      source, vocab_size, n_positions, n_embd, n_layer, n_head, n_inner);
  FERRY_EXPECT(n_embd % n_head == 0, "{}: n_embd {} is not divisible by n_head {}", source, n_embd,
               n_head);
  FERRY_EXPECT(rotary_dim >= 0 && rotary_dim % 2 == 0 && rotary_dim <= n_embd / n_head,
               "{}: rotary_dim {} must be even and at most head_dim {} (n_embd / n_head)", source,
               rotary_dim, n_embd / n_head);
  FERRY_EXPECT(layer_norm_epsilon > 0 && layer_norm_epsilon < 1,
               "{}: layer_norm_epsilon {} is out of range (0, 1)", source, layer_norm_epsilon);
  // Sizes beyond these are not GPT-J and would overflow the int32 positions and token ids.
  FERRY_EXPECT(vocab_size < (int64_t{1} << 31) && n_positions < (int64_t{1} << 24) &&
                   n_embd < (int64_t{1} << 20) && n_inner < (int64_t{1} << 22) && n_layer < 4096,
               "{}: a dimension is implausibly large (vocab_size {}, n_positions {}, n_embd {}, "
               "n_inner {}, n_layer {})",
               source, vocab_size, n_positions, n_embd, n_inner, n_layer);
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& config_json) {
  std::ifstream in(config_json);
  FERRY_FORMAT_EXPECT(in.good(),
                      "cannot read {}: a model directory needs the config.json that Hugging Face "
                      "ships with the weights",
                      config_json.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    throw FormatError(fmt::format("{}: malformed JSON: {}", config_json.string(), e.what()));
  }
  return from_json(j, config_json.string());
}

ModelConfig ModelConfig::from_model_dir(const std::filesystem::path& dir) {
  return from_file(dir / "config.json");
}

json ModelConfig::to_json() const {
  std::string dtype_str = torch_dtype == DType::f16    ? "float16"
                          : torch_dtype == DType::bf16 ? "bfloat16"
                                                       : "float32";
  return json{{"activation_function", activation_function},
              {"architectures", json::array({"GPTJForCausalLM"})},
              {"attn_pdrop", 0.0},
              {"bos_token_id", bos_token_id},
              {"embd_pdrop", 0.0},
              {"eos_token_id", eos_token_id},
              {"initializer_range", 0.02},
              {"layer_norm_epsilon", layer_norm_epsilon},
              {"model_type", model_type},
              {"n_embd", n_embd},
              {"n_head", n_head},
              {"n_inner", n_inner},
              {"n_layer", n_layer},
              {"n_positions", n_positions},
              {"resid_pdrop", 0.0},
              {"rotary_dim", rotary_dim},
              {"tie_word_embeddings", tie_word_embeddings},
              {"torch_dtype", dtype_str},
              {"use_cache", true},
              {"vocab_size", vocab_size}};
}

ModelConfig preset_config(const std::string& name) {
  ModelConfig c;
  if (name == "gptj-6b") return c;  // the defaults are GPT-J-6B's
  if (name == "tiny") {
    c.vocab_size = 50400;
    c.n_positions = 512;
    c.n_embd = 256;
    c.n_layer = 4;
    c.n_head = 4;
    c.rotary_dim = 32;
    c.n_inner = 1024;
    return c;
  }
  throw InvalidArgument(fmt::format("unknown preset '{}'; the presets are: tiny, gptj-6b", name));
}

}  // namespace ferry::model
