#include "runtime/engine/engine.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "runtime/core/error.hpp"
#include "runtime/core/trace.hpp"
#include "runtime/engine/cpu_backend.hpp"

namespace ferry::engine {

using R = model::WeightRole;

std::array<std::size_t, 12> Engine::activation_floats(const model::ModelConfig& config,
                                                      int64_t rows, int64_t logit_rows) {
  const auto r = static_cast<std::size_t>(rows);
  const auto lr = static_cast<std::size_t>(logit_rows);
  const auto e = static_cast<std::size_t>(config.n_embd);
  const auto qd = static_cast<std::size_t>(config.q_dim());
  const auto kvd = static_cast<std::size_t>(config.kv_dim());
  const auto f = static_cast<std::size_t>(config.n_inner);
  const bool swiglu = config.mlp == model::MlpKind::swiglu;
  // x, h, q, k, v, attn, proj, ff, up (SwiGLU only), mlp; the head's input and the logits.
  return {r * e,   r * e,   r * qd,
          r * kvd, r * kvd, r * qd,
          r * e,   r * f,   swiglu ? r * f : 0,
          r * e,   lr * e,  lr * static_cast<std::size_t>(config.vocab_size)};
}

uint64_t Engine::activation_bytes(const model::ModelConfig& config, int64_t max_rows,
                                  int64_t max_logit_rows) {
  uint64_t floats = 0;
  for (const std::size_t n :
       activation_floats(config, max_rows, std::min(max_rows, max_logit_rows)))
    floats += n;
  return floats * sizeof(float);
}

Engine::Engine(std::unique_ptr<Backend> backend)
    : backend_(std::move(backend)), config_(backend_->config()) {}

Engine::Engine(WeightProvider& weights, EngineOptions options, ThreadPool& pool)
    : Engine(std::make_unique<CpuBackend>(weights, options, pool)) {}

const std::vector<float>& Engine::forward(std::span<const SeqTokens> batch, LogitsFor which) {
  Backend& be = *backend_;
  const int64_t vocab = config_.vocab_size;

  // Validate the whole batch before touching any state.
  FERRY_EXPECT(!batch.empty(), "forward pass called with an empty batch");
  std::vector<bool> seen(static_cast<std::size_t>(be.max_seqs()), false);
  int64_t rows = 0;
  for (const SeqTokens& s : batch) {
    FERRY_EXPECT(s.seq >= 0 && s.seq < be.max_seqs(),
                 "sequence slot {} does not exist; the engine was made for {} sequences", s.seq,
                 be.max_seqs());
    FERRY_EXPECT(!seen[static_cast<std::size_t>(s.seq)],
                 "sequence slot {} appears twice in one batch", s.seq);
    seen[static_cast<std::size_t>(s.seq)] = true;
    FERRY_EXPECT(!s.tokens.empty(), "sequence slot {} has no tokens in this batch", s.seq);
    FERRY_EXPECT(which != LogitsFor::tail ||
                     (s.tail_logits >= 1 &&
                      s.tail_logits <= static_cast<int64_t>(s.tokens.size())),
                 "sequence slot {} asks for logits of its last {} tokens but adds {}", s.seq,
                 s.tail_logits, s.tokens.size());
    for (std::size_t i = 0; i < s.tokens.size(); ++i) {
      FERRY_EXPECT(s.tokens[i] >= 0 && s.tokens[i] < vocab,
                   "token id {} (position {} of the input) is outside the vocabulary of this "
                   "model (ids 0 … {})",
                   s.tokens[i], i, vocab - 1);
    }
    const int64_t len = be.length(s.seq);
    const auto n = static_cast<int64_t>(s.tokens.size());
    FERRY_EXPECT(len + n <= be.context(),
                 "sequence of {} tokens would grow past the context of {} tokens (the model's "
                 "limit is {}); shorten the prompt or ask for fewer new tokens",
                 len + n, be.context(), model::max_context(config_));
    rows += n;
  }

  const trace::ScopedSpan pass_span(trace::SpanKind::pass, static_cast<int32_t>(rows));
  tokens_.clear();
  positions_.clear();
  seqs_.clear();
  for (const SeqTokens& s : batch) {
    const int64_t len = be.length(s.seq);
    const auto n = static_cast<int64_t>(s.tokens.size());
    seqs_.push_back({s.seq, static_cast<int64_t>(tokens_.size()), n, len});
    for (int64_t i = 0; i < n; ++i) {
      tokens_.push_back(s.tokens[static_cast<std::size_t>(i)]);
      positions_.push_back(static_cast<int32_t>(len + i));
    }
  }
  be.reserve(seqs_);  // out of KV blocks: an error before anything changes
  // Only the rows whose logits are wanted go through the final norm and lm_head.
  std::vector<int64_t> out_rows;
  if (which == LogitsFor::all) {
    for (int64_t r = 0; r < rows; ++r) out_rows.push_back(r);
  } else if (which == LogitsFor::tail) {
    for (std::size_t i = 0; i < seqs_.size(); ++i)
      for (int64_t r = seqs_[i].n_new - batch[i].tail_logits; r < seqs_[i].n_new; ++r)
        out_rows.push_back(seqs_[i].row0 + r);
  } else {
    for (const SeqRows& s : seqs_) out_rows.push_back(s.row0 + s.n_new - 1);
  }
  const auto n_out = static_cast<int64_t>(out_rows.size());

  const auto sizes = activation_floats(config_, rows, n_out);
  const std::vector<float*> p = be.activations(sizes);
  const Acts a{p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]};

