// CudaEngine: the GPT-J forward pass on one CUDA GPU, behind the same ForwardPass interface as
// the CPU Engine (so generate() and the tools drive either). Weights follow the placement:
// device-tier units are read once, at construction, through a ring of registered host slots
// (disk → slot by io_uring → device by cudaMemcpyAsync), so host RAM never holds more than the
// ring; host-tier units stay in registered host memory and disk-tier units are streamed into
// the ring every token; both are copied into device slots on a copy stream, and the compute
// stream waits on each copy's event — never the host. No CUDA header here (pimpl).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/io_engine.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/weights.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::cuda {

struct CudaEngineOptions {
  int device = 0;
  int max_seqs = 1;
  int64_t context = 0;  // KV capacity per sequence; 0 means n_positions
  offload::IoOptions io = offload::IoOptions::from_env();
  // Keep bf16 weights bf16 on GPUs that multiply bf16 (sm_80+); false converts them to f16 as
  // on sm_75 (tests use it to check the conversion path on any GPU).
  bool keep_bf16 = true;
};

struct CudaEngineStats {
  double load_s = 0;                 // constructing: device-tier units read and copied
  uint64_t device_weight_bytes = 0;  // device-tier units, resident in VRAM
  uint64_t device_slot_bytes = 0;    // the device slots streamed units are copied into
  uint64_t h2d_bytes = 0;            // weight bytes copied host → device since construction
  uint64_t units_copied = 0;
};

class CudaEngine final : public engine::ForwardPass {
 public:
  // Throws CudaError when there is no device, InvalidArgument for weights the GPU path does not
  // multiply (anything but f32, f16, bf16 and the q8 / q4 of packs) and for a context beyond
  // attention's limit.
  CudaEngine(const model::ModelConfig& config, const offload::Checkpoint& checkpoint,
             const engine::Placement& placement, CudaEngineOptions options = {});
  ~CudaEngine() override;
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const model::ModelConfig& config() const override;
  int64_t context() const override;
  int64_t length(int seq) const override;
  void reset(int seq) override;
  const std::vector<float>& forward(std::span<const engine::SeqTokens> batch,
                                    engine::LogitsFor which) override;

  const CudaEngineStats& stats() const;
  // The run-time streamer's counters (host- and disk-tier units); null when every unit is in VRAM.
  const offload::StreamerStats* streamer_stats() const;
  // "NVIDIA T4 (sm_75): 29 of 29 units in VRAM (11.3 GiB), KV f16 …; streamed …"
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::cuda
