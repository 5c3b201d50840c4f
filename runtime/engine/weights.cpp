#include "runtime/engine/weights.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"

namespace ferry::engine {

using model::WeightRole;

namespace {

std::string checkpoint_where(const offload::Checkpoint& ck, const offload::TensorEntry& t) {
  return ck.files()[t.file_index].path.string();
}

}  // namespace

void check_checkpoint(const model::ModelConfig& config, const offload::Checkpoint& checkpoint) {
  for (const auto& group : model::all_groups(config)) {
    for (const auto& w : group.weights) {
      const offload::TensorEntry* t = checkpoint.find(w.name);
      FERRY_FORMAT_EXPECT(t != nullptr,
                          "tensor '{}' is missing from the checkpoint ({}, {} tensors); "
                          "config.json describes a GPT-J with n_layer {} — is this the "
                          "checkpoint that goes with this config?",
                          w.name, checkpoint.files().front().path.parent_path().string(),
                          checkpoint.tensors().size(), config.n_layer);
      FERRY_FORMAT_EXPECT(t->shape == w.shape,
                          "{}: tensor '{}' has shape {} but config.json (n_embd {}, n_inner {}, "
                          "vocab_size {}) needs {}; the config and the weights do not match",
                          checkpoint_where(checkpoint, *t), w.name, t->shape.str(), config.n_embd,
                          config.n_inner, config.vocab_size, w.shape.str());
      // Matrices may be packed (a ferry pack's q8 / q4); norms and biases are always floats.
      FERRY_FORMAT_EXPECT(is_float_weight(t->dtype) || (w.is_matrix() && is_quantized(t->dtype)),
                          "{}: tensor '{}' has dtype {}; ferry reads f32, f16 and bf16 weights "
                          "(and q8 / q4 matrices from ferry packs)",
                          checkpoint_where(checkpoint, *t), w.name, dtype_name(t->dtype));
    }
  }
}

Placement Placement::all(const model::ModelConfig& config, offload::Tier tier,
                         std::size_t slot_count) {
  Placement p;
  p.blocks.assign(static_cast<std::size_t>(config.n_layer), tier);
  p.head = tier;
  p.slot_count = slot_count;
  return p;
}

namespace {

model::ModelConfig checked(model::ModelConfig config, const offload::Checkpoint& checkpoint) {
  check_checkpoint(config, checkpoint);
  return config;
}

offload::StreamerOptions streamer_options(const Placement& placement, offload::IoOptions io) {
  offload::StreamerOptions o;
  o.slot_count = placement.slot_count;
  o.io = std::move(io);
  o.verify_pool = &default_thread_pool();  // between layers, while the kernels wait anyway
  return o;
}

}  // namespace

std::vector<offload::StreamUnitSpec> gptj_units(const model::ModelConfig& config,
                                                const Placement& placement) {
  FERRY_EXPECT(placement.blocks.size() == static_cast<std::size_t>(config.n_layer),
               "the placement names {} blocks but the model has {}", placement.blocks.size(),
               config.n_layer);
  std::vector<offload::StreamUnitSpec> units;
  for (int l = 0; l < config.n_layer; ++l) {
    const model::WeightGroup g = model::block_group(config, l);
    offload::StreamUnitSpec u;
    u.name = fmt::format("layer {}", l);
    u.tier = placement.blocks[static_cast<std::size_t>(l)];
    for (WeightRole r : model::kBlockMatrices) u.tensors.push_back(g.spec(r).name);
    units.push_back(std::move(u));
  }
  const model::WeightGroup head = model::head_group(config);
  units.push_back({"lm_head", {head.spec(WeightRole::lm_head_w).name}, placement.head});
  return units;
}

StreamingWeights::StreamingWeights(model::ModelConfig config, const offload::Checkpoint& checkpoint,
                                   const Placement& placement, offload::IoOptions io)
    : config_(checked(std::move(config), checkpoint)),
      checkpoint_(checkpoint),
      streamer_(checkpoint, gptj_units(config_, placement),
                streamer_options(placement, std::move(io))) {
  wte_ = &checkpoint.at(model::embedding_group(config_).weights[0].name);
  row_.resize(packed_row_bytes(wte_->dtype, config_.n_embd));

  // Norms and biases: small, read once, widened to f32.
  std::vector<std::byte> narrow;
  const auto load_vector = [&](const model::WeightSpec& w) {
    const offload::TensorEntry& t = checkpoint.at(w.name);
    const std::size_t at = vectors_.size();
    vectors_.resize(at + static_cast<std::size_t>(w.shape.numel()));
    narrow.resize(t.nbytes);
    checkpoint.read(t, narrow.data());
    kernels::cpu::convert_to_f32(narrow.data(), t.dtype, w.shape.numel(), vectors_.data() + at);
    return at;
  };
  for (int l = 0; l < config_.n_layer; ++l) {
    const model::WeightGroup g = model::block_group(config_, l);
    block_vector_offsets_.push_back(vectors_.size());
    for (WeightRole r : model::kBlockVectors) load_vector(g.spec(r));
    for (WeightRole r : model::kBlockMatrices)
      block_dtypes_.push_back(checkpoint.at(g.spec(r).name).dtype);
  }
  const model::WeightGroup head = model::head_group(config_);
  head_vector_offset_ = vectors_.size();
  for (WeightRole r : model::kHeadVectors) load_vector(head.spec(r));
  lm_head_dtype_ = checkpoint.at(head.spec(WeightRole::lm_head_w).name).dtype;
}

void StreamingWeights::embed(std::span<const int32_t> ids, float* out) {
  const std::size_t n_embd = static_cast<std::size_t>(config_.n_embd);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    checkpoint_.read_range(*wte_, static_cast<uint64_t>(ids[i]) * row_.size(), row_.size(),
                           row_.data());
    kernels::cpu::convert_to_f32(row_.data(), wte_->dtype, config_.n_embd, out + i * n_embd);
  }
}

