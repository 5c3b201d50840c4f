#include "runtime/engine/kv_cache.hpp"

#include <algorithm>
#include <limits>

#include "runtime/core/error.hpp"

namespace ferry::engine {

int64_t KvBlocks::pool_blocks(int n_seqs, int64_t capacity, int64_t pool_tokens) {
  return pool_tokens > 0 ? kv_blocks_for(pool_tokens)
                         : static_cast<int64_t>(n_seqs) * kv_blocks_for(capacity);
}

KvBlocks::KvBlocks(int n_seqs, int64_t capacity, int64_t n_blocks)
    : n_seqs_(n_seqs), capacity_(capacity), n_blocks_(n_blocks) {
  FERRY_EXPECT(n_blocks >= 1 && n_blocks <= std::numeric_limits<int32_t>::max(),
               "a KV pool of {} blocks cannot be made; ask for between 1 and {} tokens", n_blocks,
               int64_t{std::numeric_limits<int32_t>::max()} * kBlockTokens);
  lengths_.assign(static_cast<std::size_t>(n_seqs), 0);
  tables_.resize(static_cast<std::size_t>(n_seqs));
  free_.reserve(static_cast<std::size_t>(n_blocks_));
  for (int64_t b = n_blocks_; b-- > 0;) free_.push_back(static_cast<int32_t>(b));  // 0 first
}

std::size_t KvBlocks::check(int seq) const {
  FERRY_EXPECT(seq >= 0 && seq < n_seqs_, "sequence slot {} does not exist; the KV cache has {}",
               seq, n_seqs_);
  return static_cast<std::size_t>(seq);
}

void KvBlocks::reserve(int seq, int64_t tokens) {
  const Need need{seq, tokens};
  reserve(std::span<const Need>(&need, 1));
}

void KvBlocks::reserve(std::span<const Need> needs) {
  // Count first, so that a pool too small takes nothing and leaves every table as it was.
  int64_t wanted = 0;
  for (const Need& n : needs) {
    const std::size_t s = check(n.seq);
    FERRY_EXPECT(n.tokens >= 0 && n.tokens <= capacity_,
                 "sequence slot {} cannot hold {} tokens: the context is {}", n.seq, n.tokens,
                 capacity_);
    wanted +=
        std::max<int64_t>(0, kv_blocks_for(n.tokens) - static_cast<int64_t>(tables_[s].size()));
  }
  FERRY_EXPECT(wanted <= blocks_free(),
               "the KV cache is full: this pass needs {} more blocks of {} tokens but only {} of "
               "the pool's {} ({} tokens) are free; raise the pool with --kv-tokens or run fewer "
               "sequences at once",
               wanted, kBlockTokens, blocks_free(), n_blocks_, n_blocks_ * kBlockTokens);
  if (wanted == 0) return;
  for (const Need& n : needs) {
    std::vector<int32_t>& t = tables_[static_cast<std::size_t>(n.seq)];
    while (static_cast<int64_t>(t.size()) < kv_blocks_for(n.tokens)) {
      t.push_back(free_.back());
      free_.pop_back();
    }
  }
  ++version_;
}

void KvBlocks::set_length(int seq, int64_t n) {
  const std::size_t s = check(seq);
  FERRY_EXPECT(n >= 0 && n <= capacity_,
               "sequence slot {} cannot hold {} tokens: the context is {}", seq, n, capacity_);
  reserve(seq, n);
  std::vector<int32_t>& t = tables_[s];
  if (static_cast<int64_t>(t.size()) > kv_blocks_for(n)) ++version_;
  while (static_cast<int64_t>(t.size()) > kv_blocks_for(n)) {
    free_.push_back(t.back());
    t.pop_back();
  }
  lengths_[s] = n;
}

uint64_t KvCache::block_bytes(const model::ModelConfig& config, uint64_t elt) {
  return static_cast<uint64_t>(config.n_layer) * 2u * static_cast<uint64_t>(kBlockTokens) *
         static_cast<uint64_t>(config.kv_dim()) * elt;
}

uint64_t KvCache::bytes_needed(const model::ModelConfig& config, int n_seqs, int64_t capacity,
                               int64_t pool_tokens) {
  return static_cast<uint64_t>(pool_blocks(n_seqs, capacity, pool_tokens)) * block_bytes(config);
}

namespace {

// The pool's blocks, after checking the slots' shape it is sized from.
int64_t checked_blocks(const model::ModelConfig& config, int n_seqs, int64_t capacity,
                       int64_t pool_tokens) {
  FERRY_EXPECT(n_seqs > 0 && capacity > 0 && capacity <= model::max_context(config),
               "a KV cache needs at least one sequence and a capacity in [1, {}] tokens (the "
               "model's {}; asked for {} sequences of {})",
               model::max_context(config),
               config.sliding_window > 0 ? "sliding window" : "n_positions", n_seqs, capacity);
  FERRY_EXPECT(pool_tokens >= 0, "the KV cache's pool cannot hold {} tokens", pool_tokens);
  return KvBlocks::pool_blocks(n_seqs, capacity, pool_tokens);
}

}  // namespace

KvCache::KvCache(const model::ModelConfig& config, int n_seqs, int64_t capacity,
                 int64_t pool_tokens)
    : KvBlocks(n_seqs, capacity, checked_blocks(config, n_seqs, capacity, pool_tokens)),
      n_head_(config.n_kv_head),
      head_dim_(config.head_dim()),
      buffer_(bytes_needed(config, n_seqs, capacity, pool_tokens), 4096) {}

float* KvCache::layer_base(int layer) {
  return buffer_.as<float>() + static_cast<std::size_t>(layer) * 2u *
                                   static_cast<std::size_t>(n_head_ * head_stride());
}

}  // namespace ferry::engine
