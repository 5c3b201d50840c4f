#include "runtime/model/gguf_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace ferry::model {

namespace {

using json = nlohmann::json;

struct Keys {
  const json& md;
  std::string arch;
  const std::string& source;

  const json* find(const std::string& key) const {
    const auto it = md.find(key);
    return it == md.end() ? nullptr : &*it;
  }
  const json* arch_key(const char* suffix) const { return find(arch + "." + suffix); }

  int64_t integer(const char* suffix, std::optional<int64_t> fallback = std::nullopt) const {
    const std::string key = arch + "." + suffix;
    const json* v = find(key);
    if (v == nullptr) {
      FERRY_FORMAT_EXPECT(fallback.has_value(),
                          "{}: metadata key '{}' is missing; the file is not a complete {} model",
                          source, key, arch);
      return *fallback;
    }
    // Some converters write per-layer arrays (e.g. head counts); ferry runs uniform layers.
    if (v->is_array()) {
      FERRY_FORMAT_EXPECT(!v->empty() && (*v)[0].is_number_integer(),
                          "{}: metadata key '{}' is not an integer", source, key);
      for (const auto& e : *v)
        FERRY_EXPECT(e == (*v)[0],
                     "{}: metadata key '{}' varies by layer ({}); ferry runs models whose layers "
                     "all have one shape",
                     source, key, v->dump());
      return (*v)[0].get<int64_t>();
    }
    FERRY_FORMAT_EXPECT(v->is_number_integer(), "{}: metadata key '{}' is {}, not an integer",
                        source, key, v->dump());
    const int64_t n = v->get<int64_t>();
    FERRY_FORMAT_EXPECT(n >= 0, "{}: metadata key '{}' is {}", source, key, n);
    return n;
  }

  double number(const char* suffix, double fallback) const {
    const std::string key = arch + "." + suffix;
    const json* v = find(key);
    if (v == nullptr) return fallback;
    FERRY_FORMAT_EXPECT(v->is_number(), "{}: metadata key '{}' is {}, not a number", source, key,
                        v->dump());
    return v->get<double>();
  }

  std::optional<int64_t> token_id(const char* key) const {
    const json* v = find(key);
    if (v == nullptr) return std::nullopt;
    FERRY_FORMAT_EXPECT(v->is_number_integer() && v->get<int64_t>() >= 0 &&
                            v->get<int64_t>() < (1ll << 31),
                        "{}: metadata key '{}' is {}, not a token id", source, key, v->dump());
    return v->get<int64_t>();
  }
};

}  // namespace