BlockWeights StreamingWeights::acquire_block(int layer) {
  const offload::UnitView v = streamer_.acquire(static_cast<std::size_t>(layer));
  const int64_t e = config_.n_embd;
  const int64_t f = config_.n_inner;
  const DType* dt = block_dtypes_.data() + static_cast<std::size_t>(layer) * 6;
  const float* vecs = vec(block_vector_offsets_[static_cast<std::size_t>(layer)]);
  BlockWeights b;
  b.q_proj = {v.tensor(0), dt[0], e, e};
  b.k_proj = {v.tensor(1), dt[1], e, e};
  b.v_proj = {v.tensor(2), dt[2], e, e};
  b.out_proj = {v.tensor(3), dt[3], e, e};
  b.fc_in = {v.tensor(4), dt[4], f, e};
  b.fc_out = {v.tensor(5), dt[5], e, f};
  b.ln_1_w = vecs;
  b.ln_1_b = vecs + e;
  b.fc_in_b = vecs + 2 * e;
  b.fc_out_b = vecs + 2 * e + f;
  return b;
}

void StreamingWeights::release_block(int layer) {
  streamer_.release(static_cast<std::size_t>(layer));
}

HeadWeights StreamingWeights::acquire_head() {
  const offload::UnitView v = streamer_.acquire(static_cast<std::size_t>(config_.n_layer));
  const float* vecs = vec(head_vector_offset_);
  HeadWeights h;
  h.ln_f_w = vecs;
  h.ln_f_b = vecs + config_.n_embd;
  h.lm_head = {v.tensor(0), lm_head_dtype_, config_.vocab_size, config_.n_embd};
  h.lm_head_b = vecs + 2 * config_.n_embd;
  return h;
}

void StreamingWeights::release_head() {
  streamer_.release(static_cast<std::size_t>(config_.n_layer));
}

}  // namespace ferry::engine
