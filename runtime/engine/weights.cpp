#include "runtime/engine/weights.hpp"

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"

namespace ferry::engine {

using model::WeightRole;

namespace {

constexpr std::size_t kAlign = 64;

std::size_t align_up(std::size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

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
      FERRY_FORMAT_EXPECT(is_float_weight(t->dtype),
                          "{}: tensor '{}' has dtype {}; ferry reads f32, f16 and bf16 weights",
                          checkpoint_where(checkpoint, *t), w.name, dtype_name(t->dtype));
    }
  }
}

LoadedGroup::LoadedGroup(const model::WeightGroup& group, const offload::Checkpoint& checkpoint) {
  // Lay out: matrices in their stored dtype, vectors as f32, each 64-byte aligned.
  std::size_t total = 0;
  std::size_t staging = 0;  // a vector stored as f16/bf16 is read here, then widened
  for (const auto& w : group.weights) {
    const offload::TensorEntry& t = checkpoint.at(w.name);
    const DType dt = w.is_matrix() ? t.dtype : DType::f32;
    const int64_t rows = w.is_matrix() ? w.shape[0] : 1;
    const int64_t cols = w.is_matrix() ? w.shape[1] : w.shape[0];
    slots_.push_back({w.role, total, dt, rows, cols});
    total += align_up(static_cast<std::size_t>(w.shape.numel()) * dtype_size(dt));
    if (!w.is_matrix() && t.dtype != DType::f32) staging = std::max<std::size_t>(staging, t.nbytes);
  }
  buffer_ = AlignedBuffer(total, kAlign);
  AlignedBuffer narrow(staging, kAlign);
  for (std::size_t i = 0; i < group.weights.size(); ++i) {
    const auto& w = group.weights[i];
    const offload::TensorEntry& t = checkpoint.at(w.name);
    char* dst = buffer_.as<char>() + slots_[i].offset_bytes;
    if (w.is_matrix() || t.dtype == DType::f32) {
      checkpoint.read(t, dst);
    } else {
      checkpoint.read(t, narrow.data());
      kernels::cpu::convert_to_f32(narrow.data(), t.dtype, w.shape.numel(),
                                   reinterpret_cast<float*>(dst));
    }
  }
}

const LoadedGroup::Slot& LoadedGroup::slot(WeightRole role) const {
  for (const auto& s : slots_)
    if (s.role == role) return s;
  throw Error(fmt::format("internal: weight role {} not in this group", static_cast<int>(role)));
}

MatrixView LoadedGroup::matrix(WeightRole role) const {
  const Slot& s = slot(role);
  return {buffer_.as<char>() + s.offset_bytes, s.dtype, s.rows, s.cols};
}

const float* LoadedGroup::vector(WeightRole role) const {
  return reinterpret_cast<const float*>(buffer_.as<char>() + slot(role).offset_bytes);
}

ResidentWeights::ResidentWeights(model::ModelConfig config, const offload::Checkpoint& checkpoint)
    : config_(std::move(config)) {
  check_checkpoint(config_, checkpoint);
  embedding_ = LoadedGroup(model::embedding_group(config_), checkpoint);
  blocks_.reserve(static_cast<std::size_t>(config_.n_layer));
  for (int l = 0; l < config_.n_layer; ++l)
    blocks_.emplace_back(model::block_group(config_, l), checkpoint);
  head_ = LoadedGroup(model::head_group(config_), checkpoint);
}

void ResidentWeights::embed(std::span<const int32_t> ids, float* out) {
  const MatrixView wte = embedding_.matrix(WeightRole::wte);
  const std::size_t row_bytes = static_cast<std::size_t>(wte.cols) * dtype_size(wte.dtype);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const char* row = static_cast<const char*>(wte.data) + static_cast<std::size_t>(ids[i]) * row_bytes;
    kernels::cpu::convert_to_f32(row, wte.dtype, wte.cols, out + i * static_cast<std::size_t>(wte.cols));
  }
}

BlockWeights ResidentWeights::acquire_block(int layer) {
  const LoadedGroup& g = blocks_.at(static_cast<std::size_t>(layer));
  BlockWeights b;
  b.ln_1_w = g.vector(WeightRole::ln_1_w);
  b.ln_1_b = g.vector(WeightRole::ln_1_b);
  b.q_proj = g.matrix(WeightRole::q_proj);
  b.k_proj = g.matrix(WeightRole::k_proj);
  b.v_proj = g.matrix(WeightRole::v_proj);
  b.out_proj = g.matrix(WeightRole::out_proj);
  b.fc_in = g.matrix(WeightRole::fc_in_w);
  b.fc_in_b = g.vector(WeightRole::fc_in_b);
  b.fc_out = g.matrix(WeightRole::fc_out_w);
  b.fc_out_b = g.vector(WeightRole::fc_out_b);
  return b;
}

HeadWeights ResidentWeights::acquire_head() {
  HeadWeights h;
  h.ln_f_w = head_.vector(WeightRole::ln_f_w);
  h.ln_f_b = head_.vector(WeightRole::ln_f_b);
  h.lm_head = head_.matrix(WeightRole::lm_head_w);
  h.lm_head_b = head_.vector(WeightRole::lm_head_b);
  return h;
}

uint64_t ResidentWeights::resident_bytes() const {
  uint64_t n = embedding_.nbytes() + head_.nbytes();
  for (const auto& b : blocks_) n += b.nbytes();
  return n;
}

}  // namespace ferry::engine
