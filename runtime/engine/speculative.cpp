#include "runtime/engine/speculative.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "runtime/core/clock.hpp"
#include "runtime/core/error.hpp"
#include "runtime/text/tokenizer.hpp"

namespace ferry::engine {

namespace {

double uniform(std::mt19937_64& rng) { return std::generate_canonical<double, 53>(rng); }

// An id drawn from weights w (not necessarily normalized; total = their sum), in id order.
int32_t draw(std::span<const float> w, double total, std::mt19937_64& rng) {
  const double u = uniform(rng) * total;
  double cum = 0.0;
  int32_t last_positive = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    if (w[i] <= 0.0f) continue;
    cum += static_cast<double>(w[i]);
    last_positive = static_cast<int32_t>(i);
    if (u < cum) return last_positive;
  }
  return last_positive;  // u rounded up to the total
}

// A token from one row of logits as plain decoding picks it.
int32_t pick(std::span<const float> logits, const SamplingParams& sampling, std::mt19937_64& rng,
             std::vector<float>& probs) {
  if (sampling.temperature == 0.0f) return argmax(logits);
  sampling_distribution(logits, sampling, probs);
  return draw(probs, 1.0, rng);
}

}  // namespace

void sampling_distribution(std::span<const float> logits, const SamplingParams& params,
                           std::vector<float>& probs) {
  FERRY_EXPECT(params.temperature > 0.0f, "sampling_distribution needs a positive temperature");
  FERRY_EXPECT(!logits.empty(), "cannot sample from empty logits");
  // The same steps, in the same order and precision, as Sampler::sample.
  const auto n = static_cast<int32_t>(logits.size());
  std::vector<int32_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  const auto at = [&](int32_t i) { return logits[static_cast<std::size_t>(i)]; };
  const auto by_logit = [&](int32_t a, int32_t b) {
    return at(a) > at(b) || (at(a) == at(b) && a < b);
  };
  int32_t keep = n;
  if (params.top_k > 0 && params.top_k < n) keep = params.top_k;
  if (keep < n || params.top_p < 1.0f) {
    std::partial_sort(order.begin(), order.begin() + keep, order.end(), by_logit);
  } else {
    // No filter: only the largest logit matters (for the exponent's offset).
    std::iter_swap(order.begin(), std::min_element(order.begin(), order.end(), by_logit));
  }
  const double inv_t = 1.0 / static_cast<double>(params.temperature);
  const double top = static_cast<double>(at(order[0]));
  std::vector<float> kept(static_cast<std::size_t>(keep));
  double sum = 0.0;
  for (int32_t i = 0; i < keep; ++i) {
    const auto p = static_cast<float>(
        std::exp((static_cast<double>(at(order[static_cast<std::size_t>(i)])) - top) * inv_t));
    kept[static_cast<std::size_t>(i)] = p;
    sum += static_cast<double>(p);
  }
  if (params.top_p < 1.0f) {
    double cum = 0.0;
    int32_t cut = keep;
    for (int32_t i = 0; i < keep; ++i) {
      cum += static_cast<double>(kept[static_cast<std::size_t>(i)]) / sum;
      if (cum >= static_cast<double>(params.top_p)) {
        cut = i + 1;
        break;
      }
    }
    keep = cut;
    sum = 0.0;
    for (int32_t i = 0; i < keep; ++i)
      sum += static_cast<double>(kept[static_cast<std::size_t>(i)]);
  }
  probs.assign(static_cast<std::size_t>(n), 0.0f);
  for (int32_t i = 0; i < keep; ++i)
    probs[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] =
        static_cast<float>(static_cast<double>(kept[static_cast<std::size_t>(i)]) / sum);
}

LookupDrafter::LookupDrafter(int max_ngram) : max_ngram_(max_ngram) {
  FERRY_EXPECT(max_ngram >= 1, "prompt lookup needs n-grams of at least 1 token, not {}",
               max_ngram);
}

