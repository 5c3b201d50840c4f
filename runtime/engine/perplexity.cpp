#include "runtime/engine/perplexity.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "runtime/core/clock.hpp"
#include "runtime/core/error.hpp"

namespace ferry::engine {

namespace {

// A row of logits as a distribution: its log-normalizer and its most likely token.
struct RowSummary {
  double lse = 0;
  int64_t argmax = 0;
};

RowSummary summarize(const float* row, int64_t vocab) {
  int64_t best = 0;
  for (int64_t i = 1; i < vocab; ++i)
    if (row[i] > row[best]) best = i;
  const double mx = row[best];
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(row[i]) - mx);
  return {mx + std::log(sum), best};
}

// KL(p ‖ q) of two rows of logits, given their log-normalizers.
double kl_divergence(const float* p, double lse_p, const float* q, double lse_q, int64_t vocab) {
  double kl = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    const double lp = static_cast<double>(p[i]) - lse_p;
    const double lq = static_cast<double>(q[i]) - lse_q;
    kl += std::exp(lp) * (lp - lq);
  }
  return std::max(kl, 0.0);  // rounding can leave −1e-16 where the rows agree
}

void add_target(PerplexityStats& s, const RowSummary& r, const float* row, int32_t target) {
  const double nll = r.lse - static_cast<double>(row[target]);
  ++s.tokens;
  s.nll_sum += nll;
  s.nll_sq_sum += nll * nll;
  s.top1_correct += r.argmax == target;
}

// One window through one engine, from an empty cache: the logits of every position.
const std::vector<float>& run_window(ForwardPass& engine, std::span<const int32_t> ids,
                                     const PerplexityWindow& w) {
  engine.reset(0);
  const SeqTokens s{
      0, ids.subspan(static_cast<std::size_t>(w.begin), static_cast<std::size_t>(w.end - w.begin))};
  return engine.forward({&s, 1}, LogitsFor::all);
}

}  // namespace

double PerplexityStats::mean_nll() const {
  return tokens > 0 ? nll_sum / static_cast<double>(tokens) : 0;
}
double PerplexityStats::perplexity() const { return std::exp(mean_nll()); }
double PerplexityStats::nll_stderr() const {
  if (tokens < 2) return 0;
  const auto n = static_cast<double>(tokens);
  const double mean = nll_sum / n;
  const double var = std::max(0.0, (nll_sq_sum - n * mean * mean) / (n - 1));
  return std::sqrt(var / n);
}
double PerplexityStats::perplexity_stderr() const { return perplexity() * nll_stderr(); }

std::vector<PerplexityWindow> perplexity_windows(int64_t n_tokens, int64_t context,
                                                 int64_t stride) {
  FERRY_EXPECT(n_tokens >= 2,
               "the text has {} token{}; perplexity scores each token after the first, so it "
               "needs at least 2 — give a longer text",
               n_tokens, n_tokens == 1 ? "" : "s");
  FERRY_EXPECT(context >= 2, "the window ({} tokens) must hold at least 2 tokens; raise --ctx",
               context);
  FERRY_EXPECT(stride >= 1 && stride < context,
               "the stride ({} tokens) must be between 1 and the window less one ({} tokens): "
               "each window keeps at least one token of context before the targets it scores; "
               "lower --stride",
               stride, context - 1);
  // The first window scores every target it holds; each next one the `stride` targets after
  // the last scored, ending with them and reaching back `context` tokens.
  std::vector<PerplexityWindow> out;
  int64_t end = std::min(context, n_tokens);
  out.push_back({0, end, 1});
  while (end < n_tokens) {
    const int64_t first = end;
    end = std::min(first + stride, n_tokens);
    out.push_back({std::max<int64_t>(0, end - context), end, first});
  }
  return out;
}

PerplexityReport evaluate_perplexity(ForwardPass& model, std::span<const int32_t> ids,
                                     const PerplexityOptions& options, ForwardPass* reference) {
  PerplexityReport report;
  report.context = options.context;
  report.stride = options.stride > 0 ? options.stride : std::max<int64_t>(1, options.context / 2);
  const auto windows =
      perplexity_windows(static_cast<int64_t>(ids.size()), report.context, report.stride);
  // The longest window fed (a text shorter than --ctx is one window of the whole text).
  const int64_t fed = std::min<int64_t>(report.context, static_cast<int64_t>(ids.size()));
  FERRY_EXPECT(fed <= model.context(),
               "a window of {} tokens does not fit the model's context of {} tokens; lower --ctx",
               fed, model.context());
  const int64_t vocab = model.config().vocab_size;
  if (reference) {
    FERRY_EXPECT(fed <= reference->context(),
                 "a window of {} tokens does not fit the reference's context of {} tokens; lower "
                 "--ctx",
                 fed, reference->context());
    FERRY_EXPECT(reference->config().vocab_size == vocab,
                 "the reference has a vocabulary of {} tokens and the model {}: their predictions "
                 "cannot be compared; give the checkpoint the model was converted from",
                 reference->config().vocab_size, vocab);
    report.vs_reference.emplace();
  }
  report.windows = static_cast<int64_t>(windows.size());

  std::vector<RowSummary> ref_rows;
  int64_t done = 0;
  for (const PerplexityWindow& w : windows) {
    const int64_t n_targets = w.end - w.first_target;
    // Row r of a window's logits predicts the token at position w.begin + r + 1.
    const auto row_of = [&](int64_t target_pos) { return target_pos - 1 - w.begin; };
    const std::vector<float>* ref_logits = nullptr;
    if (reference) {
      ReferenceComparison& vs = *report.vs_reference;
      const auto t0 = std::chrono::steady_clock::now();
      ref_logits = &run_window(*reference, ids, w);
      ref_rows.resize(static_cast<std::size_t>(n_targets));
      for (int64_t k = 0; k < n_targets; ++k) {
        const int64_t pos = w.first_target + k;
        const float* row = ref_logits->data() + row_of(pos) * vocab;
        ref_rows[static_cast<std::size_t>(k)] = summarize(row, vocab);
        add_target(vs.reference, ref_rows[static_cast<std::size_t>(k)], row,
                   ids[static_cast<std::size_t>(pos)]);
      }
      vs.reference.seconds += seconds_since(t0);
    }
    const auto t0 = std::chrono::steady_clock::now();
    const std::vector<float>& logits = run_window(model, ids, w);
    for (int64_t k = 0; k < n_targets; ++k) {
      const int64_t pos = w.first_target + k;
      const float* row = logits.data() + row_of(pos) * vocab;
      const RowSummary r = summarize(row, vocab);
      add_target(report.model, r, row, ids[static_cast<std::size_t>(pos)]);
      if (reference) {
        ReferenceComparison& vs = *report.vs_reference;
        const RowSummary& rr = ref_rows[static_cast<std::size_t>(k)];
        const double kl =
            kl_divergence(ref_logits->data() + row_of(pos) * vocab, rr.lse, row, r.lse, vocab);
        vs.kl_sum += kl;
        vs.kl_max = std::max(vs.kl_max, kl);
        vs.top1_agree += rr.argmax == r.argmax;
      }
    }
    report.model.seconds += seconds_since(t0);
    ++done;
    if (options.on_window) options.on_window(done, report.windows, report.model.tokens);
  }
  return report;
}

}  // namespace ferry::engine
