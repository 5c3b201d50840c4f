// Engine: the forward pass of every model family, written once over a Backend's operations
// (backend.hpp) with weights looked up by role. One call processes a batch of sequences, each
// appending any number of tokens (a whole prompt in one pass, or one token while decoding);
// every matrix product runs once over all the batch's tokens.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/engine/backend.hpp"
#include "runtime/engine/weights.hpp"

namespace ferry::engine {

// New tokens for one sequence slot, appended after the tokens already in its cache.
struct SeqTokens {
  int seq = 0;
  std::span<const int32_t> tokens;
  // With LogitsFor::tail: rows of logits for its last tail_logits tokens (1 … tokens.size()).
  int64_t tail_logits = 1;
};

enum class LogitsFor {
  last,  // one row per SeqTokens: the logits after its last token
  all,   // one row per token, in batch order
  // SeqTokens::tail_logits rows per SeqTokens, in batch order: a batch where one sequence's
  // drafts are verified (every row) beside others' single rows and prompt chunks (the last).
  tail,
};

struct EngineOptions {
  int max_seqs = 1;
  int64_t context = 0;  // KV capacity per sequence; 0 means model::default_context
  // Tokens the KV cache's shared pool of blocks holds, all sequences together; 0 means
  // max_seqs × context (every sequence at full context at once).
  int64_t kv_pool_tokens = 0;
};

// What generate() and the tools drive: a batched forward pass with its KV cache.
class ForwardPass {
 public:
  virtual ~ForwardPass() = default;
  virtual const model::ModelConfig& config() const = 0;
  virtual int64_t context() const = 0;
  virtual int max_seqs() const = 0;  // sequence slots: seq in [0, max_seqs())
  virtual int64_t length(int seq) const = 0;
  // The KV cache's blocks in use (backend.hpp), for admitting sequences and /metrics.
  virtual KvUsage kv_usage() const = 0;
  virtual void reset(int seq) = 0;
  // Keeps the first n tokens of seq's cache (0 ≤ n ≤ length(seq)) and drops the rest as if they
  // had never been written: speculative decoding rolls back the drafts the target rejected.
  virtual void truncate(int seq, int64_t n) = 0;
  // Runs the batch and returns logits ([rows, vocab_size], see LogitsFor).
  virtual const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which) = 0;
};

class Engine final : public ForwardPass {
 public:
  explicit Engine(std::unique_ptr<Backend> backend);
  // On the CPU backend, over these weights.
  Engine(WeightProvider& weights, EngineOptions options, ThreadPool& pool);

  // Bytes of activations a forward pass of up to max_rows tokens needs, with logits for up to
  // max_logit_rows of them.
  static uint64_t activation_bytes(const model::ModelConfig& config, int64_t max_rows,
                                   int64_t max_logit_rows);

  const model::ModelConfig& config() const override { return config_; }
  int64_t context() const override { return backend_->context(); }
  int max_seqs() const override { return backend_->max_seqs(); }
  int64_t length(int seq) const override { return backend_->length(seq); }
  KvUsage kv_usage() const override { return backend_->kv_usage(); }
  void reset(int seq) override { backend_->set_length(seq, 0); }
  void truncate(int seq, int64_t n) override {
    FERRY_EXPECT(n >= 0 && n <= length(seq),
                 "cannot truncate sequence slot {} to {} tokens: it holds {}", seq, n,
                 length(seq));
    backend_->set_length(seq, n);
  }
  Backend& backend() { return *backend_; }
  const Backend& backend() const { return *backend_; }

  // Runs the batch and returns logits ([rows, vocab_size], see LogitsFor). Throws
  // InvalidArgument for a token id outside the vocabulary or a sequence that would outgrow
  // the context, before any state changes.
  const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which) override;

 private:
  // The activations of one pass ([rows, width] each, rows = tokens in the batch).
  // Floats of each activation buffer of a pass of `rows` tokens with `logit_rows` rows of logits,
  // in Acts' order (what forward() allocates and activation_bytes() counts).
  static std::array<std::size_t, 12> activation_floats(const model::ModelConfig& config,
                                                       int64_t rows, int64_t logit_rows);
  struct Acts {
    float* x;       // [rows, n_embd] residual stream
    float* h;       // [rows, n_embd] a norm's output
    float* q;       // [rows, q_dim]
    float* k;       // [rows, kv_dim]
    float* v;       // [rows, kv_dim]
    float* attn;    // [rows, q_dim] attention output before o_proj
    float* proj;    // [rows, n_embd] o_proj output
    float* ff;      // [rows, n_inner] fc_in / gate output
    float* up;      // [rows, n_inner] SwiGLU's up projection (null for GPT-J)
    float* mlp;     // [rows, n_embd]
    float* final;   // [logit rows, n_embd] rows taken for the head
    float* logits;  // [logit rows, vocab]
  };
  void block(const UnitWeights& w, int layer, int64_t rows, const Acts& a);
  // Throws the error for a NaN or an infinity that `where` computed: naming the weight that
  // holds one (culprit), else saying whether the backend checked each layer.
  [[noreturn]] void throw_nonfinite(const std::string& where,
                                    const std::optional<std::string>& culprit,
                                    bool layers_checked) const;
  void attention(const UnitWeights& w, int layer, int64_t rows, const Acts& a);
  void mlp(const UnitWeights& w, int64_t rows, const Acts& a);

  std::unique_ptr<Backend> backend_;
  model::ModelConfig config_;
  std::vector<int32_t> tokens_;
  std::vector<int32_t> positions_;
  std::vector<SeqRows> seqs_;
  std::vector<float> logits_;  // [logit rows, vocab], on the host
};

}  // namespace ferry::engine
