// The weights as the forward pass sees them: views of each block's tensors, handed out by a
// WeightProvider that decides where the bytes live (resident in RAM, or streamed from disk by
// the offload engine). The forward pass only ever asks for one unit at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/layer_streamer.hpp"
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
  const float* ln_1_w = nullptr;    // [n_embd]
  const float* ln_1_b = nullptr;    // [n_embd]
  MatrixView q_proj;                // [n_embd, n_embd]
  MatrixView k_proj;                // [n_embd, n_embd]
  MatrixView v_proj;                // [n_embd, n_embd]
  MatrixView out_proj;              // [n_embd, n_embd]
  MatrixView fc_in;                 // [n_inner, n_embd]
  const float* fc_in_b = nullptr;   // [n_inner]
  MatrixView fc_out;                // [n_embd, n_inner]
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

// Where each weight unit lives: one tier per block, one for the head (final norm + lm_head),
// and the staging slots that stream the disk-tier units.
struct Placement {
  std::vector<offload::Tier> blocks;  // n_layer entries
  offload::Tier head = offload::Tier::host;
  std::size_t slot_count = 2;
  // CUDA only: slots in device memory that host- and disk-tier units are copied into before
  // use (one computing, the others filling ahead of it); ignored on the CPU.
  std::size_t device_slots = 2;

  static Placement all(const model::ModelConfig& config, offload::Tier tier,
                       std::size_t slot_count = 2);
};

// The units a GPT-J streams: block l's six matrices (q, k, v, out, fc_in, fc_out), then the
// head's lm_head matrix. Norms and biases are small and kept apart, as f32.
std::vector<offload::StreamUnitSpec> gptj_units(const model::ModelConfig& config,
                                                const Placement& placement);

// The weights behind a LayerStreamer: matrices are used in their checkpoint dtype straight
// from resident memory or from a staging slot (no copy); norms and biases are read once and
// widened to f32; embedding rows are read on demand, a row per token.
class StreamingWeights final : public WeightProvider {
 public:
  StreamingWeights(model::ModelConfig config, const offload::Checkpoint& checkpoint,
                   const Placement& placement,
                   offload::IoOptions io = offload::IoOptions::from_env());

  const model::ModelConfig& config() const override { return config_; }
  void embed(std::span<const int32_t> ids, float* out) override;
  BlockWeights acquire_block(int layer) override;
  void release_block(int layer) override;
  HeadWeights acquire_head() override;
  void release_head() override;

  const offload::LayerStreamer& streamer() const { return streamer_; }

 private:
  const float* vec(std::size_t offset) const { return vectors_.data() + offset; }

  model::ModelConfig config_;
  const offload::Checkpoint& checkpoint_;
  const offload::TensorEntry* wte_ = nullptr;
  std::vector<DType> block_dtypes_;  // per block: the six matrices' dtypes, in unit order
  std::vector<float> vectors_;       // every norm and bias, as f32
  std::vector<std::size_t> block_vector_offsets_;  // per block: ln_1 w, ln_1 b, fc_in b, fc_out b
  std::size_t head_vector_offset_ = 0;             // ln_f w, ln_f b, lm_head b
  DType lm_head_dtype_ = DType::f32;
  std::vector<std::byte> row_;  // one embedding row as stored
  offload::LayerStreamer streamer_;
};

}  // namespace ferry::engine