ModelConfig config_from_gguf(const json& md, const TensorShapeLookup& shape_of,
                             const std::string& source) {
  const auto arch_it = md.find("general.architecture");
  FERRY_FORMAT_EXPECT(arch_it != md.end() && arch_it->is_string(),
                      "{}: metadata key 'general.architecture' is missing; is this a llama.cpp "
                      "GGUF model?",
                      source);
  const std::string arch = arch_it->get<std::string>();
  FERRY_EXPECT(arch == "llama" || arch == "qwen2" || arch == "qwen3" || arch == "gptj",
               "{}: general.architecture '{}' is not supported; ferry runs GGUF files of these "
               "architectures: {}",
               source, arch, kGgufArchitectures);
  const Keys k{md, arch, source};

  const Shape* embd = shape_of("token_embd.weight");
  FERRY_FORMAT_EXPECT(embd != nullptr && embd->rank == 2,
                      "{}: tensor 'token_embd.weight' is missing or not a matrix; the file is not "
                      "a complete {} model",
                      source, arch);
  const int64_t n_embd = k.integer("embedding_length");
  const int64_t n_head = k.integer("attention.head_count");
  FERRY_FORMAT_EXPECT(n_head > 0, "{}: {}.attention.head_count is 0", source, arch);
  const int64_t head_dim = k.integer("attention.key_length", n_embd / n_head);
  const int64_t value_dim = k.integer("attention.value_length", head_dim);
  FERRY_EXPECT(value_dim == head_dim,
               "{}: {}.attention.value_length {} differs from key_length {}; ferry runs models "
               "whose keys and values have one head size",
               source, arch, value_dim, head_dim);
  // The vocabulary is the embedding's rows (llama.vocab_size, when present, must agree).
  const int64_t vocab = embd->dims[0];
  if (const json* v = k.arch_key("vocab_size")) {
    FERRY_FORMAT_EXPECT(v->is_number_integer() && v->get<int64_t>() == vocab,
                        "{}: {}.vocab_size is {} but token_embd.weight has {} rows; the file is "
                        "inconsistent",
                        source, arch, v->dump(), vocab);
  }
  const auto bos = k.token_id("tokenizer.ggml.bos_token_id");
  json eos_ids = json::array();
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"}) {
    const auto id = k.token_id(key);
    if (id && std::find(eos_ids.begin(), eos_ids.end(), json(*id)) == eos_ids.end())
      eos_ids.push_back(*id);
  }
  const bool tied = shape_of("output.weight") == nullptr;
  const DType stored = DType::f16;  // only a planning default: every tensor's dtype is read

  json j;
  if (arch == "gptj") {
    FERRY_EXPECT(!tied, "{}: tensor 'output.weight' is missing; a gptj model has its own output "
                 "projection", source);
    j = {{"model_type", "gptj"},
         {"vocab_size", vocab},
         {"n_positions", k.integer("context_length", 2048)},
         {"n_embd", n_embd},
         {"n_layer", k.integer("block_count")},
         {"n_head", n_head},
         {"n_inner", k.integer("feed_forward_length", 4 * n_embd)},
         {"rotary_dim", k.integer("rope.dimension_count", head_dim)},
         {"layer_norm_epsilon", k.number("attention.layer_norm_epsilon", 1e-5)},
         {"activation_function", "gelu_new"},
         {"tie_word_embeddings", false},
         {"torch_dtype", "float16"}};
  } else {
    const int64_t rot = k.integer("rope.dimension_count", head_dim);
    FERRY_EXPECT(rot == head_dim,
                 "{}: {}.rope.dimension_count {} is not the head size {}; ferry runs {} models "
                 "with rotary over the whole head",
                 source, arch, rot, head_dim, arch);
    j = {{"model_type", arch},
         {"vocab_size", vocab},
         {"hidden_size", n_embd},
         {"intermediate_size", k.integer("feed_forward_length")},
         {"num_hidden_layers", k.integer("block_count")},
         {"num_attention_heads", n_head},
         {"num_key_value_heads", k.integer("attention.head_count_kv", n_head)},
         {"head_dim", head_dim},
         {"max_position_embeddings", k.integer("context_length", 2048)},
         {"rms_norm_eps", k.number("attention.layer_norm_rms_epsilon", 1e-5)},
         {"rope_theta", k.number("rope.freq_base", 10000.0)},
         {"hidden_act", "silu"},
         {"tie_word_embeddings", tied},
         {"torch_dtype", "float16"}};
    if (const json* t = k.arch_key("rope.scaling.type"); t != nullptr && *t != "none") {
      FERRY_EXPECT(*t == "linear",
                   "{}: {}.rope.scaling.type '{}' is not supported; ferry runs linear rope "
                   "scaling and Llama 3's frequency factors (rope_freqs.weight)",
                   source, arch, t->is_string() ? t->get<std::string>() : t->dump());
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", k.number("rope.scaling.factor", 1.0)}};
    }
    if (k.arch_key("attention.sliding_window") != nullptr && arch == "llama") {
      // Mistral's window (a llama file): ferry keeps the context within it.
      j["model_type"] = "mistral";
      j["sliding_window"] = k.integer("attention.sliding_window");
    }
  }
  if (bos) j["bos_token_id"] = *bos;
  if (!eos_ids.empty()) j["eos_token_id"] = eos_ids.size() == 1 ? eos_ids[0] : eos_ids;
  ModelConfig c = ModelConfig::from_json(j, source);
  c.model_type = arch == "gptj" ? "gptj" : c.model_type;
  c.torch_dtype = stored;
  c.naming = TensorNaming::gguf;
  if (c.is_llama_family()) {
    // llama.cpp's `llama` graph rotates adjacent pairs of the permuted rows; Qwen's (NeoX) rotates
    // halves of rows stored as Hugging Face has them.
    c.rope_style = arch == "llama" ? RopeStyle::interleaved : RopeStyle::half;
    // Biases and q/k norms are what the file holds (a Llama with attention_bias, Qwen2's q/k/v).
    c.qkv_bias = shape_of("blk.0.attn_q.bias") != nullptr;
    c.o_bias = shape_of("blk.0.attn_output.bias") != nullptr;
    c.qk_norm = shape_of("blk.0.attn_q_norm.weight") != nullptr;
  }
  c.validate(source);
  return c;
}

}  // namespace ferry::model
