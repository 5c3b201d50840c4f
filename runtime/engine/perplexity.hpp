// Perplexity of a model on a token sequence, and how far a model's predictions move from a
// reference's on the same tokens (a pack against the checkpoint it was converted from): what
// llama.cpp's `llama-perplexity` (with --kl-divergence) and Hugging Face's "perplexity of
// fixed-length models" guide measure.
//
// The sequence is read in windows of `context` tokens that advance by `stride`: each window is
// one forward pass from an empty cache and scores only the targets no earlier window scored, so
// every token after the first is scored exactly once, with at least context − stride tokens of
// context before it (fewer only in the first window). This is Hugging Face's strided scheme,
// except that the last window reaches back a full `context`, and a stride may not equal the
// window (there, the guide's loop never scores the first token of each window).
// Every quantity is accumulated in double.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "runtime/engine/engine.hpp"

namespace ferry::engine {

// One forward pass: tokens [begin, end) are fed; the targets at positions [first_target, end)
// are scored, each from the logits of the position before it.
struct PerplexityWindow {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t first_target = 0;
};

// The windows over n_tokens tokens. Throws InvalidArgument unless n_tokens ≥ 2, context ≥ 2 and
// 1 ≤ stride < context, naming the value and the fix.
std::vector<PerplexityWindow> perplexity_windows(int64_t n_tokens, int64_t context, int64_t stride);

struct PerplexityOptions {
  int64_t context = 512;  // tokens per window; at most each engine's context
  int64_t stride = 0;     // tokens a window advances; 0: context / 2
  // Told after each window: (windows done, windows in all, tokens scored so far).
  std::function<void(int64_t done, int64_t total, int64_t tokens)> on_window;
};

// What one model scored.
struct PerplexityStats {
  int64_t tokens = 0;        // targets scored
  double nll_sum = 0;        // Σ −log p(target), natural log
  double nll_sq_sum = 0;     // Σ (−log p(target))²
  int64_t top1_correct = 0;  // targets that were the model's most likely token
  double seconds = 0;        // forward passes and scoring

  double mean_nll() const;    // nats per token
  double perplexity() const;  // exp(mean_nll)
  double nll_stderr() const;  // standard error of mean_nll (0 below two tokens)
  // The perplexity's standard error, by the delta method: perplexity × nll_stderr.
  double perplexity_stderr() const;
};

// The model's predictions against the reference's, position by position.
struct ReferenceComparison {
  PerplexityStats reference;
  double kl_sum = 0;  // Σ KL(reference ‖ model), nats
  double kl_max = 0;
  int64_t top1_agree = 0;  // positions where both put the same token first
  double mean_kl(int64_t tokens) const { return tokens > 0 ? kl_sum / double(tokens) : 0; }
};

struct PerplexityReport {
  int64_t context = 0;
  int64_t stride = 0;
  int64_t windows = 0;
  PerplexityStats model;
  std::optional<ReferenceComparison> vs_reference;
};

// Scores ids with `model` (and, window by window on the same tokens, with `reference` when
// given). Throws InvalidArgument when the windows do not fit an engine's context or the two
// engines' vocabularies differ; the engines' own errors (a token id out of range, an I/O error
// while streaming) pass through.
PerplexityReport evaluate_perplexity(ForwardPass& model, std::span<const int32_t> ids,
                                     const PerplexityOptions& options,
                                     ForwardPass* reference = nullptr);

}  // namespace ferry::engine
