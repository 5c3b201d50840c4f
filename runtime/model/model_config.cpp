#include "runtime/model/model_config.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"

namespace ferry::model {

using nlohmann::json;

namespace {

int64_t get_int(const json& j, const char* key, int64_t fallback, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  // A number above 2^63 - 1 is unsigned in nlohmann; read as int64 it would turn negative.
  FERRY_FORMAT_EXPECT(j[key].is_number_integer() &&
                          !(j[key].is_number_unsigned() &&
                            j[key].get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)),
                      "{}: '{}' must be an integer (at most 2^63 - 1), found {}", source, key,
                      j[key].dump());
  return j[key].get<int64_t>();
}

}  // namespace

namespace {

double get_number(const json& j, const char* key, double fallback, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  FERRY_FORMAT_EXPECT(j[key].is_number(), "{}: '{}' must be a number, found {}", source, key,
                      j[key].dump());
  return j[key].get<double>();
}

bool get_bool(const json& j, const char* key, bool fallback, const std::string& source) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  FERRY_FORMAT_EXPECT(j[key].is_boolean(), "{}: '{}' must be true or false, found {}", source, key,
                      j[key].dump());
  return j[key].get<bool>();
}

// An id field that may be an int or a list of ints (Llama 3.1's eos_token_id).
std::vector<int32_t> get_ids(const json& j, const char* key, const std::string& source) {
  std::vector<int32_t> ids;
  if (!j.contains(key) || j[key].is_null()) return ids;
  const json& v = j[key];
  const auto one = [&](const json& x) {
    FERRY_FORMAT_EXPECT(
        x.is_number_integer() && x.get<int64_t>() >= 0 && x.get<int64_t>() < (int64_t{1} << 31),
        "{}: '{}' must be a token id (a non-negative integer) or a list of them, "
        "found {}",
        source, key, x.dump());
    ids.push_back(static_cast<int32_t>(x.get<int64_t>()));
  };
  if (v.is_array()) {
    for (const json& x : v) one(x);
  } else {
    one(v);
  }
  return ids;
}

constexpr const char* kModelTypes = "gptj, llama, mistral, qwen2, qwen3";

void read_dtype(const json& j, ModelConfig& c, const std::string& source) {
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) {
    const auto name = j["torch_dtype"].get<std::string>();
    const auto dt = parse_dtype(name);
    FERRY_FORMAT_EXPECT(dt && is_float_weight(*dt),
                        "{}: torch_dtype '{}' is not one ferry reads (float32, float16, bfloat16)",
                        source, name);
    c.torch_dtype = *dt;
  }
}

void read_ids(const json& j, ModelConfig& c, const std::string& source) {
  if (const auto bos = get_ids(j, "bos_token_id", source); !bos.empty())
    c.bos_token_id = bos.front();
  c.eos_token_ids = get_ids(j, "eos_token_id", source);
  if (c.eos_token_ids.empty()) c.eos_token_ids = {c.eos_token_id};
  c.eos_token_id = c.eos_token_ids.front();
}

ModelConfig gptj_from_json(const json& j, const std::string& source) {
  ModelConfig c;
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size, source);
  c.n_positions = get_int(j, "n_positions", c.n_positions, source);
  c.n_embd = get_int(j, "n_embd", c.n_embd, source);
  c.n_layer = get_int(j, "n_layer", c.n_layer, source);
  c.n_head = get_int(j, "n_head", c.n_head, source);
  c.n_kv_head = c.n_head;
  // GPTJConfig's default is 64; an explicit null means "rotate the whole head".
  c.rotary_dim = j.contains("rotary_dim")
                     ? get_int(j, "rotary_dim", c.n_embd / std::max<int64_t>(1, c.n_head), source)
                     : 64;
  c.n_inner = get_int(j, "n_inner", 4 * c.n_embd, source);
  c.layer_norm_epsilon =
      static_cast<float>(get_number(j, "layer_norm_epsilon", c.layer_norm_epsilon, source));
  if (j.contains("activation_function")) {
    FERRY_FORMAT_EXPECT(j["activation_function"].is_string(),
                        "{}: 'activation_function' must be a string", source);
    c.activation_function = j["activation_function"].get<std::string>();
  }
  read_ids(j, c, source);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, source);
  FERRY_EXPECT(!c.tie_word_embeddings,
               "{}: tie_word_embeddings true is not supported for gptj (its lm_head has a bias "
               "and is stored apart)",
               source);
  read_dtype(j, c, source);
  return c;
}

