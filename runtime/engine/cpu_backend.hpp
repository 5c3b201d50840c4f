// CpuBackend: the model program's operations on the host — kernels/cpu on the thread pool, the
// KV cache in RAM, weights from a WeightProvider (resident, streamed from disk through staging
// slots, or memory-mapped) used in place, in their stored dtype.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/core/thread_pool.hpp"
#include "runtime/engine/backend.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/weights.hpp"

namespace ferry::engine {

class CpuBackend final : public Backend {
 public:
  CpuBackend(WeightProvider& weights, EngineOptions options, ThreadPool& pool);

  const model::ModelConfig& config() const override { return config_; }
  std::string name() const override;
  std::string describe() const override;
  double load_s() const override;
  const offload::LayerStreamer* host_streamer() const override { return weights_.host_streamer(); }

  int64_t context() const override { return cache_.capacity(); }
  int max_seqs() const override { return cache_.n_seqs(); }
  int64_t length(int seq) const override { return cache_.length(seq); }
  void set_length(int seq, int64_t n) override { cache_.set_length(seq, n); }
  void reserve(std::span<const SeqRows> seqs) override;
  KvUsage kv_usage() const override {
    return {KvCache::kBlockTokens, cache_.blocks_total(), cache_.blocks_used(), cache_.nbytes()};
  }
  const KvCache& kv_cache() const { return cache_; }

  std::vector<float*> activations(std::span<const std::size_t> floats) override;
  void begin_pass(std::span<const int32_t> positions) override;

  void embed(std::span<const int32_t> ids, float* x) override { weights_.embed(ids, x); }
  UnitWeights acquire_block(int layer) override { return weights_.acquire_block(layer); }
  void release_block(int layer) override { weights_.release_block(layer); }
  UnitWeights acquire_head() override { return weights_.acquire_head(); }
  void release_head() override { weights_.release_head(); }

  void norm(model::NormKind kind, const float* x, int64_t rows, int64_t n, const float* gamma,
            const float* beta, float eps, float* y) override;
  void linear(const float* x, int64_t rows, const MatrixView& w, const float* bias,
              float* y) override;
  void rotary(float* x, int64_t rows, int64_t n_head) override;
  void attend(int layer, std::span<const SeqRows> seqs, const float* q, const float* k,
              const float* v, float* out) override;
  void gelu_new(float* x, int64_t n) override;
  void silu_mul(float* gate, const float* up, int64_t n) override;
  void add(float* y, const float* x, int64_t n) override;
  void gather_rows(const float* x, std::span<const int64_t> rows, int64_t n, float* y) override;
  void read(const float* x, int64_t n, std::vector<float>& out) override;
  std::optional<bool> all_finite(const float* x, int64_t n) override {
    return first_nonfinite(x, n) < 0;
  }
  std::optional<std::string> nonfinite_weight(const UnitWeights& w,
                                              const model::WeightGroup& g) override {
    return find_nonfinite_weight(w, g);
  }

 private:
  model::ModelConfig config_;
  WeightProvider& weights_;
  ThreadPool& pool_;
  KvCache cache_;
  std::vector<float> inv_freq_;  // rotary_half's frequencies (Llama family)
  std::vector<int32_t> positions_;
  std::vector<std::vector<float>> buffers_;
  std::vector<KvCache::Need> needs_;
  std::vector<float> part_out_;  // a chunked product's part, before it is scattered (≤ 4 MiB)
};

}  // namespace ferry::engine
