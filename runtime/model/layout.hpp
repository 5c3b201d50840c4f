// The weight layout of a model: every tensor's checkpoint name and shape, by role, grouped into
// the units that are loaded and streamed together (the embedding, each block, the head), with
// byte counts per dtype for the planner. GPT-J and the Llama family differ only in which roles a
// block has and what they are called.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/dtype.hpp"
#include "runtime/core/tensor.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::model {

// What a tensor is for; the forward pass looks tensors up by role, never by name or index.
// Shapes: E = n_embd, Q = n_head · head_dim, K = n_kv_head · head_dim, F = n_inner, V = vocab.
enum class WeightRole {
  embed,         // [V, E]
  attn_norm_w,   // [E]  GPT-J ln_1 (shared by attention and MLP), Llama input_layernorm
  attn_norm_b,   // [E]
  q_proj,        // [Q, E]
  k_proj,        // [K, E]
  v_proj,        // [K, E]
  o_proj,        // [E, Q]
  q_bias,        // [Q]
  k_bias,        // [K]
  v_bias,        // [K]
  o_bias,        // [E]
  q_norm,        // [head_dim]  Qwen3
  k_norm,        // [head_dim]
  mlp_norm_w,    // [E]  Llama post_attention_layernorm
  mlp_norm_b,    // [E]
  mlp_gate,      // [F, E]  SwiGLU gate_proj
  mlp_up,        // [F, E]  GPT-J fc_in, SwiGLU up_proj
  mlp_up_b,      // [F]
  mlp_down,      // [E, F]  GPT-J fc_out, SwiGLU down_proj
  mlp_down_b,    // [E]
  final_norm_w,  // [E]
  final_norm_b,  // [E]
  lm_head_w,     // [V, E] (the embedding table when tied)
  lm_head_b,     // [V]
};
inline constexpr std::size_t kWeightRoleCount = static_cast<std::size_t>(WeightRole::lm_head_b) + 1;

// The role's name, for messages ("q_proj").
const char* role_name(WeightRole role);

struct WeightSpec {
  WeightRole role;
  std::string name;  // checkpoint name, e.g. "transformer.h.3.mlp.fc_in.weight"
  Shape shape;
  // Matrices keep the checkpoint's dtype; vectors (norms, biases) are used as f32.
  bool is_matrix() const { return shape.rank == 2; }
};

// A unit of loading: the embedding, block i, or the final norm + lm_head. Its matrices, in the
// order they appear, are the order they are streamed and read back on every backend.
struct WeightGroup {
  enum class Kind { embedding, block, head } kind;
  int layer = -1;  // for blocks
  std::vector<WeightSpec> weights;
  uint64_t bytes(DType dtype) const;  // as a checkpoint stores it, every tensor in dtype
  // The weight with this role; throws Error (an internal mistake) when the group has none.
  const WeightSpec& spec(WeightRole role) const;
  bool has(WeightRole role) const;
  std::vector<WeightSpec> matrices() const;  // in stream order
  std::vector<WeightSpec> vectors() const;   // norms and biases, in order
};

WeightGroup embedding_group(const ModelConfig& c);
WeightGroup block_group(const ModelConfig& c, int layer);
WeightGroup head_group(const ModelConfig& c);
// Every group in load order: embedding, blocks 0 … n_layer-1, head.
std::vector<WeightGroup> all_groups(const ModelConfig& c);

// Parameters in one block (201,355,264 for GPT-J-6B) and in the whole model (a tied table
// counted once).
int64_t block_params(const ModelConfig& c);
int64_t total_params(const ModelConfig& c);

}  // namespace ferry::model