void LookupDrafter::propose(std::span<const int32_t> context, int k, const SamplingParams&,
                            std::mt19937_64&, Draft& out) {
  out.tokens.clear();
  out.probs.clear();
  const auto n_ctx = static_cast<int64_t>(context.size());
  for (int64_t n = std::min<int64_t>(max_ngram_, n_ctx - 1); n >= 1; --n) {
    const auto tail = context.subspan(static_cast<std::size_t>(n_ctx - n));
    // The latest earlier occurrence: recent text predicts best.
    for (int64_t s = n_ctx - n - 1; s >= 0; --s) {
      if (!std::equal(tail.begin(), tail.end(), context.begin() + s)) continue;
      // What followed it, continuing into the proposal itself once the context runs out, so a
      // repeating stretch is proposed for all k tokens.
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = s + n + j;
        out.tokens.push_back(i < n_ctx ? context[static_cast<std::size_t>(i)]
                                       : out.tokens[static_cast<std::size_t>(i - n_ctx)]);
      }
      return;
    }
  }
}

ModelDrafter::ModelDrafter(ForwardPass& model, std::string name, int seq, uint64_t resident_bytes)
    : model_(model), name_(std::move(name)), seq_(seq), resident_bytes_(resident_bytes) {
  FERRY_EXPECT(seq >= 0 && seq < model.max_seqs(),
               "draft sequence slot {} does not exist; the draft model has {} slots", seq,
               model.max_seqs());
  model_.reset(seq_);
}

void ModelDrafter::propose(std::span<const int32_t> context, int k, const SamplingParams& sampling,
                           std::mt19937_64& rng, Draft& out) {
  out.tokens.clear();
  out.probs.clear();
  const int64_t vocab = model_.config().vocab_size;
  out.vocab = vocab;
  const auto n_ctx = static_cast<int64_t>(context.size());
  // The context and k - 1 drafts go through the draft model's cache; past its context it sits
  // the rest of the run out (the target decodes alone).
  k = static_cast<int>(std::min<int64_t>(k, model_.context() - n_ctx + 1));
  if (k <= 0 || n_ctx == 0) return;
  // Keep what the cache holds that still agrees with the context; re-feed at least the last
  // token, whose logits are the first draft's.
  const auto mismatch =
      std::mismatch(cached_.begin(), cached_.end(), context.begin(), context.end());
  const auto common = std::min<int64_t>(mismatch.first - cached_.begin(), n_ctx - 1);
  const auto feed = context.subspan(static_cast<std::size_t>(common));
  // A target token the draft vocabulary lacks (a target with a larger padded vocabulary): no
  // drafts from here on.
  if (std::any_of(feed.begin(), feed.end(), [&](int32_t t) { return t >= vocab; })) return;
  model_.truncate(seq_, common);
  cached_.resize(static_cast<std::size_t>(common));
  SeqTokens step{seq_, feed};
  const std::vector<float>* logits = &model_.forward({&step, 1}, LogitsFor::last);
  cached_.insert(cached_.end(), feed.begin(), feed.end());
  std::vector<float> probs;
  for (int i = 0; i < k; ++i) {
    const int32_t t = pick({logits->data(), static_cast<std::size_t>(vocab)}, sampling, rng, probs);
    out.tokens.push_back(t);
    if (sampling.temperature > 0.0f) out.probs.insert(out.probs.end(), probs.begin(), probs.end());
    if (i + 1 == k) break;
    step = SeqTokens{seq_, {&out.tokens.back(), 1}};
    logits = &model_.forward({&step, 1}, LogitsFor::last);
    cached_.push_back(t);
  }
}

BatchModelDrafter::BatchModelDrafter(ForwardPass& model, std::string name, uint64_t resident_bytes)
    : model_(model), name_(std::move(name)), resident_bytes_(resident_bytes),
      cached_(static_cast<std::size_t>(model.max_seqs())) {
  for (int s = 0; s < model.max_seqs(); ++s) model_.reset(s);
}