  be.begin_pass(positions_);
  be.embed(tokens_, a.x);
  // A NaN or an infinity is an error naming where it arose, never logits to sample from. The
  // residual stream is looked at after the embedding and each block where the backend can do so
  // cheaply (rows × n_embd floats, against the block's weights read for it); the logits always.
  const int64_t x_floats = rows * config_.n_embd;
  if (const auto ok = be.all_finite(a.x, x_floats); ok && !*ok)
    throw FormatError(fmt::format(
        "the embedding of the input holds a NaN or an infinity (rows of '{}'): the checkpoint is "
        "damaged — re-download or re-export the weights",
        model::embedding_group(config_).weights[0].name));
  for (int layer = 0; layer < config_.n_layer; ++layer) {
    const UnitWeights w = be.acquire_block(layer);
    const trace::ScopedSpan compute_span(trace::SpanKind::compute, layer);
    block(w, layer, rows, a);
    if (const auto ok = be.all_finite(a.x, x_floats); ok && !*ok) {
      const auto culprit = be.nonfinite_weight(w, model::block_group(config_, layer));
      be.release_block(layer);
      throw_nonfinite(fmt::format("layer {}", layer), culprit, true);
    }
    be.release_block(layer);
  }
  for (const SeqRows& s : seqs_) be.set_length(s.seq, s.n_past + s.n_new);

  const UnitWeights head = be.acquire_head();
  const trace::ScopedSpan compute_span(trace::SpanKind::compute, config_.n_layer, "lm_head");
  be.gather_rows(a.x, out_rows, config_.n_embd, a.final);
  be.norm(config_.norm, a.final, n_out, config_.n_embd, head.vector(R::final_norm_w),
          head.vector(R::final_norm_b), config_.layer_norm_epsilon, a.h);
  be.linear(a.h, n_out, head.matrix(R::lm_head_w), head.vector(R::lm_head_b), a.logits);
  be.read(a.logits, n_out * vocab, logits_);
  if (first_nonfinite(logits_.data(), static_cast<int64_t>(logits_.size())) >= 0) {
    const auto culprit = be.nonfinite_weight(head, model::head_group(config_));
    be.release_head();
    // Whether the backend looks at activations at all (so each layer's output was checked).
    const bool layers_checked = be.all_finite(a.final, 0).has_value();
    throw_nonfinite("the head (final norm and lm_head)", culprit, layers_checked);
  }
  be.release_head();
  return logits_;
}

