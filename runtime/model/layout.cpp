#include "runtime/model/gptj_layout.hpp"

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace ferry::model {

uint64_t WeightGroup::bytes(DType dtype) const {
  uint64_t total = 0;
  for (const auto& w : weights) total += static_cast<uint64_t>(w.shape.numel()) * dtype_size(dtype);
  return total;
}

WeightGroup embedding_group(const ModelConfig& c) {
  return {WeightGroup::Kind::embedding,
          -1,
          {{WeightRole::wte, "transformer.wte.weight", Shape{c.vocab_size, c.n_embd}}}};
}

WeightGroup block_group(const ModelConfig& c, int layer) {
  const std::string p = fmt::format("transformer.h.{}.", layer);
  const int64_t e = c.n_embd;
  const int64_t f = c.n_inner;
  return {WeightGroup::Kind::block,
          layer,
          {
              {WeightRole::ln_1_w, p + "ln_1.weight", Shape{e}},
              {WeightRole::ln_1_b, p + "ln_1.bias", Shape{e}},
              {WeightRole::q_proj, p + "attn.q_proj.weight", Shape{e, e}},
              {WeightRole::k_proj, p + "attn.k_proj.weight", Shape{e, e}},
              {WeightRole::v_proj, p + "attn.v_proj.weight", Shape{e, e}},
              {WeightRole::out_proj, p + "attn.out_proj.weight", Shape{e, e}},
              {WeightRole::fc_in_w, p + "mlp.fc_in.weight", Shape{f, e}},
              {WeightRole::fc_in_b, p + "mlp.fc_in.bias", Shape{f}},
              {WeightRole::fc_out_w, p + "mlp.fc_out.weight", Shape{e, f}},
              {WeightRole::fc_out_b, p + "mlp.fc_out.bias", Shape{e}},
          }};
}

const WeightSpec& WeightGroup::spec(WeightRole role) const {
  for (const auto& w : weights)
    if (w.role == role) return w;
  throw Error(fmt::format("internal: weight role {} not in this group", static_cast<int>(role)));
}

WeightGroup head_group(const ModelConfig& c) {
  return {WeightGroup::Kind::head,
          -1,
          {
              {WeightRole::ln_f_w, "transformer.ln_f.weight", Shape{c.n_embd}},
              {WeightRole::ln_f_b, "transformer.ln_f.bias", Shape{c.n_embd}},
              {WeightRole::lm_head_w, "lm_head.weight", Shape{c.vocab_size, c.n_embd}},
              {WeightRole::lm_head_b, "lm_head.bias", Shape{c.vocab_size}},
          }};
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
    for (const auto& w : g.weights) n += w.shape.numel();
  return n;
}

}  // namespace ferry::model