void BatchModelDrafter::propose(std::span<DraftRequest> requests) {
  // ModelDrafter::propose for every request, in lock step: one pass feeds each sequence what
  // its cache lacks, then one pass per further draft feeds each the draft it just drew.
  const int64_t vocab = model_.config().vocab_size;
  struct Active {
    DraftRequest* r;
    int k;
  };
  std::vector<Active> active;
  std::vector<SeqTokens> batch;
  for (DraftRequest& r : requests) {
    r.out->tokens.clear();
    r.out->probs.clear();
    r.out->vocab = vocab;
    FERRY_EXPECT(r.slot >= 0 && r.slot < model_.max_seqs(),
                 "draft sequence slot {} does not exist; the draft model has {} slots", r.slot,
                 model_.max_seqs());
    const auto n_ctx = static_cast<int64_t>(r.context.size());
    const int k = static_cast<int>(std::min<int64_t>(r.k, model_.context() - n_ctx + 1));
    if (k <= 0 || n_ctx == 0) continue;
    std::vector<int32_t>& cached = cached_[static_cast<std::size_t>(r.slot)];
    const auto mismatch =
        std::mismatch(cached.begin(), cached.end(), r.context.begin(), r.context.end());
    const auto common = std::min<int64_t>(mismatch.first - cached.begin(), n_ctx - 1);
    const auto feed = r.context.subspan(static_cast<std::size_t>(common));
    if (std::any_of(feed.begin(), feed.end(), [&](int32_t t) { return t >= vocab; })) continue;
    model_.truncate(r.slot, common);
    cached.resize(static_cast<std::size_t>(common));
    cached.insert(cached.end(), feed.begin(), feed.end());
    active.push_back({&r, k});
    batch.push_back({r.slot, feed});
  }
  std::vector<float> probs;
  for (int i = 0; !active.empty(); ++i) {
    const std::vector<float>* pass = nullptr;
    try {
      pass = &model_.forward(batch, LogitsFor::last);
    } catch (...) {
      // The caches may hold part of the pass: those slots start over next round.
      for (const Active& a : active) {
        cached_[static_cast<std::size_t>(a.r->slot)].clear();
        model_.reset(a.r->slot);
      }
      throw;
    }
    const std::vector<float>& logits = *pass;
    std::vector<Active> next;
    batch.clear();
    for (std::size_t a = 0; a < active.size(); ++a) {
      DraftRequest& r = *active[a].r;
      const std::span<const float> row{logits.data() + a * static_cast<std::size_t>(vocab),
                                       static_cast<std::size_t>(vocab)};
      const int32_t t = pick(row, *r.sampling, *r.rng, probs);
      r.out->tokens.push_back(t);
      if (r.sampling->temperature > 0.0f)
        r.out->probs.insert(r.out->probs.end(), probs.begin(), probs.end());
      if (i + 1 == active[a].k) continue;
      next.push_back(active[a]);
      batch.push_back({r.slot, {&r.out->tokens.back(), 1}});
      cached_[static_cast<std::size_t>(r.slot)].push_back(t);
    }
    active.swap(next);
  }
}

void SpeculativeOptions::validate() const {
  FERRY_EXPECT(k >= 1 && k <= kMaxK,
               "--draft-k {} is out of range; use 1 to {} drafts per pass (4 is a good start)", k,
               kMaxK);
}

SpeculativeSequence::SpeculativeSequence(Drafter& drafter, const SamplingParams& sampling, int k,
                                         int64_t vocab)
    : drafter_(drafter), sampling_(sampling), k_(k), vocab_(static_cast<std::size_t>(vocab)),
      rng_(sampling.seed) {
  SpeculativeOptions{k}.validate();
}

int32_t SpeculativeSequence::first(std::span<const float> logits) {
  return pick(logits.first(vocab_), sampling_, rng_, p_);
}

