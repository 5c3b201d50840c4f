// Engine: the GPT-J forward pass on the CPU. One call processes a batch of sequences, each
// appending any number of tokens (a whole prompt in one pass, or one token while decoding);
// every matrix product runs once over all the batch's tokens.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/core/thread_pool.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/weights.hpp"

namespace ferry::engine {

// New tokens for one sequence slot, appended after the tokens already in its cache.
struct SeqTokens {
  int seq = 0;
  std::span<const int32_t> tokens;
};

enum class LogitsFor {
  last,  // one row per SeqTokens: the logits after its last token
  all,   // one row per token, in batch order
};

struct EngineOptions {
  int max_seqs = 1;
  int64_t context = 0;  // KV capacity per sequence; 0 means n_positions
};

// What generate() and the tools drive: a batched forward pass with its KV cache, on any
// backend (Engine on the CPU, cuda::CudaEngine on a GPU).
class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  virtual const model::ModelConfig& config() const = 0;
  virtual int64_t context() const = 0;
  virtual int64_t length(int seq) const = 0;
  virtual void reset(int seq) = 0;
  // Runs the batch and returns logits ([rows, vocab_size], see LogitsFor).
  virtual const std::vector<float>& forward(std::span<const SeqTokens> batch,
                                            LogitsFor which) = 0;
};

class Engine final : public ForwardPass {
 public:
  Engine(WeightProvider& weights, EngineOptions options, ThreadPool& pool);

  // Bytes of activations a forward pass of up to max_rows tokens needs, with logits for up to
  // max_logit_rows of them.
  static uint64_t activation_bytes(const model::ModelConfig& config, int64_t max_rows,
                                   int64_t max_logit_rows);

  const model::ModelConfig& config() const override { return config_; }
  int64_t context() const override { return cache_.capacity(); }
  int64_t length(int seq) const override { return cache_.length(seq); }
  void reset(int seq) override { cache_.set_length(seq, 0); }

  // Runs the batch and returns logits ([rows, vocab_size], see LogitsFor). Throws
  // InvalidArgument for a token id outside the vocabulary or a sequence that would outgrow
  // the context, before any state changes.
  const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which) override;

 private:
  void attention_block(std::span<const SeqTokens> batch, const BlockWeights& w, int layer);

  model::ModelConfig config_;
  WeightProvider& weights_;
  ThreadPool& pool_;
  KvCache cache_;

  // Activations, reused between calls; rows = tokens in the batch.
  std::vector<float> x_;     // [rows, n_embd] residual stream
  std::vector<float> h_;     // [rows, n_embd] ln_1 output
  std::vector<float> q_;     // [rows, n_embd]
  std::vector<float> k_;     // [rows, n_embd]
  std::vector<float> v_;     // [rows, n_embd]
  std::vector<float> attn_;  // [rows, n_embd] attention output before out_proj
  std::vector<float> proj_;  // [rows, n_embd] out_proj output
  std::vector<float> ff_;    // [rows, n_inner]
  std::vector<float> mlp_;   // [rows, n_embd]
  std::vector<int32_t> tokens_;
  std::vector<int32_t> positions_;
  std::vector<float> final_;   // [logit rows, n_embd] ln_f output
  std::vector<float> logits_;  // [logit rows, vocab]
};

}  // namespace ferry::engine
