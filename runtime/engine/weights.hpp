// The weights as the forward pass sees them: views of each block's tensors, handed out by a
// WeightProvider that decides where the bytes live (resident in RAM, or streamed from disk by
// the offload engine). The forward pass only ever asks for one unit at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/layer_streamer.hpp"
#include "runtime/core/dtype.hpp"
#include "runtime/engine/backend.hpp"
#include "runtime/model/layout.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

// Hands out weights one unit at a time. acquire_* blocks until the unit's bytes are usable
// and the views stay valid until the matching release_*.
class WeightProvider {
 public:
  virtual ~WeightProvider() = default;
  virtual const model::ModelConfig& config() const = 0;
  // out[i, :] = wte[ids[i], :] as f32. Ids must be < vocab_size (checked by the caller).
  virtual void embed(std::span<const int32_t> ids, float* out) = 0;
  virtual UnitWeights acquire_block(int layer) = 0;
  virtual void release_block(int layer) = 0;
  virtual UnitWeights acquire_head() = 0;
  virtual void release_head() = 0;
  // The bytes of one part of a chunked matrix of the unit acquired last (its rows, as stored),
  // valid until the next part() or the unit's release. Parts come in the order of the unit's
  // matrices and of their parts (the model program's order); asking out of order is an error.
  virtual const void* part(const ChunkedMatrix::Part& part);
  // The streamer the weights come through, or null (for backends' describe and counters).
  virtual const offload::LayerStreamer* host_streamer() const { return nullptr; }
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
  // CPU: disk-tier units are streamed in pieces of at most this many bytes, a matrix in row
  // chunks when it is bigger (0: whole units).
  uint64_t chunk_bytes = 0;

  static Placement all(const model::ModelConfig& config, offload::Tier tier,
                       std::size_t slot_count = 2);
};

// The units a model streams: block l's matrices (model::block_group's order), then the head's
// lm_head matrix. Norms and biases are small and kept apart, as f32.
std::vector<offload::StreamUnitSpec> model_units(const model::ModelConfig& config,
                                                 const Placement& placement);

// How a model's units map onto streamer units: whole (one streamer unit per block and one for
// the head, model_units' order), or, for disk-tier groups bigger than placement.chunk_bytes,
// pieces of at most that many bytes (the group's matrices in order, cut at row boundaries, small
// ones sharing a piece).
struct StreamLayout {
  struct Group {
    std::size_t first_unit = 0;
    std::size_t unit_count = 1;
    std::vector<ChunkedMatrix> chunked;  // per matrix of the group when pieced, else empty
  };
  std::vector<offload::StreamUnitSpec> units;
  std::vector<Group> groups;  // blocks 0 … n_layer-1, then the head
};
StreamLayout stream_layout(const model::ModelConfig& config, const offload::Checkpoint& checkpoint,
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
  UnitWeights acquire_block(int layer) override;
  void release_block(int layer) override;
  UnitWeights acquire_head() override;
  void release_head() override;
  const void* part(const ChunkedMatrix::Part& part) override;

  const offload::LayerStreamer& streamer() const { return streamer_; }
  const offload::LayerStreamer* host_streamer() const override { return &streamer_; }

 private:
  UnitWeights acquire(std::size_t group);
  void release(std::size_t group);

  model::ModelConfig config_;
  const offload::Checkpoint& checkpoint_;
  StreamLayout layout_;

  // A group's views, made once: matrices with their dtype, shape and (pieced) chunks, vectors
  // pointing into vectors_; acquire() fills in a whole unit's matrix data from the streamer.
  struct Group {
    UnitWeights views;
    std::vector<model::WeightRole> matrix_roles;  // in stream order (UnitView::tensor index)
  };

  const offload::TensorEntry* embed_ = nullptr;
  std::vector<float> vectors_;  // every norm and bias, as f32
  std::vector<Group> groups_;   // blocks 0 … n_layer-1, then the head
  std::vector<std::byte> row_;  // one embedding row as stored
  offload::LayerStreamer streamer_;
  // A pieced group: the piece (streamer unit) acquired now, if any, and its view.
  std::optional<std::size_t> piece_;
  offload::UnitView piece_view_;
};

}  // namespace ferry::engine