// rope_scaling: null, or {"rope_type" (or the legacy "type"): "linear" | "llama3" | "default",
// ...}. Any other kind is refused by name.
RopeScaling rope_scaling_from_json(const json& j, const std::string& source) {
  RopeScaling r;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return r;
  const json& s = j["rope_scaling"];
  FERRY_FORMAT_EXPECT(s.is_object(), "{}: 'rope_scaling' must be an object or null, found {}",
                      source, s.dump());
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    if (s.contains(key) && s[key].is_string()) {
      type = s[key].get<std::string>();
      break;
    }
  }
  FERRY_FORMAT_EXPECT(!type.empty(), "{}: rope_scaling has no 'rope_type' (or 'type') string",
                      source);
  if (type == "default") return r;
  FERRY_EXPECT(type == "linear" || type == "llama3",
               "{}: rope_scaling.rope_type '{}' is not supported (ferry supports none, "
               "'default', 'linear' and 'llama3')",
               source, type);
  r.type = type;
  FERRY_FORMAT_EXPECT(s.contains("factor") && s["factor"].is_number(),
                      "{}: rope_scaling '{}' needs a numeric 'factor'", source, type);
  r.factor = s["factor"].get<double>();
  FERRY_EXPECT(r.factor > 0, "{}: rope_scaling.factor {} must be positive", source, r.factor);
  if (type == "llama3") {
    for (const char* key :
         {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      FERRY_FORMAT_EXPECT(s.contains(key) && s[key].is_number(),
                          "{}: rope_scaling 'llama3' needs a numeric '{}'", source, key);
    }
    r.low_freq_factor = s["low_freq_factor"].get<double>();
    r.high_freq_factor = s["high_freq_factor"].get<double>();
    r.original_max_position = s["original_max_position_embeddings"].get<int64_t>();
    FERRY_EXPECT(r.high_freq_factor > r.low_freq_factor && r.low_freq_factor > 0 &&
                     r.original_max_position > 0,
                 "{}: rope_scaling 'llama3' needs 0 < low_freq_factor < high_freq_factor and a "
                 "positive original_max_position_embeddings (got {}, {}, {})",
                 source, r.low_freq_factor, r.high_freq_factor, r.original_max_position);
  }
  return r;
}

// LlamaConfig, MistralConfig, Qwen2Config and Qwen3Config: the same keys, with the defaults each
// transformers class gives them.
ModelConfig llama_from_json(const json& j, const std::string& type, const std::string& source) {
  ModelConfig c;
  c.model_type = type;
  const bool qwen = type == "qwen2" || type == "qwen3";
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "vocab_size"}) {
    FERRY_FORMAT_EXPECT(j.contains(key) && !j[key].is_null(),
                        "{}: model_type '{}' needs '{}'; is this the model's own config.json?",
                        source, type, key);
  }
  c.vocab_size = get_int(j, "vocab_size", 0, source);
  c.n_embd = get_int(j, "hidden_size", 0, source);
  c.n_layer = get_int(j, "num_hidden_layers", 0, source);
  c.n_head = get_int(j, "num_attention_heads", 0, source);
  c.n_kv_head = get_int(j, "num_key_value_heads", c.n_head, source);
  c.n_inner = get_int(j, "intermediate_size", 0, source);
  c.n_positions = get_int(j, "max_position_embeddings", type == "mistral" ? 32768 : 2048, source);
  // Qwen3Config defaults head_dim to 128; the others derive it.
  c.head_dim_ = get_int(j, "head_dim", type == "qwen3" ? 128 : 0, source);
  c.rotary_dim = c.head_dim();
  if (j.contains("partial_rotary_factor") && !j["partial_rotary_factor"].is_null()) {
    const double f = get_number(j, "partial_rotary_factor", 1.0, source);
    FERRY_EXPECT(f == 1.0, "{}: partial_rotary_factor {} is not supported for {} (only 1.0)",
                 source, f, type);
  }
  c.layer_norm_epsilon = static_cast<float>(get_number(j, "rms_norm_eps", 1e-6, source));
  c.activation_function = "silu";
  if (j.contains("hidden_act")) {
    FERRY_FORMAT_EXPECT(j["hidden_act"].is_string(), "{}: 'hidden_act' must be a string", source);
    c.activation_function = j["hidden_act"].get<std::string>();
  }
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  read_ids(j, c, source);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", false, source);
  read_dtype(j, c, source);

  c.norm = NormKind::rms_norm;
  c.norm_bias = false;
  c.rope_style = RopeStyle::half;
  c.rope_theta = get_number(j, "rope_theta", 10000.0, source);
  c.rope_scaling = rope_scaling_from_json(j, source);
  c.mlp = MlpKind::swiglu;
  c.parallel_residual = false;
  c.lm_head_bias = false;
  // Qwen2 always has q/k/v biases (its config has no attention_bias key); Llama's and Qwen3's
  // attention_bias puts a bias on q, k, v and o.
  const bool attention_bias = get_bool(j, "attention_bias", false, source);
  c.qkv_bias = type == "qwen2" || attention_bias;
  c.o_bias = type != "qwen2" && attention_bias;
  c.mlp_bias = false;
  FERRY_EXPECT(!get_bool(j, "mlp_bias", false, source),
               "{}: mlp_bias true is not supported for {} (no released model of the family has "
               "MLP biases)",
               source, type);
  c.qk_norm = type == "qwen3";
  // Mistral's sliding window, when set, limits what a token attends to; ferry keeps the
  // context within it, where attention is exactly causal. Qwen's applies only when enabled.
  const bool window_on =
      type == "mistral" || (qwen && get_bool(j, "use_sliding_window", false, source));
  if (window_on) c.sliding_window = std::max<int64_t>(0, get_int(j, "sliding_window", 0, source));
  return c;
}

}  // namespace