DraftRequest SpeculativeSequence::begin_round(std::span<const int32_t> context, int64_t remaining,
                                              int64_t max_drafts) {
  // Drafts past the tokens still wanted would be thrown away: a round emits its accepted
  // drafts and one token of the target's.
  DraftRequest r;
  r.context = context;
  r.k = static_cast<int>(std::max<int64_t>(
      0, std::min({static_cast<int64_t>(k_), remaining - 1, max_drafts})));
  r.sampling = &sampling_;
  r.rng = &rng_;
  r.out = &draft_;
  draft_.tokens.clear();
  draft_.probs.clear();
  return r;
}

std::span<const int32_t> SpeculativeSequence::end_round(int k) {
  // Only ids the target knows, at most k.
  std::size_t n = std::min(draft_.tokens.size(), static_cast<std::size_t>(std::max(k, 0)));
  for (std::size_t i = 0; i < n; ++i) {
    if (draft_.tokens[i] < 0 || static_cast<std::size_t>(draft_.tokens[i]) >= vocab_) {
      n = i;
      break;
    }
  }
  FERRY_EXPECT(
      draft_.probs.empty() || draft_.probs.size() >= n * static_cast<std::size_t>(draft_.vocab),
      "drafter '{}' returned {} probabilities for {} drafts of a {}-token vocabulary",
      drafter_.name(), draft_.probs.size(), n, draft_.vocab);
  n_draft_ = n;
  return {draft_.tokens.data(), n};
}

std::span<const int32_t> SpeculativeSequence::propose(std::span<const int32_t> context,
                                                      int64_t remaining, int64_t max_drafts) {
  const auto t0 = std::chrono::steady_clock::now();
  const DraftRequest r = begin_round(context, remaining, max_drafts);
  if (r.k > 0) drafter_.propose(context, r.k, sampling_, rng_, draft_);
  const std::span<const int32_t> drafts = end_round(r.k);
  stats_.draft_s += seconds_since(t0);
  return drafts;
}

int64_t SpeculativeSequence::verify(std::span<const float> logits,
                                    const std::function<bool(int32_t)>& emit) {
  const std::size_t vocab = vocab_;
  const std::size_t n_draft = n_draft_;
  FERRY_EXPECT(logits.size() >= (n_draft + 1) * vocab,
               "verifying {} drafts needs {} rows of logits, got {} values", n_draft, n_draft + 1,
               logits.size());
  const bool sampled_drafts = !draft_.probs.empty();
  ++stats_.rounds;
  stats_.drafted += static_cast<int64_t>(n_draft);
  int64_t emitted = 0;
  for (std::size_t i = 0; i <= n_draft; ++i) {
    const std::span<const float> row = logits.subspan(i * vocab, vocab);
    const bool is_draft = i < n_draft;
    int32_t token = 0;
    bool accepted = false;
    if (sampling_.temperature == 0.0f) {
      token = argmax(row);
      accepted = is_draft && token == draft_.tokens[i];
    } else {
      sampling_distribution(row, sampling_, p_);
      if (!is_draft) {
        token = draw(p_, 1.0, rng_);
      } else {
        // Accept x with probability min(1, p(x) / q(x)); else draw from max(0, p − q),
        // normalized. Together: exactly p.
        const int32_t x = draft_.tokens[i];
        const auto q_of = [&](std::size_t t) -> float {
          if (!sampled_drafts) return t == static_cast<std::size_t>(x) ? 1.0f : 0.0f;
          return t < static_cast<std::size_t>(draft_.vocab)
                     ? draft_.probs[i * static_cast<std::size_t>(draft_.vocab) + t]
                     : 0.0f;
        };
        const double qx = q_of(static_cast<std::size_t>(x));
        const double px = p_[static_cast<std::size_t>(x)];
        if (qx > 0.0 && uniform(rng_) * qx < px) {
          token = x;
          accepted = true;
        } else {
          residual_.resize(vocab);
          double total = 0.0;
          for (std::size_t t = 0; t < vocab; ++t) {
            residual_[t] = std::max(0.0f, p_[t] - q_of(t));
            total += static_cast<double>(residual_[t]);
          }
          // p ≤ q everywhere only up to rounding: then p itself.
          token = total > 0.0 ? draw(residual_, total, rng_) : draw(p_, 1.0, rng_);
        }
      }
    }
    if (accepted) ++stats_.accepted;
    if (is_draft && !accepted) ++stats_.rejected;
    ++emitted;
    const bool more = emit(token);
    if (!accepted || !more) break;
  }
  n_draft_ = 0;
  return emitted;
}

