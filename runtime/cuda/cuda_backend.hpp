// CudaBackend: the model program's operations (engine/backend.hpp) on one CUDA GPU, so the one
// forward pass in engine/engine.cpp runs there. Weights follow the placement: device-tier units
// are read once, at construction, through a ring of registered host slots (disk → slot by
// io_uring → device by cudaMemcpyAsync), so host RAM never holds more than the ring; host-tier
// units stay in registered host memory and disk-tier units are streamed into the ring every
// token; both are copied into device slots on a copy stream, and the compute stream waits on
// each copy's event — never the host. Activations, norms and biases live on the device, and the
// KV cache too unless the plan puts it in mapped host memory. No CUDA header here (pimpl).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/io_engine.hpp"
#include "runtime/engine/backend.hpp"
#include "runtime/engine/weights.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::cuda {

struct CudaEngineOptions {
  int device = 0;
  int max_seqs = 1;
  int64_t context = 0;  // KV capacity per sequence; 0 means model::default_context
  // Tokens the KV cache's pool of blocks holds, all sequences together; 0: max_seqs × context.
  int64_t kv_pool_tokens = 0;
  // The KV pool in mapped page-locked host memory instead of VRAM (the plan's choice when VRAM
  // is short): attention and the cache stores read and write it over PCIe, the kernels unchanged.
  bool kv_in_host_memory = false;
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

class CudaBackend final : public engine::Backend {
 public:
  // Throws CudaError when there is no device, InvalidArgument for weights the GPU path does not
  // multiply (anything but f32, f16, bf16 and the q8 / q4 of packs) and for a context beyond
  // attention's limit.
  CudaBackend(const model::ModelConfig& config, const offload::Checkpoint& checkpoint,
              const engine::Placement& placement, CudaEngineOptions options = {});
  ~CudaBackend() override;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const model::ModelConfig& config() const override;
  std::string name() const override;
  // "NVIDIA T4 (sm_75): 29 of 29 units in VRAM (11.3 GiB), KV cache f16 …; streamed …"
  std::string describe() const override;
  double load_s() const override { return stats().load_s; }
  // The run-time streamer (host- and disk-tier units); null when every unit is in VRAM.
  const offload::LayerStreamer* host_streamer() const override;
  std::string device_name() const override;  // "NVIDIA T4 (sm_75)"

  int64_t context() const override;
  int max_seqs() const override;
  int64_t length(int seq) const override;
  void set_length(int seq, int64_t n) override;
  void reserve(std::span<const engine::SeqRows> seqs) override;
  engine::KvUsage kv_usage() const override;

  std::vector<float*> activations(std::span<const std::size_t> floats) override;
  void begin_pass(std::span<const int32_t> positions) override;

  void embed(std::span<const int32_t> ids, float* x) override;
  engine::UnitWeights acquire_block(int layer) override;
  void release_block(int layer) override;
  engine::UnitWeights acquire_head() override;
  void release_head() override;

  void norm(model::NormKind kind, const float* x, int64_t rows, int64_t n, const float* gamma,
            const float* beta, float eps, float* y) override;
  void linear(const float* x, int64_t rows, const engine::MatrixView& w, const float* bias,
              float* y) override;
  void rotary(float* x, int64_t rows, int64_t n_head) override;
  void attend(int layer, std::span<const engine::SeqRows> seqs, const float* q, const float* k,
              const float* v, float* out) override;
  void gelu_new(float* x, int64_t n) override;
  void silu_mul(float* gate, const float* up, int64_t n) override;
  void add(float* y, const float* x, int64_t n) override;
  void gather_rows(const float* x, std::span<const int64_t> rows, int64_t n, float* y) override;
  void read(const float* x, int64_t n, std::vector<float>& out) override;

  const CudaEngineStats& stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The backend as the tools make it (engine::Engine(make_cuda_backend(…)) is the forward pass).
std::unique_ptr<CudaBackend> make_cuda_backend(const model::ModelConfig& config,
                                               const offload::Checkpoint& checkpoint,
                                               const engine::Placement& placement,
                                               CudaEngineOptions options = {});

}  // namespace ferry::cuda