namespace {
// What a GGUF-derived description adds to config.json (a pack converted from a GGUF file keeps
// GGUF's tensor names and stored row order, so it needs them to run the same way).
void add_layout_keys(const ModelConfig& c, json& j) {
  if (c.naming != TensorNaming::gguf) return;
  j["ferry_tensor_naming"] = "gguf";
  j["ferry_rope_style"] = c.rope_style == RopeStyle::interleaved ? "interleaved" : "half";
  j["ferry_qkv_bias"] = c.qkv_bias;
  j["ferry_o_bias"] = c.o_bias;
  j["ferry_qk_norm"] = c.qk_norm;
  if (!c.rope_freq_factors.empty()) j["ferry_rope_freq_factors"] = c.rope_freq_factors;
}

void read_layout_keys(const json& j, ModelConfig& c, const std::string& source) {
  if (!j.contains("ferry_tensor_naming")) return;
  FERRY_FORMAT_EXPECT(j["ferry_tensor_naming"] == "gguf",
                      "{}: ferry_tensor_naming {} is not a naming ferry knows (\"gguf\")", source,
                      j["ferry_tensor_naming"].dump());
  c.naming = TensorNaming::gguf;
  const json style = j.value("ferry_rope_style", json("half"));
  FERRY_FORMAT_EXPECT(style == "interleaved" || style == "half",
                      "{}: ferry_rope_style {} is not interleaved or half", source, style.dump());
  c.rope_style = style == "interleaved" ? RopeStyle::interleaved : RopeStyle::half;
  c.qkv_bias = get_bool(j, "ferry_qkv_bias", c.qkv_bias, source);
  c.o_bias = get_bool(j, "ferry_o_bias", c.o_bias, source);
  c.qk_norm = get_bool(j, "ferry_qk_norm", c.qk_norm, source);
  if (j.contains("ferry_rope_freq_factors")) {
    const json& f = j["ferry_rope_freq_factors"];
    FERRY_FORMAT_EXPECT(f.is_array() && static_cast<int64_t>(f.size()) == c.rotary_dim / 2,
                        "{}: ferry_rope_freq_factors must list {} numbers", source,
                        c.rotary_dim / 2);
    for (const json& v : f) {
      FERRY_FORMAT_EXPECT(v.is_number() && v.get<double>() > 0,
                          "{}: ferry_rope_freq_factors holds {}, not a positive number", source,
                          v.dump());
      c.rope_freq_factors.push_back(v.get<float>());
    }
  }
}
}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  FERRY_FORMAT_EXPECT(j.is_object(), "{}: expected a JSON object at the top level", source);
  FERRY_FORMAT_EXPECT(j.contains("model_type") && j["model_type"].is_string(),
                      "{}: no 'model_type' field; is this a Hugging Face config.json?", source);
  const auto type = j["model_type"].get<std::string>();
  ModelConfig c;
  if (type == "gptj") {
    c = gptj_from_json(j, source);
  } else if (type == "llama" || type == "mistral" || type == "qwen2" || type == "qwen3") {
    c = llama_from_json(j, type, source);
  } else {
    throw InvalidArgument(
        fmt::format("{}: model_type '{}' is not supported; ferry runs these model types: {}",
                    source, type, kModelTypes));
  }
  read_layout_keys(j, c, source);
  c.validate(source);
  return c;
}