std::vector<int32_t> generate_speculative(ForwardPass& target, Drafter& drafter, int seq,
                                          std::span<const int32_t> prompt,
                                          const GenerateOptions& options,
                                          const SpeculativeOptions& speculative,
                                          const TokenCallback& on_token, SpeculativeStats* stats) {
  speculative.validate();
  // As in generate(): the last token is never fed back. Drafts never reach past it either (a
  // round drafts at most the tokens still wanted, less the target's own one).
  check_generate_request(prompt, options, target.context());

  target.reset(seq);
  std::vector<int32_t> out;
  if (options.max_new_tokens == 0) {
    if (stats) *stats = SpeculativeStats{};
    return out;
  }
  out.reserve(static_cast<std::size_t>(options.max_new_tokens));
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  const int64_t vocab = target.config().vocab_size;
  SpeculativeSequence sp(drafter, options.sampling, speculative.k, vocab);

  // Appends a token; false when decoding stops after it.
  bool stopped = false;
  const auto emit = [&](int32_t token) {
    out.push_back(token);
    context.push_back(token);
    const bool more = on_token ? on_token(token) : true;
    stopped =
        !more ||
        std::find(options.eos_ids.begin(), options.eos_ids.end(), token) != options.eos_ids.end() ||
        static_cast<int64_t>(out.size()) >= options.max_new_tokens;
    return !stopped;
  };

  auto t0 = std::chrono::steady_clock::now();
  SeqTokens step{seq, prompt};
  const std::vector<float>* logits = &target.forward({&step, 1}, LogitsFor::last);
  emit(sp.first(*logits));
  const double prompt_s = seconds_since(t0);

  double verify_s = 0;
  std::vector<int32_t> batch;
  while (!stopped) {
    const int64_t remaining = options.max_new_tokens - static_cast<int64_t>(out.size());
    const std::span<const int32_t> drafts = sp.propose(context, remaining, speculative.k);
    // One target pass: the last emitted token (not yet in the cache) and the drafts.
    t0 = std::chrono::steady_clock::now();
    const int64_t past = target.length(seq);
    batch.assign(1, context.back());
    batch.insert(batch.end(), drafts.begin(), drafts.end());
    step = SeqTokens{seq, batch};
    logits = &target.forward({&step, 1}, LogitsFor::all);
    const int64_t emitted = sp.verify(*logits, emit);
    // Keep the fed token and the accepted drafts that were emitted; the last emitted token is
    // fed next round, as in plain decoding.
    target.truncate(seq, past + emitted);
    verify_s += seconds_since(t0);
  }
  if (stats) {
    *stats = sp.stats();
    stats->prompt_s = prompt_s;
    stats->verify_s = verify_s;
    stats->new_tokens = static_cast<int64_t>(out.size());
  }
  return out;
}

void check_same_vocabulary(const text::Tokenizer& target, const text::Tokenizer& draft,
                           const std::string& draft_name) {
  FERRY_EXPECT(target.vocab_size() == draft.vocab_size(),
               "the draft model {} has a vocabulary of {} tokens but the target's has {}; a draft "
               "model must share the target's tokenizer (use --draft lookup or self-int4 instead)",
               draft_name, draft.vocab_size(), target.vocab_size());
  for (int32_t id = 0; id < target.vocab_size(); ++id) {
    const std::string a = target.token_bytes(id);
    const std::string b = draft.token_bytes(id);
    FERRY_EXPECT(a == b,
                 "the draft model {} has a different tokenizer: token {} is {:?} for the target "
                 "but {:?} for the draft; a draft model must share the target's tokenizer (use "
                 "--draft lookup or self-int4 instead)",
                 draft_name, id, a, b);
  }
}

}  // namespace ferry::engine
