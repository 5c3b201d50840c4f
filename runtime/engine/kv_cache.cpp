#include "runtime/engine/kv_cache.hpp"

#include "runtime/core/error.hpp"

namespace ferry::engine {

uint64_t KvCache::bytes_needed(const model::ModelConfig& config, int n_seqs, int64_t capacity) {
  return static_cast<uint64_t>(config.n_layer) * static_cast<uint64_t>(n_seqs) * 2u *
         static_cast<uint64_t>(capacity) * static_cast<uint64_t>(config.kv_dim()) * sizeof(float);
}

KvCache::KvCache(const model::ModelConfig& config, int n_seqs, int64_t capacity)
    : n_seqs_(n_seqs),
      n_head_(config.n_kv_head),
      head_dim_(config.head_dim()),
      capacity_(capacity),
      buffer_(bytes_needed(config, n_seqs, capacity), 4096),
      lengths_(static_cast<std::size_t>(n_seqs), 0) {
  FERRY_EXPECT(n_seqs > 0 && capacity > 0 && capacity <= model::max_context(config),
               "a KV cache needs at least one sequence and a capacity in [1, {}] tokens (the "
               "model's {}; asked for {} sequences of {})",
               model::max_context(config),
               config.sliding_window > 0 ? "sliding window" : "n_positions", n_seqs, capacity);
}

float* KvCache::base(int layer, int seq, int which) {
  const std::size_t per_tensor = static_cast<std::size_t>(n_head_ * capacity_ * head_dim_);
  const std::size_t index = (static_cast<std::size_t>(layer) * static_cast<std::size_t>(n_seqs_) +
                             static_cast<std::size_t>(seq)) *
                                2u +
                            static_cast<std::size_t>(which);
  return buffer_.as<float>() + index * per_tensor;
}

}  // namespace ferry::engine
