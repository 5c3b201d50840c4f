// ModelConfig: the architecture description of a model, built from config.json — GPT-J or a
// Llama-family model (llama, mistral, qwen2, qwen3) — validated, with the derived shapes every
// other module needs. The forward pass is one program over this description (norm kind,
// attention shape, rotary variant and scaling, MLP kind, residual layout, biases, tying).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/core/dtype.hpp"

namespace ferry::model {

enum class NormKind {
  layer_norm,  // (x - mean) / sqrt(var + eps) · w + b (GPT-J)
  rms_norm,    // x / sqrt(mean(x²) + eps) · w (Llama)
};

enum class RopeStyle {
  interleaved,  // pairs (2i, 2i+1) of the first rotary_dim features (GPT-J)
  half,         // pairs (i, i + rotary_dim/2): rotate_half (Llama, NeoX)
};

enum class MlpKind {
  gelu_new,  // fc_out(gelu_new(fc_in(x) + b) + b) (GPT-J)
  swiglu,    // down(silu(gate(x)) · up(x)) (Llama)
};

// config.json's rope_scaling: none, "linear" (every frequency / factor) or "llama3" (low
// frequencies / factor, high ones kept, a blend between).
// How the checkpoint names its tensors: Hugging Face's names ("model.layers.3.mlp.up_proj.weight")
// or llama.cpp's GGUF names ("blk.3.ffn_up.weight").
enum class TensorNaming { hugging_face, gguf };

struct RopeScaling {
  std::string type = "none";
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
};

struct ModelConfig {
  std::string model_type = "gptj";  // gptj, llama, mistral, qwen2, qwen3
  int64_t vocab_size = 50400;
  int64_t n_positions = 2048;
  int64_t n_embd = 4096;
  int64_t n_layer = 28;
  int64_t n_head = 16;
  int64_t n_kv_head = 16;  // num_key_value_heads: grouped-query attention when < n_head
  int64_t head_dim_ = 0;   // config.json's head_dim; 0: n_embd / n_head
  int64_t rotary_dim = 64;
  int64_t n_inner = 16384;           // intermediate_size; GPT-J's null means 4 · n_embd
  float layer_norm_epsilon = 1e-5f;  // every norm's eps (rms_norm_eps for the Llama family)
  std::string activation_function = "gelu_new";
  int32_t bos_token_id = 50256;
  int32_t eos_token_id = 50256;        // the first of eos_token_ids
  std::vector<int32_t> eos_token_ids;  // config.json's eos_token_id, an int or a list
  bool tie_word_embeddings = false;    // the output projection is the embedding table
  DType torch_dtype = DType::f32;      // the dtype the checkpoint says it stores

  // The architecture.
  NormKind norm = NormKind::layer_norm;
  RopeStyle rope_style = RopeStyle::interleaved;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  MlpKind mlp = MlpKind::gelu_new;
  bool parallel_residual = true;  // x + attn(ln(x)) + mlp(ln(x)); else two norms in sequence
  bool norm_bias = true;          // LayerNorm's beta
  bool qkv_bias = false;          // q/k/v projections have biases (Qwen2, attention_bias)
  bool o_bias = false;            // the output projection has a bias (attention_bias)
  bool mlp_bias = true;           // the MLP's projections have biases
  bool lm_head_bias = true;
  bool qk_norm = false;        // per-head RMSNorm of q and k before rotary (Qwen3)
  int64_t sliding_window = 0;  // 0: none; else the context is capped to it
  TensorNaming naming = TensorNaming::hugging_face;
  // Per-frequency divisors of the rotary frequencies (a GGUF file's rope_freqs.weight, which is
  // how llama.cpp stores Llama 3's rope scaling); empty: none.
  std::vector<float> rope_freq_factors;

  bool is_llama_family() const { return model_type != "gptj"; }
  // 0 for a config with no heads (validate() refuses it; parsing asks before validating).
  int64_t head_dim() const { return head_dim_ > 0 ? head_dim_ : n_head > 0 ? n_embd / n_head : 0; }
  int64_t q_dim() const { return n_head * head_dim(); }      // q_proj's rows
  int64_t kv_dim() const { return n_kv_head * head_dim(); }  // k_proj's and v_proj's rows
  // The rotary inverse frequencies (rotary_dim / 2 of them) as Hugging Face computes them in
  // float32: theta^(-2i/rotary_dim), then rope_scaling, then ÷ rope_freq_factors.
  std::vector<float> rope_inv_freq() const;
  // "gptj, 28 layers, n_embd 4096, 16 heads …": one line for inspect and plan.
  std::string summary() const;

  // Parses and validates; `source` names the file in error messages. Throws FormatError for
  // a malformed file and InvalidArgument naming the field for an unsupported model.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig from_file(const std::filesystem::path& config_json);
  // Reads <dir>/config.json.
  static ModelConfig from_model_dir(const std::filesystem::path& dir);

  // The fields above in Hugging Face's config.json layout (what make-model writes).
  nlohmann::json to_json() const;

  // Checks the numbers make a model (positive sizes, heads that divide evenly, even
  // rotary_dim ≤ head_dim, ...). `source` names the file in the message.
  void validate(const std::string& source) const;
};

// The most tokens a sequence may hold: n_positions, or the sliding window when the model has one
// (within it attention is exactly causal).
int64_t max_context(const ModelConfig& c);
// The context used when none is asked for: max_context, at most 4096 tokens (Llama 3.1 says
// 131072, whose KV cache alone would be 16 GiB for an 8B model).
int64_t default_context(const ModelConfig& c);

// The ids generation stops at: generation_config.json's eos_token_id (an int or a list; Llama
// 3.1 Instruct lists three) when the directory has one, else config.json's.
std::vector<int32_t> generation_eos_ids(const std::filesystem::path& dir, const ModelConfig& c);

// The presets make-model and plan know: "tiny" and "gptj-6b" (GPT-J), "llama3-8b",
// "mistral-7b", "qwen2.5-7b", "qwen3-8b" (exact shapes of the released models) and "tiny-llama".
ModelConfig preset_config(const std::string& name);
// Their names, for help texts and errors.
std::string preset_names();

}  // namespace ferry::model
