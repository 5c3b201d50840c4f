#include "runtime/model/layout.hpp"

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace ferry::model {

const char* role_name(WeightRole role) {
  static constexpr std::array<const char*, kWeightRoleCount> kNames = {
      "embed",    "attn_norm_w", "attn_norm_b",  "q_proj",       "k_proj",    "v_proj",
      "o_proj",   "q_bias",      "k_bias",       "v_bias",       "o_bias",    "q_norm",
      "k_norm",   "mlp_norm_w",  "mlp_norm_b",   "mlp_gate",     "mlp_up",    "mlp_up_b",
      "mlp_down", "mlp_down_b",  "final_norm_w", "final_norm_b", "lm_head_w", "lm_head_b"};
  return kNames[static_cast<std::size_t>(role)];
}

uint64_t WeightGroup::bytes(DType dtype) const {
  uint64_t total = 0;
  for (const auto& w : weights) total += static_cast<uint64_t>(w.shape.numel()) * dtype_size(dtype);
  return total;
}

const WeightSpec& WeightGroup::spec(WeightRole role) const {
  for (const auto& w : weights)
    if (w.role == role) return w;
  throw Error(fmt::format("internal: weight role {} not in this group", role_name(role)));
}

bool WeightGroup::has(WeightRole role) const {
  for (const auto& w : weights)
    if (w.role == role) return true;
  return false;
}

std::vector<WeightSpec> WeightGroup::matrices() const {
  std::vector<WeightSpec> out;
  for (const auto& w : weights)
    if (w.is_matrix()) out.push_back(w);
  return out;
}

std::vector<WeightSpec> WeightGroup::vectors() const {
  std::vector<WeightSpec> out;
  for (const auto& w : weights)
    if (!w.is_matrix()) out.push_back(w);
  return out;
}

namespace {

using R = WeightRole;

std::string embed_name(const ModelConfig& c) {
  return c.is_llama_family() ? "model.embed_tokens.weight" : "transformer.wte.weight";
}

// GPT-J's names, in the order its units have always streamed (q, k, v, out, fc_in, fc_out).
std::vector<WeightSpec> gptj_block(const ModelConfig& c, int layer) {
  const std::string p = fmt::format("transformer.h.{}.", layer);
  const int64_t e = c.n_embd;
  const int64_t f = c.n_inner;
  return {
      {R::attn_norm_w, p + "ln_1.weight", Shape{e}},
      {R::attn_norm_b, p + "ln_1.bias", Shape{e}},
      {R::q_proj, p + "attn.q_proj.weight", Shape{c.q_dim(), e}},
      {R::k_proj, p + "attn.k_proj.weight", Shape{c.kv_dim(), e}},
      {R::v_proj, p + "attn.v_proj.weight", Shape{c.kv_dim(), e}},
      {R::o_proj, p + "attn.out_proj.weight", Shape{e, c.q_dim()}},
      {R::mlp_up, p + "mlp.fc_in.weight", Shape{f, e}},
      {R::mlp_up_b, p + "mlp.fc_in.bias", Shape{f}},
      {R::mlp_down, p + "mlp.fc_out.weight", Shape{e, f}},
      {R::mlp_down_b, p + "mlp.fc_out.bias", Shape{e}},
  };
}

// transformers' LlamaDecoderLayer (and Mistral's, Qwen2's, Qwen3's) names.
std::vector<WeightSpec> llama_block(const ModelConfig& c, int layer) {
  const std::string p = fmt::format("model.layers.{}.", layer);
  const int64_t e = c.n_embd;
  const int64_t f = c.n_inner;
  const int64_t q = c.q_dim();
  const int64_t kv = c.kv_dim();
  std::vector<WeightSpec> w = {
      {R::attn_norm_w, p + "input_layernorm.weight", Shape{e}},
      {R::q_proj, p + "self_attn.q_proj.weight", Shape{q, e}},
      {R::k_proj, p + "self_attn.k_proj.weight", Shape{kv, e}},
      {R::v_proj, p + "self_attn.v_proj.weight", Shape{kv, e}},
      {R::o_proj, p + "self_attn.o_proj.weight", Shape{e, q}},
  };
  if (c.qkv_bias) {
    w.push_back({R::q_bias, p + "self_attn.q_proj.bias", Shape{q}});
    w.push_back({R::k_bias, p + "self_attn.k_proj.bias", Shape{kv}});
    w.push_back({R::v_bias, p + "self_attn.v_proj.bias", Shape{kv}});
  }
  if (c.o_bias) w.push_back({R::o_bias, p + "self_attn.o_proj.bias", Shape{e}});
  if (c.qk_norm) {
    w.push_back({R::q_norm, p + "self_attn.q_norm.weight", Shape{c.head_dim()}});
    w.push_back({R::k_norm, p + "self_attn.k_norm.weight", Shape{c.head_dim()}});
  }
  w.push_back({R::mlp_norm_w, p + "post_attention_layernorm.weight", Shape{e}});
  w.push_back({R::mlp_gate, p + "mlp.gate_proj.weight", Shape{f, e}});
  w.push_back({R::mlp_up, p + "mlp.up_proj.weight", Shape{f, e}});
  w.push_back({R::mlp_down, p + "mlp.down_proj.weight", Shape{e, f}});
  return w;
}

// llama.cpp's name for a role (GGUF): "token_embd.weight", "blk.3.ffn_up.weight", ...
std::string gguf_name(WeightRole role, int layer, bool tied) {
  const char* suffix = nullptr;
  switch (role) {
    case R::embed:
      return "token_embd.weight";
    case R::final_norm_w:
      return "output_norm.weight";
    case R::final_norm_b:
      return "output_norm.bias";
    case R::lm_head_w:
      return tied ? "token_embd.weight" : "output.weight";
    case R::lm_head_b:
      return "output.bias";
    case R::attn_norm_w:
      suffix = "attn_norm.weight";
      break;
    case R::attn_norm_b:
      suffix = "attn_norm.bias";
      break;
    case R::q_proj:
      suffix = "attn_q.weight";
      break;
    case R::k_proj:
      suffix = "attn_k.weight";
      break;
    case R::v_proj:
      suffix = "attn_v.weight";
      break;
    case R::o_proj:
      suffix = "attn_output.weight";
      break;
    case R::q_bias:
      suffix = "attn_q.bias";
      break;
    case R::k_bias:
      suffix = "attn_k.bias";
      break;
    case R::v_bias:
      suffix = "attn_v.bias";
      break;
    case R::o_bias:
      suffix = "attn_output.bias";
      break;
    case R::q_norm:
      suffix = "attn_q_norm.weight";
      break;
    case R::k_norm:
      suffix = "attn_k_norm.weight";
      break;
    case R::mlp_norm_w:
      suffix = "ffn_norm.weight";
      break;
    case R::mlp_norm_b:
      suffix = "ffn_norm.bias";
      break;
    case R::mlp_gate:
      suffix = "ffn_gate.weight";
      break;
    case R::mlp_up:
      suffix = "ffn_up.weight";
      break;
    case R::mlp_up_b:
      suffix = "ffn_up.bias";
      break;
    case R::mlp_down:
      suffix = "ffn_down.weight";
      break;
    case R::mlp_down_b:
      suffix = "ffn_down.bias";
      break;
  }
  return fmt::format("blk.{}.{}", layer, suffix);
}

// The group with the checkpoint's names: Hugging Face's as built, or GGUF's by role.
WeightGroup named(const ModelConfig& c, WeightGroup g) {
  if (c.naming == TensorNaming::gguf)
    for (WeightSpec& w : g.weights) w.name = gguf_name(w.role, g.layer, c.tie_word_embeddings);
  return g;
}

}  // namespace

WeightGroup embedding_group(const ModelConfig& c) {
  return named(c, {WeightGroup::Kind::embedding,
                   -1,
                   {{WeightRole::embed, embed_name(c), Shape{c.vocab_size, c.n_embd}}}});
}

WeightGroup block_group(const ModelConfig& c, int layer) {
  return named(c, {WeightGroup::Kind::block, layer,
                   c.is_llama_family() ? llama_block(c, layer) : gptj_block(c, layer)});
}

WeightGroup head_group(const ModelConfig& c) {
  const Shape table{c.vocab_size, c.n_embd};
  const std::string lm_head = c.tie_word_embeddings ? embed_name(c) : "lm_head.weight";
  if (c.is_llama_family()) {
    return named(c, {WeightGroup::Kind::head,
                     -1,
                     {{WeightRole::final_norm_w, "model.norm.weight", Shape{c.n_embd}},
                      {WeightRole::lm_head_w, lm_head, table}}});
  }
  return named(c, {WeightGroup::Kind::head,
                   -1,
                   {
                       {WeightRole::final_norm_w, "transformer.ln_f.weight", Shape{c.n_embd}},
                       {WeightRole::final_norm_b, "transformer.ln_f.bias", Shape{c.n_embd}},
                       {WeightRole::lm_head_w, lm_head, table},
                       {WeightRole::lm_head_b, "lm_head.bias", Shape{c.vocab_size}},
                   }});
}

std::vector<WeightGroup> all_groups(const ModelConfig& c) {
  std::vector<WeightGroup> groups;
  groups.reserve(static_cast<std::size_t>(c.n_layer) + 2);
  groups.push_back(embedding_group(c));
  for (int l = 0; l < c.n_layer; ++l) groups.push_back(block_group(c, l));
  groups.push_back(head_group(c));
  return groups;
}

int64_t block_params(const ModelConfig& c) {
  int64_t n = 0;
  for (const auto& w : block_group(c, 0).weights) n += w.shape.numel();
  return n;
}

int64_t total_params(const ModelConfig& c) {
  int64_t n = 0;
  for (const auto& g : all_groups(c))
    for (const auto& w : g.weights)
      if (!(c.tie_word_embeddings && w.role == WeightRole::lm_head_w)) n += w.shape.numel();
  return n;
}

}  // namespace ferry::model