void Engine::throw_nonfinite(const std::string& where, const std::optional<std::string>& culprit,
                             bool layers_checked) const {
  if (culprit)
    throw FormatError(fmt::format(
        "{} computed a NaN or an infinity: {} — the checkpoint is damaged; re-download or "
        "re-export the weights",
        where, *culprit));
  if (!layers_checked)
    throw Error(fmt::format(
        "the logits hold a NaN or an infinity; the {} backend does not check each layer — run "
        "with --device cpu to find the layer and the tensor",
        backend_->name()));
  throw Error(fmt::format(
      "{} computed a NaN or an infinity from finite inputs: its activations overflowed, or a "
      "weight not looked into (a packed matrix's scales, a matrix streamed in pieces) holds one "
      "— `ferry verify` checks a pack's checksums",
      where));
}

// One block. GPT-J: one norm feeds attention and the MLP in parallel,
// x = x + (mlp(ln(x)) + attn(ln(x))). Llama: x += attn(norm(x)); x += mlp(norm(x)).
void Engine::block(const UnitWeights& w, int layer, int64_t rows, const Acts& a) {
  Backend& be = *backend_;
  const int64_t e = config_.n_embd;
  const float eps = config_.layer_norm_epsilon;
  be.norm(config_.norm, a.x, rows, e, w.vector(R::attn_norm_w), w.vector(R::attn_norm_b), eps, a.h);
  attention(w, layer, rows, a);
  if (config_.parallel_residual) {
    mlp(w, rows, a);
    be.add(a.mlp, a.proj, rows * e);
    be.add(a.x, a.mlp, rows * e);
    return;
  }
  be.add(a.x, a.proj, rows * e);
  be.norm(config_.norm, a.x, rows, e, w.vector(R::mlp_norm_w), w.vector(R::mlp_norm_b), eps, a.h);
  mlp(w, rows, a);
  be.add(a.x, a.mlp, rows * e);
}

// proj = o_proj(attention(rotary(q_proj(h)), rotary(k_proj(h)), v_proj(h))), with Qwen3's
// per-head RMSNorm of q and k before the rotation.
void Engine::attention(const UnitWeights& w, int layer, int64_t rows, const Acts& a) {
  Backend& be = *backend_;
  be.linear(a.h, rows, w.matrix(R::q_proj), w.vector(R::q_bias), a.q);
  be.linear(a.h, rows, w.matrix(R::k_proj), w.vector(R::k_bias), a.k);
  be.linear(a.h, rows, w.matrix(R::v_proj), w.vector(R::v_bias), a.v);
  if (config_.qk_norm) {
    const int64_t hd = config_.head_dim();
    const float eps = config_.layer_norm_epsilon;
    be.norm(model::NormKind::rms_norm, a.q, rows * config_.n_head, hd, w.vector(R::q_norm), nullptr,
            eps, a.q);
    be.norm(model::NormKind::rms_norm, a.k, rows * config_.n_kv_head, hd, w.vector(R::k_norm),
            nullptr, eps, a.k);
  }
  be.rotary(a.q, rows, config_.n_head);
  be.rotary(a.k, rows, config_.n_kv_head);
  be.attend(layer, seqs_, a.q, a.k, a.v, a.attn);
  be.linear(a.attn, rows, w.matrix(R::o_proj), w.vector(R::o_bias), a.proj);
}

// mlp = fc_out(gelu_new(fc_in(h))) or down(silu(gate(h)) · up(h)).
void Engine::mlp(const UnitWeights& w, int64_t rows, const Acts& a) {
  Backend& be = *backend_;
  const int64_t hidden = rows * config_.n_inner;
  if (config_.mlp == model::MlpKind::swiglu) {
    be.linear(a.h, rows, w.matrix(R::mlp_gate), nullptr, a.ff);
    be.linear(a.h, rows, w.matrix(R::mlp_up), w.vector(R::mlp_up_b), a.up);
    be.silu_mul(a.ff, a.up, hidden);
  } else {
    be.linear(a.h, rows, w.matrix(R::mlp_up), w.vector(R::mlp_up_b), a.ff);
    be.gelu_new(a.ff, hidden);
  }
  be.linear(a.ff, rows, w.matrix(R::mlp_down), w.vector(R::mlp_down_b), a.mlp);
}

}  // namespace ferry::engine
