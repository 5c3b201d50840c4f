// KvCache: keys (after rotary) and values of every past token, in f32, paged: one pool of
// fixed-size blocks of kBlockTokens tokens, and per sequence slot a block table (the pool's
// blocks holding its tokens 0…31, 32…63, …). Blocks are taken from the pool as a sequence
// grows and given back when it is reset or shortened, so memory follows the tokens actually
// held rather than max sequences × context.
//
// A block id names the same block in every layer, so one table serves all layers. The pool is
// [layer][k|v][n_kv_head][block][kBlockTokens][head_dim]: a block's keys of one head are a run
// of kBlockTokens · head_dim floats, and a head's runs of consecutive blocks are neighbours, so a
// sequence whose blocks are consecutive (one sequence alone gets 0, 1, 2, …) is read as one
// contiguous stream per head, as a cache of fixed slots would be, and others as a chain of runs
// with one table look-up per run.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/core/aligned_buffer.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

// The bookkeeping of a paged cache, whatever memory holds its blocks: each sequence slot's
// length and block table, and the pool's free blocks. The CPU's KvCache below and the CUDA
// backend's device pool share it.
class KvBlocks {
 public:
  // Tokens per block. 32: a sequence wastes at most 31 tokens' worth of its last block (15.5 on
  // average, under 1% of a 2048-token context), while a head's run in a block is 8–32 KiB
  // (head_dim 64–256, f32). Timed on GPT-J's decode attention (2000 keys, 16 heads of 256, one
  // thread), a table of shuffled blocks costs +40% against consecutive ones with blocks of 16,
  // +10% with 32 and nothing with 64; consecutive blocks cost nothing at any size.
  static constexpr int64_t kBlockTokens = 32;

  KvBlocks() = default;
  // n_seqs slots of up to capacity tokens each over a pool of n_blocks blocks.
  KvBlocks(int n_seqs, int64_t capacity, int64_t n_blocks);

  // Blocks in a pool of pool_tokens tokens (0: n_seqs slots of capacity tokens, each rounded
  // up to whole blocks).
  static int64_t pool_blocks(int n_seqs, int64_t capacity, int64_t pool_tokens);

  int n_seqs() const { return n_seqs_; }
  int64_t capacity() const { return capacity_; }  // most tokens one sequence may hold
  int64_t blocks_total() const { return n_blocks_; }
  int64_t blocks_used() const { return n_blocks_ - static_cast<int64_t>(free_.size()); }
  int64_t blocks_free() const { return static_cast<int64_t>(free_.size()); }
  // seq's block table: block i holds its tokens [i · kBlockTokens, (i + 1) · kBlockTokens).
  std::span<const int32_t> table(int seq) const { return tables_.at(check(seq)); }
  // Counts the changes to any table, so that a copy of them (on a GPU) knows when it is stale.
  uint64_t version() const { return version_; }

  // Tokens stored for seq (equal across layers once a forward pass completes).
  int64_t length(int seq) const { return lengths_.at(check(seq)); }
  // Sets seq's length to n: blocks beyond n tokens go back to the pool (speculative decoding's
  // roll-back, a reset at 0), and a longer n takes the blocks it lacks (see reserve).
  void set_length(int seq, int64_t n);
  // Makes each sequence's block table cover `tokens` tokens (never fewer than it has) without
  // changing its length. Throws InvalidArgument, taking nothing, when the pool lacks the blocks
  // for all of them together or a sequence would outgrow the capacity.
  struct Need {
    int seq = 0;
    int64_t tokens = 0;
  };
  void reserve(std::span<const Need> needs);
  void reserve(int seq, int64_t tokens);

 private:
  std::size_t check(int seq) const;

  int n_seqs_ = 0;
  int64_t capacity_ = 0;
  int64_t n_blocks_ = 0;
  uint64_t version_ = 0;
  std::vector<int64_t> lengths_;
  std::vector<std::vector<int32_t>> tables_;
  std::vector<int32_t> free_;  // a stack: the most recently freed block is reused first
};

// The CPU's cache: the blocks in host memory, f32.
class KvCache : public KvBlocks {
 public:
  KvCache() = default;
  // Room for n_seqs sequence slots of up to capacity tokens each, sharing a pool of
  // pool_tokens tokens (rounded up to whole blocks); pool_tokens 0: every slot full
  // (n_seqs × capacity, each slot rounded up to whole blocks).
  KvCache(const model::ModelConfig& config, int n_seqs, int64_t capacity, int64_t pool_tokens = 0);

  // Bytes one block takes: every layer's keys and values for kBlockTokens tokens, in elements of
  // elt bytes (f32 on the CPU; the CUDA backend keeps f16 for 16-bit models).
  static uint64_t block_bytes(const model::ModelConfig& config, uint64_t elt = sizeof(float));
  // Bytes a cache of this shape takes (for budgets, before allocating).
  static uint64_t bytes_needed(const model::ModelConfig& config, int n_seqs, int64_t capacity,
                               int64_t pool_tokens = 0);

  // Elements between one layer's KV heads, and between consecutive blocks of one head.
  int64_t head_stride() const { return blocks_total() * kBlockTokens * head_dim_; }
  int64_t block_stride() const { return kBlockTokens * head_dim_; }
  // Layer `layer`'s keys: head h's rows of block b at k(layer) + h · head_stride() +
  // b · block_stride(); values likewise from v(layer).
  float* k(int layer) { return layer_base(layer); }
  float* v(int layer) { return layer_base(layer) + n_head_ * head_stride(); }

  uint64_t nbytes() const { return buffer_.size(); }

 private:
  float* layer_base(int layer);

  int64_t n_head_ = 0;
  int64_t head_dim_ = 0;
  AlignedBuffer buffer_;
};

// Blocks that hold n tokens.
inline int64_t kv_blocks_for(int64_t n) {
  return (n + KvBlocks::kBlockTokens - 1) / KvBlocks::kBlockTokens;
}

}  // namespace ferry::engine
