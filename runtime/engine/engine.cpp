#include "runtime/engine/engine.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/trace.hpp"

namespace ferry::engine {

namespace cpu = kernels::cpu;

namespace {

// out[rows, W.rows] = in[rows, W.cols] · Wᵀ (+ bias)
void linear(const float* in, int64_t rows, const MatrixView& w, const float* bias, float* out,
            ThreadPool& pool) {
  cpu::linear(in, rows, w.cols, w.data, w.dtype, w.rows, bias, out, pool);
}

template <class T>
void ensure(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

}  // namespace

uint64_t Engine::activation_bytes(const model::ModelConfig& config, int64_t max_rows,
                                  int64_t max_logit_rows) {
  const auto rows = static_cast<uint64_t>(max_rows);
  const auto logit_rows = static_cast<uint64_t>(std::min(max_rows, max_logit_rows));
  const auto e = static_cast<uint64_t>(config.n_embd);
  // x, h, q, k, v, attn, proj and mlp at n_embd and ff at n_inner for every row; ln_f output
  // and logits for the rows whose logits are wanted.
  return (rows * (8 * e + static_cast<uint64_t>(config.n_inner)) +
          logit_rows * (e + static_cast<uint64_t>(config.vocab_size))) *
         sizeof(float);
}

Engine::Engine(WeightProvider& weights, EngineOptions options, ThreadPool& pool)
    : config_(weights.config()),
      weights_(weights),
      pool_(pool),
      cache_(config_, options.max_seqs,
             options.context > 0 ? options.context : config_.n_positions) {}

const std::vector<float>& Engine::forward(std::span<const SeqTokens> batch, LogitsFor which) {
  const int64_t n_embd = config_.n_embd;
  const int64_t n_inner = config_.n_inner;
  const int64_t vocab = config_.vocab_size;

  // Validate the whole batch before touching any state.
  FERRY_EXPECT(!batch.empty(), "forward pass called with an empty batch");
  std::vector<bool> seen(static_cast<std::size_t>(cache_.n_seqs()), false);
  int64_t rows = 0;
  for (const SeqTokens& s : batch) {
    FERRY_EXPECT(s.seq >= 0 && s.seq < cache_.n_seqs(),
                 "sequence slot {} does not exist; the engine was made for {} sequences", s.seq,
                 cache_.n_seqs());
    FERRY_EXPECT(!seen[static_cast<std::size_t>(s.seq)],
                 "sequence slot {} appears twice in one batch", s.seq);
    seen[static_cast<std::size_t>(s.seq)] = true;
    FERRY_EXPECT(!s.tokens.empty(), "sequence slot {} has no tokens in this batch", s.seq);
    for (std::size_t i = 0; i < s.tokens.size(); ++i) {
      FERRY_EXPECT(s.tokens[i] >= 0 && s.tokens[i] < vocab,
                   "token id {} (position {} of the input) is outside the vocabulary of this "
                   "model (ids 0 … {})",
                   s.tokens[i], i, vocab - 1);
    }
    const int64_t len = cache_.length(s.seq);
    const auto n = static_cast<int64_t>(s.tokens.size());
    FERRY_EXPECT(len + n <= cache_.capacity(),
                 "sequence of {} tokens would grow past the context of {} tokens (model "
                 "n_positions {}); shorten the prompt or ask for fewer new tokens",
                 len + n, cache_.capacity(), config_.n_positions);
    rows += n;
  }

  const trace::ScopedSpan pass_span(trace::SpanKind::pass, static_cast<int32_t>(rows));
  const auto urows = static_cast<std::size_t>(rows);
  const auto ue = static_cast<std::size_t>(n_embd);
  ensure(x_, urows * ue);
  ensure(h_, urows * ue);
  ensure(q_, urows * ue);
  ensure(k_, urows * ue);
  ensure(v_, urows * ue);
  ensure(attn_, urows * ue);
  ensure(proj_, urows * ue);
  ensure(mlp_, urows * ue);
  ensure(ff_, urows * static_cast<std::size_t>(n_inner));
  tokens_.clear();
  positions_.clear();
  for (const SeqTokens& s : batch) {
    const int64_t len = cache_.length(s.seq);
    for (std::size_t i = 0; i < s.tokens.size(); ++i) {
      tokens_.push_back(s.tokens[i]);
      positions_.push_back(static_cast<int32_t>(len + static_cast<int64_t>(i)));
    }
  }

  weights_.embed(tokens_, x_.data());

  for (int layer = 0; layer < config_.n_layer; ++layer) {
    const BlockWeights w = weights_.acquire_block(layer);
    const trace::ScopedSpan compute_span(trace::SpanKind::compute, layer);
    // GPT-J's block: one ln_1 feeds attention and the MLP in parallel;
    // x = x + (attn(ln(x)) + mlp(ln(x))).
    cpu::layer_norm(x_.data(), rows, n_embd, w.ln_1_w, w.ln_1_b, config_.layer_norm_epsilon,
                    h_.data());
    attention_block(batch, w, layer);
    linear(h_.data(), rows, w.fc_in, w.fc_in_b, ff_.data(), pool_);
    cpu::gelu_new(ff_.data(), rows * n_inner);
    linear(ff_.data(), rows, w.fc_out, w.fc_out_b, mlp_.data(), pool_);
    cpu::add(mlp_.data(), proj_.data(), rows * n_embd);
    cpu::add(x_.data(), mlp_.data(), rows * n_embd);
    weights_.release_block(layer);
  }
  for (const SeqTokens& s : batch)
    cache_.set_length(s.seq, cache_.length(s.seq) + static_cast<int64_t>(s.tokens.size()));

  // Only the rows whose logits are wanted go through ln_f and lm_head.
  std::vector<int64_t> out_rows;
  if (which == LogitsFor::all) {
    for (int64_t r = 0; r < rows; ++r) out_rows.push_back(r);
  } else {
    int64_t r = 0;
    for (const SeqTokens& s : batch) {
      r += static_cast<int64_t>(s.tokens.size());
      out_rows.push_back(r - 1);
    }
  }
  const auto n_out = static_cast<int64_t>(out_rows.size());
  ensure(final_, static_cast<std::size_t>(n_out) * ue);
  logits_.resize(static_cast<std::size_t>(n_out * vocab));
  const HeadWeights head = weights_.acquire_head();
  const trace::ScopedSpan compute_span(trace::SpanKind::compute, config_.n_layer, "lm_head");
  for (int64_t i = 0; i < n_out; ++i) {
    cpu::layer_norm(
        x_.data() + static_cast<std::size_t>(out_rows[static_cast<std::size_t>(i)]) * ue, 1, n_embd,
        head.ln_f_w, head.ln_f_b, config_.layer_norm_epsilon,
        final_.data() + static_cast<std::size_t>(i) * ue);
  }
  linear(final_.data(), n_out, head.lm_head, head.lm_head_b, logits_.data(), pool_);
  weights_.release_head();
  return logits_;
}

void Engine::attention_block(std::span<const SeqTokens> batch, const BlockWeights& w, int layer) {
  const int64_t n_embd = config_.n_embd;
  const int64_t n_head = config_.n_head;
  const int64_t head_dim = config_.head_dim();
  const auto rows = static_cast<int64_t>(tokens_.size());
  linear(h_.data(), rows, w.q_proj, nullptr, q_.data(), pool_);
  linear(h_.data(), rows, w.k_proj, nullptr, k_.data(), pool_);
  linear(h_.data(), rows, w.v_proj, nullptr, v_.data(), pool_);
  cpu::rotary_interleaved(q_.data(), rows, n_embd, n_head, head_dim, config_.rotary_dim,
                          positions_.data());
  cpu::rotary_interleaved(k_.data(), rows, n_embd, n_head, head_dim, config_.rotary_dim,
                          positions_.data());

  int64_t row0 = 0;
  for (const SeqTokens& s : batch) {
    const auto n_new = static_cast<int64_t>(s.tokens.size());
    const int64_t n_past = cache_.length(s.seq);
    float* kc = cache_.k(layer, s.seq);
    float* vc = cache_.v(layer, s.seq);
    const int64_t hs = cache_.head_stride();
    // Scatter the new keys (after rotary, as Hugging Face caches them) and values into the
    // head-major cache.
    for (int64_t t = 0; t < n_new; ++t) {
      const float* krow = k_.data() + (row0 + t) * n_embd;
      const float* vrow = v_.data() + (row0 + t) * n_embd;
      for (int64_t h = 0; h < n_head; ++h) {
        std::memcpy(kc + h * hs + (n_past + t) * head_dim, krow + h * head_dim,
                    static_cast<std::size_t>(head_dim) * sizeof(float));
        std::memcpy(vc + h * hs + (n_past + t) * head_dim, vrow + h * head_dim,
                    static_cast<std::size_t>(head_dim) * sizeof(float));
      }
    }
    cpu::AttentionArgs a;
    a.q = q_.data() + row0 * n_embd;
    a.q_stride = n_embd;
    a.k = kc;
    a.v = vc;
    a.kv_head_stride = hs;
    a.out = attn_.data() + row0 * n_embd;
    a.out_stride = n_embd;
    a.n_new = n_new;
    a.n_past = n_past;
    a.n_head = n_head;
    a.head_dim = head_dim;
    cpu::attention(a, pool_);
    row0 += n_new;
  }
  linear(attn_.data(), rows, w.out_proj, nullptr, proj_.data(), pool_);
}

}  // namespace ferry::engine
