// The GPT-J weight layout: every tensor's checkpoint name and shape, grouped into the units
// that are loaded and streamed together (the embedding, each block, the head), with byte
// counts per dtype for the planner.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/core/dtype.hpp"
#include "runtime/core/tensor.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::model {

// What a tensor is for; the forward pass looks tensors up by role, not by name.
enum class WeightRole {
  wte,        // [vocab, n_embd]
  ln_1_w,     // [n_embd]
  ln_1_b,     // [n_embd]
  q_proj,     // [n_embd, n_embd]
  k_proj,     // [n_embd, n_embd]
  v_proj,     // [n_embd, n_embd]
  out_proj,   // [n_embd, n_embd]
  fc_in_w,    // [n_inner, n_embd]
  fc_in_b,    // [n_inner]
  fc_out_w,   // [n_embd, n_inner]
  fc_out_b,   // [n_embd]
  ln_f_w,     // [n_embd]
  ln_f_b,     // [n_embd]
  lm_head_w,  // [vocab, n_embd]
  lm_head_b,  // [vocab]
};

struct WeightSpec {
  WeightRole role;
  std::string name;  // checkpoint name, e.g. "transformer.h.3.mlp.fc_in.weight"
  Shape shape;
  // Matrices keep the checkpoint's dtype; vectors (norms, biases) are used as f32.
  bool is_matrix() const { return shape.rank == 2; }
};

// A unit of loading: the embedding, block i, or the final norm + lm_head.
struct WeightGroup {
  enum class Kind { embedding, block, head } kind;
  int layer = -1;  // for blocks
  std::vector<WeightSpec> weights;
  uint64_t bytes(DType dtype) const;  // as a checkpoint stores it, every tensor in dtype
  // The weight with this role; throws Error (an internal mistake) when the group has none.
  const WeightSpec& spec(WeightRole role) const;
};

// A block unit's matrices in the order they are streamed and read back, its vectors (norms
// and biases, kept f32), and the head's vectors: one order for every backend.
inline constexpr WeightRole kBlockMatrices[] = {WeightRole::q_proj,  WeightRole::k_proj,
                                                WeightRole::v_proj,  WeightRole::out_proj,
                                                WeightRole::fc_in_w, WeightRole::fc_out_w};
inline constexpr WeightRole kBlockVectors[] = {WeightRole::ln_1_w, WeightRole::ln_1_b,
                                               WeightRole::fc_in_b, WeightRole::fc_out_b};
inline constexpr WeightRole kHeadVectors[] = {WeightRole::ln_f_w, WeightRole::ln_f_b,
                                              WeightRole::lm_head_b};

WeightGroup embedding_group(const ModelConfig& c);
WeightGroup block_group(const ModelConfig& c, int layer);
WeightGroup head_group(const ModelConfig& c);
// Every group in load order: embedding, blocks 0 … n_layer-1, head.
std::vector<WeightGroup> all_groups(const ModelConfig& c);

// Parameters in one block (201,355,264 for GPT-J-6B) and in the whole model.
int64_t block_params(const ModelConfig& c);
int64_t total_params(const ModelConfig& c);

}  // namespace ferry::model
