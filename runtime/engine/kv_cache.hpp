// KvCache: keys (after rotary) and values of every past token, per sequence slot and layer,
// in f32, laid out head-major ([n_kv_head][capacity][head_dim]) so that attention for one head
// reads one contiguous block.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/core/aligned_buffer.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

class KvCache {
 public:
  KvCache() = default;
  // Room for n_seqs sequences of up to capacity tokens each.
  KvCache(const model::ModelConfig& config, int n_seqs, int64_t capacity);

  // Bytes a cache of this shape takes (for budgets, before allocating).
  static uint64_t bytes_needed(const model::ModelConfig& config, int n_seqs, int64_t capacity);

  int n_seqs() const { return n_seqs_; }
  int64_t capacity() const { return capacity_; }
  int64_t head_stride() const { return capacity_ * head_dim_; }  // elements between heads

  float* k(int layer, int seq) { return base(layer, seq, 0); }
  float* v(int layer, int seq) { return base(layer, seq, 1); }

  // Tokens stored for seq (equal across layers once a forward pass completes).
  int64_t length(int seq) const { return lengths_.at(static_cast<std::size_t>(seq)); }
  void set_length(int seq, int64_t n) { lengths_.at(static_cast<std::size_t>(seq)) = n; }

  uint64_t nbytes() const { return buffer_.size(); }

 private:
  float* base(int layer, int seq, int which);

  int n_seqs_ = 0;
  int64_t n_head_ = 0;
  int64_t head_dim_ = 0;
  int64_t capacity_ = 0;
  AlignedBuffer buffer_;
  std::vector<int64_t> lengths_;
};

}  // namespace ferry::engine