void ModelConfig::validate(const std::string& source) const {
  const bool known = model_type == "gptj" || model_type == "llama" || model_type == "mistral" ||
                     model_type == "qwen2" || model_type == "qwen3";
  FERRY_EXPECT(known, "{}: model_type '{}' is not supported; ferry runs these model types: {}",
               source, model_type, kModelTypes);
  if (model_type == "gptj") {
    FERRY_EXPECT(activation_function == "gelu_new",
                 "{}: activation_function '{}' is not supported for gptj; supported: gelu_new",
                 source, activation_function);
  } else {
    FERRY_EXPECT(activation_function == "silu",
                 "{}: hidden_act '{}' is not supported for {}; supported: silu", source,
                 activation_function, model_type);
  }
  FERRY_EXPECT(
      vocab_size > 0 && n_positions > 0 && n_embd > 0 && n_layer > 0 && n_head > 0 && n_inner > 0,
      "{}: vocab_size, n_positions, n_embd, n_layer, n_head and n_inner must all be "
      "positive (got {}, {}, {}, {}, {}, {})",
      source, vocab_size, n_positions, n_embd, n_layer, n_head, n_inner);
  if (head_dim_ == 0) {
    FERRY_EXPECT(n_embd % n_head == 0,
                 "{}: n_embd {} is not divisible by n_head {} (and no head_dim is given)", source,
                 n_embd, n_head);
  }
  FERRY_EXPECT(head_dim_ >= 0 && head_dim() > 0 && head_dim() <= 1024,
               "{}: head_dim {} is out of range (1 … 1024)", source, head_dim());
  FERRY_EXPECT(n_kv_head > 0 && n_kv_head <= n_head && n_head % n_kv_head == 0,
               "{}: num_key_value_heads {} must divide num_attention_heads {}", source, n_kv_head,
               n_head);
  FERRY_EXPECT(rotary_dim >= 0 && rotary_dim % 2 == 0 && rotary_dim <= head_dim(),
               "{}: rotary_dim {} must be even and at most head_dim {}", source, rotary_dim,
               head_dim());
  FERRY_EXPECT(layer_norm_epsilon > 0 && layer_norm_epsilon < 1,
               "{}: the norm epsilon {} is out of range (0, 1)", source, layer_norm_epsilon);
  FERRY_EXPECT(rope_theta > 1 && rope_theta < 1e12, "{}: rope_theta {} is out of range", source,
               rope_theta);
  // An eos id outside the vocabulary is allowed (Hugging Face's tiny GPT-J configs keep GPT-2's
  // 50256 over 1000 ids): such a token is never generated, so generation runs to its length.
  // Sizes beyond these are no real model and would overflow the int32 positions and token ids.
  FERRY_EXPECT(vocab_size < (int64_t{1} << 31) && n_positions < (int64_t{1} << 24) &&
                   n_embd < (int64_t{1} << 20) && n_inner < (int64_t{1} << 22) && n_layer < 4096 &&
                   n_head < 4096,
               "{}: a dimension is implausibly large (vocab_size {}, n_positions {}, n_embd {}, "
               "n_inner {}, n_layer {}, n_head {})",
               source, vocab_size, n_positions, n_embd, n_inner, n_layer, n_head);
}

