// The weights as the forward pass sees them: views of each block's tensors, handed out by a
// WeightProvider that decides where the bytes live (resident in RAM now; streamed from disk
// by the offload engine later). The forward pass only ever asks for one unit at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "offload/checkpoint.hpp"
#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/dtype.hpp"
#include "runtime/model/gptj_layout.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

// A row-major weight matrix as stored in the checkpoint: [rows, cols] of dtype.
struct MatrixView {
  const void* data = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0;
  int64_t cols = 0;
};

struct BlockWeights {
  const float* ln_1_w = nullptr;  // [n_embd]
  const float* ln_1_b = nullptr;  // [n_embd]
  MatrixView q_proj;              // [n_embd, n_embd]
  MatrixView k_proj;              // [n_embd, n_embd]
  MatrixView v_proj;              // [n_embd, n_embd]
  MatrixView out_proj;            // [n_embd, n_embd]
  MatrixView fc_in;               // [n_inner, n_embd]
  const float* fc_in_b = nullptr;   // [n_inner]
  MatrixView fc_out;              // [n_embd, n_inner]
  const float* fc_out_b = nullptr;  // [n_embd]
};

struct HeadWeights {
  const float* ln_f_w = nullptr;     // [n_embd]
  const float* ln_f_b = nullptr;     // [n_embd]
  MatrixView lm_head;                // [vocab, n_embd]
  const float* lm_head_b = nullptr;  // [vocab]
};

// Hands out weights one unit at a time. acquire_* blocks until the unit's bytes are usable
// and the views stay valid until the matching release_*.
class WeightProvider {
 public:
  virtual ~WeightProvider() = default;
  virtual const model::ModelConfig& config() const = 0;
  // out[i, :] = wte[ids[i], :] as f32. Ids must be < vocab_size (checked by the caller).
  virtual void embed(std::span<const int32_t> ids, float* out) = 0;
  virtual BlockWeights acquire_block(int layer) = 0;
  virtual void release_block(int layer) = 0;
  virtual HeadWeights acquire_head() = 0;
  virtual void release_head() = 0;
};

// Checks, before any weight byte is read, that the checkpoint holds every tensor the config
// needs with the right shape and a float dtype. Throws FormatError naming the tensor, the
// shape found, the shape config.json implies, and the file.
void check_checkpoint(const model::ModelConfig& config, const offload::Checkpoint& checkpoint);

// One weight group (embedding, block or head) read into host memory: matrices keep their
// checkpoint dtype, 64-byte aligned; vectors (norms, biases) are converted to f32.
class LoadedGroup {
 public:
  LoadedGroup() = default;
  LoadedGroup(const model::WeightGroup& group, const offload::Checkpoint& checkpoint);

  MatrixView matrix(model::WeightRole role) const;
  const float* vector(model::WeightRole role) const;
  uint64_t nbytes() const { return buffer_.size(); }

 private:
  struct Slot {
    model::WeightRole role;
    std::size_t offset_bytes;
    DType dtype;
    int64_t rows, cols;
  };
  const Slot& slot(model::WeightRole role) const;
  AlignedBuffer buffer_;
  std::vector<Slot> slots_;
};

// Every weight resident in host memory, read from the checkpoint at construction.
class ResidentWeights final : public WeightProvider {
 public:
  ResidentWeights(model::ModelConfig config, const offload::Checkpoint& checkpoint);

  const model::ModelConfig& config() const override { return config_; }
  void embed(std::span<const int32_t> ids, float* out) override;
  BlockWeights acquire_block(int layer) override;
  void release_block(int) override {}
  HeadWeights acquire_head() override;
  void release_head() override {}

  uint64_t resident_bytes() const;

 private:
  model::ModelConfig config_;
  LoadedGroup embedding_;
  std::vector<LoadedGroup> blocks_;
  LoadedGroup head_;
};

}  // namespace ferry::engine
