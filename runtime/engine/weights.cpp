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
                          "config.json describes a {} — is this the checkpoint that goes with "
                          "this config?",
                          w.name, checkpoint.files().front().path.parent_path().string(),
                          checkpoint.tensors().size(), config.summary());
      FERRY_FORMAT_EXPECT(t->shape == w.shape,
                          "{}: tensor '{}' has shape {} but config.json ({}) needs {}; the config "
                          "and the weights do not match",
                          checkpoint_where(checkpoint, *t), w.name, t->shape.str(),
                          config.summary(), w.shape.str());
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

std::vector<std::string> matrix_names(const model::WeightGroup& g) {
  std::vector<std::string> names;
  for (const auto& w : g.matrices()) names.push_back(w.name);
  return names;
}

}  // namespace

std::vector<offload::StreamUnitSpec> model_units(const model::ModelConfig& config,
                                                 const Placement& placement) {
  FERRY_EXPECT(placement.blocks.size() == static_cast<std::size_t>(config.n_layer),
               "the placement names {} blocks but the model has {}", placement.blocks.size(),
               config.n_layer);
  std::vector<offload::StreamUnitSpec> units;
  for (int l = 0; l < config.n_layer; ++l) {
    units.push_back({fmt::format("layer {}", l), matrix_names(model::block_group(config, l)),
                     placement.blocks[static_cast<std::size_t>(l)]});
  }
  units.push_back({"lm_head", matrix_names(model::head_group(config)), placement.head});
  return units;
}

StreamingWeights::StreamingWeights(model::ModelConfig config, const offload::Checkpoint& checkpoint,
                                   const Placement& placement, offload::IoOptions io)
    : config_(checked(std::move(config), checkpoint)),
      checkpoint_(checkpoint),
      streamer_(checkpoint, model_units(config_, placement),
                streamer_options(placement, std::move(io))) {
  embed_ = &checkpoint.at(model::embedding_group(config_).weights[0].name);
  row_.resize(packed_row_bytes(embed_->dtype, config_.n_embd));

  for (int l = 0; l < config_.n_layer; ++l) groups_.push_back(model::block_group(config_, l));
  groups_.push_back(model::head_group(config_));
  // Norms and biases: small, read once, widened to f32.
  std::vector<std::byte> narrow;
  for (const auto& g : groups_) {
    auto& offsets = vector_offsets_.emplace_back();
    for (const auto& w : g.vectors()) {
      const offload::TensorEntry& t = checkpoint.at(w.name);
      offsets.push_back(vectors_.size());
      vectors_.resize(vectors_.size() + static_cast<std::size_t>(w.shape.numel()));
      narrow.resize(t.nbytes);
      checkpoint.read(t, narrow.data());
      kernels::cpu::convert_to_f32(narrow.data(), t.dtype, w.shape.numel(),
                                   vectors_.data() + offsets.back());
    }
    auto& dtypes = dtypes_.emplace_back();
    for (const auto& w : g.matrices()) dtypes.push_back(checkpoint.at(w.name).dtype);
  }
}

void StreamingWeights::embed(std::span<const int32_t> ids, float* out) {
  const std::size_t n_embd = static_cast<std::size_t>(config_.n_embd);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    checkpoint_.read_range(*embed_, static_cast<uint64_t>(ids[i]) * row_.size(), row_.size(),
                           row_.data());
    kernels::cpu::convert_to_f32(row_.data(), embed_->dtype, config_.n_embd, out + i * n_embd);
  }
}

UnitWeights StreamingWeights::unit(const model::WeightGroup& group,
                                   const offload::UnitView& view) const {
  const auto index = static_cast<std::size_t>(&group - groups_.data());
  UnitWeights u;
  const auto matrices = group.matrices();
  for (std::size_t i = 0; i < matrices.size(); ++i) {
    const auto& w = matrices[i];
    u.set(w.role, MatrixView{view.tensor(i), dtypes_[index][i], w.shape.dims[0], w.shape.dims[1]});
  }
  const auto vectors = group.vectors();
  for (std::size_t i = 0; i < vectors.size(); ++i)
    u.set(vectors[i].role, vectors_.data() + vector_offsets_[index][i]);
  return u;
}

UnitWeights StreamingWeights::acquire_block(int layer) {
  const auto l = static_cast<std::size_t>(layer);
  return unit(groups_[l], streamer_.acquire(l));
}

void StreamingWeights::release_block(int layer) {
  streamer_.release(static_cast<std::size_t>(layer));
}

UnitWeights StreamingWeights::acquire_head() {
  const auto n = static_cast<std::size_t>(config_.n_layer);
  return unit(groups_[n], streamer_.acquire(n));
}

void StreamingWeights::release_head() {
  streamer_.release(static_cast<std::size_t>(config_.n_layer));
}

}  // namespace ferry::engine