std::vector<float> ModelConfig::rope_inv_freq() const {
  // As transformers' _compute_default_rope_parameters: 1 / base ** (arange(0, dim, 2).float() /
  // dim) in float32, the power correctly rounded (taken in double, rounded once).
  const int64_t half = rotary_dim / 2;
  std::vector<float> inv(static_cast<std::size_t>(half));
  const auto base = static_cast<float>(rope_theta);
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(rotary_dim);
    const auto power = static_cast<float>(std::pow(static_cast<double>(base), exponent));
    inv[static_cast<std::size_t>(i)] = 1.0f / power;
  }
  const RopeScaling& r = rope_scaling;
  if (r.type == "linear") {
    for (float& f : inv) f = f / static_cast<float>(r.factor);
  } else if (r.type == "llama3") {
    // _compute_llama3_parameters, in float32 where torch computes on tensors.
    const auto factor = static_cast<float>(r.factor);
    const auto low = static_cast<float>(r.low_freq_factor);
    const auto high = static_cast<float>(r.high_freq_factor);
    const auto old_len = static_cast<double>(r.original_max_position);
    const auto low_wavelen = static_cast<float>(old_len / r.low_freq_factor);
    const auto high_wavelen = static_cast<float>(old_len / r.high_freq_factor);
    for (float& f : inv) {
      const float wavelen = static_cast<float>(2.0 * M_PI) / f;
      const float scaled = wavelen > low_wavelen ? f / factor : f;
      if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
        const float smooth = (static_cast<float>(old_len) / wavelen - low) / (high - low);
        f = (1.0f - smooth) * scaled / factor + smooth * scaled;
      } else {
        f = scaled;
      }
    }
  }
  if (!rope_freq_factors.empty()) {
    FERRY_EXPECT(rope_freq_factors.size() == inv.size(),
                 "the rope frequency factors have {} entries for {} rotary frequencies",
                 rope_freq_factors.size(), inv.size());
    for (std::size_t i = 0; i < inv.size(); ++i) inv[i] = inv[i] / rope_freq_factors[i];
  }
  return inv;
}

int64_t max_context(const ModelConfig& c) {
  return c.sliding_window > 0 ? std::min(c.n_positions, c.sliding_window) : c.n_positions;
}

int64_t default_context(const ModelConfig& c) { return std::min<int64_t>(max_context(c), 4096); }

std::vector<int32_t> generation_eos_ids(const std::filesystem::path& dir, const ModelConfig& c) {
  const auto path = dir / "generation_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return c.eos_token_ids;
  const json j = read_json_file(path, "fix or remove it");
  FERRY_FORMAT_EXPECT(j.is_object(), "{}: expected a JSON object", path.string());
  auto ids = get_ids(j, "eos_token_id", path.string());
  return ids.empty() ? c.eos_token_ids : ids;
}

std::string ModelConfig::summary() const {
  std::string s =
      fmt::format("{}, {} layers, n_embd {}, {} heads", model_type, n_layer, n_embd, n_head);
  if (n_kv_head != n_head) s += fmt::format(" ({} KV)", n_kv_head);
  s += fmt::format(", head_dim {}, n_inner {}, vocab {}", head_dim(), n_inner, vocab_size);
  return s;
}

ModelConfig ModelConfig::from_file(const std::filesystem::path& config_json) {
  std::error_code ec;
  FERRY_FORMAT_EXPECT(std::filesystem::exists(config_json, ec),
                      "cannot read {}: a model directory needs the config.json that Hugging Face "
                      "ships with the weights",
                      config_json.string());
  // Missing, a directory, unreadable, huge or not JSON (a number like 1e400 included): each
  // named with the file.
  const json j = read_json_file(config_json, "fix it, or download the model's config.json again",
                                uint64_t{16} << 20);
  return from_json(j, config_json.string());
}

ModelConfig ModelConfig::from_model_dir(const std::filesystem::path& dir) {
  return from_file(dir / "config.json");
}

namespace {

std::string torch_dtype_name(DType dt) {
  return dt == DType::f16 ? "float16" : dt == DType::bf16 ? "bfloat16" : "float32";
}

json ids_json(const std::vector<int32_t>& ids) {
  if (ids.size() == 1) return ids.front();
  return json(ids);
}

json llama_json(const ModelConfig& c) {
  static const std::pair<const char*, const char*> kArchitectures[] = {
      {"llama", "LlamaForCausalLM"},
      {"mistral", "MistralForCausalLM"},
      {"qwen2", "Qwen2ForCausalLM"},
      {"qwen3", "Qwen3ForCausalLM"}};
  std::string arch;
  for (const auto& [type, name] : kArchitectures)
    if (c.model_type == type) arch = name;
  json j{{"architectures", json::array({arch})},
         {"attention_dropout", 0.0},
         {"bos_token_id", c.bos_token_id},
         {"eos_token_id", ids_json(c.eos_token_ids)},
         {"hidden_act", c.activation_function},
         {"hidden_size", c.n_embd},
         {"initializer_range", 0.02},
         {"intermediate_size", c.n_inner},
         {"max_position_embeddings", c.n_positions},
         {"model_type", c.model_type},
         {"num_attention_heads", c.n_head},
         {"num_hidden_layers", c.n_layer},
         {"num_key_value_heads", c.n_kv_head},
         {"rms_norm_eps", c.layer_norm_epsilon},
         {"rope_theta", c.rope_theta},
         {"tie_word_embeddings", c.tie_word_embeddings},
         {"torch_dtype", torch_dtype_name(c.torch_dtype)},
         {"use_cache", true},
         {"vocab_size", c.vocab_size}};
  if (c.head_dim_ > 0) j["head_dim"] = c.head_dim_;
  if (c.model_type == "llama" || c.model_type == "qwen3") {
    j["attention_bias"] = c.o_bias;
    if (c.model_type == "llama") j["mlp_bias"] = c.mlp_bias;
  }
  if (c.model_type == "mistral")
    j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  if (c.model_type == "qwen2" || c.model_type == "qwen3") {
    j["use_sliding_window"] = false;
    j["sliding_window"] = c.n_positions;
  }
  if (c.rope_scaling.type == "none") {
    j["rope_scaling"] = nullptr;
  } else if (c.rope_scaling.type == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
  } else {
    j["rope_scaling"] = {
        {"rope_type", "llama3"},
        {"factor", c.rope_scaling.factor},
        {"low_freq_factor", c.rope_scaling.low_freq_factor},
        {"high_freq_factor", c.rope_scaling.high_freq_factor},
        {"original_max_position_embeddings", c.rope_scaling.original_max_position}};
  }
  return j;
}

}  // namespace


json ModelConfig::to_json() const {
  if (is_llama_family()) {
    json j = llama_json(*this);
    add_layout_keys(*this, j);
    return j;
  }
  json j = json{{"activation_function", activation_function},
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
              {"torch_dtype", torch_dtype_name(torch_dtype)},
              {"use_cache", true},
              {"vocab_size", vocab_size}};
  add_layout_keys(*this, j);
  return j;
}

namespace {

// A Llama-family description with the given shapes; the rest as the released configs say.
ModelConfig llama_preset(const char* type, int64_t vocab, int64_t hidden, int64_t inner,
                         int64_t layers, int64_t heads, int64_t kv_heads, int64_t positions,
                         double theta, float eps, int32_t bos, std::vector<int32_t> eos) {
  json j{{"model_type", type},
         {"vocab_size", vocab},
         {"hidden_size", hidden},
         {"intermediate_size", inner},
         {"num_hidden_layers", layers},
         {"num_attention_heads", heads},
         {"num_key_value_heads", kv_heads},
         {"max_position_embeddings", positions},
         {"rope_theta", theta},
         {"rms_norm_eps", eps},
         {"bos_token_id", bos},
         {"eos_token_id", ids_json(eos)},
         {"torch_dtype", "bfloat16"},
         {"hidden_act", "silu"}};
  return ModelConfig::from_json(j, type);
}

}  // namespace

std::string preset_names() {
  return "tiny, gptj-6b, tiny-llama, llama3-8b, mistral-7b, qwen2.5-7b, qwen3-8b";
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
    c.n_kv_head = 4;
    c.rotary_dim = 32;
    c.n_inner = 1024;
    return c;
  }
  if (name == "llama3-8b") {
    // Llama-3.1-8B: GQA 32:8, llama3 rope scaling, three EOS ids.
    c = llama_preset("llama", 128256, 4096, 14336, 32, 32, 8, 131072, 500000.0, 1e-5f, 128000,
                     {128001, 128008, 128009});
    c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 8192};
    return c;
  }
  if (name == "mistral-7b")  // Mistral-7B-v0.3: no sliding window
    return llama_preset("mistral", 32768, 4096, 14336, 32, 32, 8, 32768, 1e6, 1e-5f, 1, {2});
  if (name == "qwen2.5-7b")  // Qwen2.5-7B-Instruct: q/k/v biases, GQA 28:4
    return llama_preset("qwen2", 152064, 3584, 18944, 28, 28, 4, 32768, 1e6, 1e-6f, 151643,
                        {151645});
  if (name == "qwen3-8b")  // Qwen3-8B: q/k norms, head_dim 128
    return llama_preset("qwen3", 151936, 4096, 12288, 36, 32, 8, 40960, 1e6, 1e-6f, 151643,
                        {151645});
  if (name == "tiny-llama") {
    // GPT-2's ids fit its vocabulary, so make-model's tokenizer drives it from text.
    c = llama_preset("llama", 50304, 128, 344, 2, 4, 2, 512, 500000.0, 1e-5f, 1, {2});
    c.rope_scaling = {"llama3", 8.0, 1.0, 4.0, 64};
    return c;
  }
  throw InvalidArgument(
      fmt::format("unknown preset '{}'; the presets are: {}", name, preset_names()));
}

}  // namespace ferry::model
