// Speculative decoding: a cheap drafter proposes the next few tokens and the target model scores
// all of them in one forward pass, so a pass over streamed weights (whose cost is reading them,
// however many positions it scores) can yield several tokens. It is lossless: greedy decoding
// keeps the longest run of drafts that match the target's own argmax plus the target's next
// token, and sampling uses the accept/resample rule of Leviathan et al. (2023) and Chen et al.
// (2023), which leaves the target's distribution exactly as it was.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/sampler.hpp"

namespace ferry::text {
class Tokenizer;
}

namespace ferry::engine {

// A drafter's proposal: tokens, and when they were sampled, the distribution each was drawn from.
struct Draft {
  std::vector<int32_t> tokens;
  // probs[i * vocab + t] = q_i(t), the distribution tokens[i] was drawn from; empty when the
  // drafter is deterministic (q_i is one-hot on tokens[i]).
  std::vector<float> probs;
  int64_t vocab = 0;  // row length of probs
};

// Proposes tokens the target is likely to produce next.
class Drafter {
 public:
  virtual ~Drafter() = default;
  // "lookup", "model gpt-j-6b-int4": for stats lines.
  virtual std::string name() const = 0;
  // Up to k tokens likely to follow `context` (the prompt and every token emitted so far) into
  // out (cleared first). Under greedy decoding (sampling.temperature == 0) they are the
  // drafter's best guesses; with sampling, a drafter may draw each from its own distribution
  // with rng and return that distribution in out.probs. Fewer than k tokens, or none, is fine.
  virtual void propose(std::span<const int32_t> context, int k, const SamplingParams& sampling,
                       std::mt19937_64& rng, Draft& out) = 0;
  // Bytes the drafter keeps resident (weights and cache), for the memory budget.
  virtual uint64_t resident_bytes() const { return 0; }
};

// Prompt lookup (Saxena 2023): finds the latest earlier occurrence of the context's last n
// tokens (n from max_ngram down to 1) and proposes what followed it. No model, no memory.
class LookupDrafter final : public Drafter {
 public:
  explicit LookupDrafter(int max_ngram = 3);
  std::string name() const override { return "lookup"; }
  void propose(std::span<const int32_t> context, int k, const SamplingParams& sampling,
               std::mt19937_64& rng, Draft& out) override;

 private:
  int max_ngram_;
};

// Another model (a smaller one sharing the tokenizer, or a quantized pack of the target) run on
// sequence slot `seq` of its own forward pass. Its cache follows the context: the tokens it
// already holds that still agree with the context are kept, the rest rolled back.
class ModelDrafter final : public Drafter {
 public:
  ModelDrafter(ForwardPass& model, std::string name, int seq = 0, uint64_t resident_bytes = 0);
  std::string name() const override { return name_; }
  void propose(std::span<const int32_t> context, int k, const SamplingParams& sampling,
               std::mt19937_64& rng, Draft& out) override;
  uint64_t resident_bytes() const override { return resident_bytes_; }

 private:
  ForwardPass& model_;
  std::string name_;
  int seq_;
  uint64_t resident_bytes_;
  std::vector<int32_t> cached_;  // the tokens in model_'s cache for seq_, in order
};

// One sequence's part of a drafting round for many sequences (BatchModelDrafter).
struct DraftRequest {
  int slot = 0;                        // the sequence's cache slot in the draft model
  std::span<const int32_t> context;    // as Drafter::propose's
  int k = 0;                           // most drafts
  const SamplingParams* sampling = nullptr;
  std::mt19937_64* rng = nullptr;      // the sequence's own generator
  Draft* out = nullptr;                // cleared, then filled
};

// A draft model drafting for many sequences at once, a cache slot each: each drafting position
// is one pass of the draft model for all of them, not one per sequence. Each sequence's drafts
// and random draws are what ModelDrafter gives it alone on its slot (the draft model's rows do
// not depend on one another either).
class BatchModelDrafter {
 public:
  BatchModelDrafter(ForwardPass& model, std::string name, uint64_t resident_bytes = 0);
  const std::string& name() const { return name_; }
  uint64_t resident_bytes() const { return resident_bytes_; }
  void propose(std::span<DraftRequest> requests);

 private:
  ForwardPass& model_;
  std::string name_;
  uint64_t resident_bytes_;
  std::vector<std::vector<int32_t>> cached_;  // [slot] the tokens in model_'s cache, in order
};

struct SpeculativeOptions {
  int k = 4;  // most drafts per target pass
  static constexpr int kMaxK = 32;
  // Throws InvalidArgument unless k is in [1, kMaxK].
  void validate() const;
};

struct SpeculativeStats {
  int64_t rounds = 0;      // target passes after the prompt's
  int64_t drafted = 0;     // tokens the drafter proposed and the target scored
  int64_t accepted = 0;    // of them, kept
  int64_t rejected = 0;    // turned down: at most one a round (the drafts after it go unjudged)
  int64_t new_tokens = 0;  // tokens emitted (the prompt pass's first one included)
  double prompt_s = 0;     // the prompt pass
  double draft_s = 0;      // in the drafter
  double verify_s = 0;     // in the target's passes after the prompt, and accepting
  // The chance that a draft is kept once the ones before it were: accepted of the drafts judged
  // (a round of k then yields (1 − a^(k+1)) / (1 − a) tokens on average).
  double acceptance() const {
    return accepted + rejected > 0
               ? static_cast<double>(accepted) / static_cast<double>(accepted + rejected)
               : 0;
  }
  // Tokens each target pass after the prompt's yields (1 without speculation).
  double tokens_per_pass() const {
    return rounds > 0 ? static_cast<double>(new_tokens - 1) / static_cast<double>(rounds) : 0;
  }
};

// One sequence's speculation round by round, for a caller that runs the target's passes: one
// sequence alone (generate_speculative) or many in one pass (the scheduler). Every random draw —
// the first token, the drafter's, accepting and resampling — comes from one generator seeded
// with sampling.seed, in the same order wherever it runs, so a seeded sequence gets the same
// tokens from both as long as each round drafts the same tokens.
class SpeculativeSequence {
 public:
  // The drafter must outlive this; k is the most drafts per round (SpeculativeOptions::k).
  SpeculativeSequence(Drafter& drafter, const SamplingParams& sampling, int k, int64_t vocab);

  // The first token, from the prompt pass's row of logits ([vocab]).
  int32_t first(std::span<const float> logits);
  // The next round's drafts for `context` (the prompt and every token emitted): at most k,
  // max_drafts, and remaining − 1 where `remaining` tokens are still wanted (a round emits its
  // accepted drafts and one token of the target's), only ids the target knows. The target then
  // scores context.back() and these in one pass.
  std::span<const int32_t> propose(std::span<const int32_t> context, int64_t remaining,
                                   int64_t max_drafts);
  // propose() in two halves, for a drafter that drafts many sequences at once: the round's k
  // (0: no drafts) with the request to hand it (context, k, sampling, generator, the draft to
  // fill), then the drafts it proposed, checked as propose() checks them.
  DraftRequest begin_round(std::span<const int32_t> context, int64_t remaining, int64_t max_drafts);
  std::span<const int32_t> end_round(int k);
  // The drafter given at construction (the scheduler's per-slot drafter).
  Drafter& drafter() { return drafter_; }
  // Judges the round's rows of logits ([1 + drafts proposed, vocab]: after context.back() and
  // after each draft) and calls emit with each token kept, in order: the accepted drafts and
  // the target's own token after them. Stops early when emit returns false. Returns the number
  // of tokens emitted; the target's cache keeps context.back() and the accepted drafts emitted
  // (truncate it to the length before the pass + that number).
  int64_t verify(std::span<const float> logits, const std::function<bool(int32_t)>& emit);

  // rounds, drafted, accepted, rejected and draft_s; the caller fills the rest.
  SpeculativeStats& stats() { return stats_; }
  const SpeculativeStats& stats() const { return stats_; }

 private:
  Drafter& drafter_;
  SamplingParams sampling_;
  int k_;
  std::size_t vocab_;
  std::mt19937_64 rng_;
  Draft draft_;
  std::size_t n_draft_ = 0;  // drafts proposed for the current round
  std::vector<float> p_;
  std::vector<float> residual_;
  SpeculativeStats stats_;
};

// generate() (generate.hpp) with a drafter: the same tokens under greedy decoding, the same
// distribution with sampling, in fewer target passes. The target's slot `seq` is reset first;
// after the call its cache holds exactly the tokens plain decoding would have written.
std::vector<int32_t> generate_speculative(ForwardPass& target, Drafter& drafter, int seq,
                                          std::span<const int32_t> prompt,
                                          const GenerateOptions& options,
                                          const SpeculativeOptions& speculative,
                                          const TokenCallback& on_token = {},
                                          SpeculativeStats* stats = nullptr);

// The distribution Sampler draws from for these logits (temperature, then top-k, then top-p,
// ties by id), over the whole vocabulary: probs[t] = 0 for filtered ids. Needs temperature > 0.
void sampling_distribution(std::span<const float> logits, const SamplingParams& params,
                           std::vector<float>& probs);

// Throws InvalidArgument unless the two tokenizers have the same vocabulary, naming the first
// id whose token differs (or the sizes), so that a draft model's ids mean the target's tokens.
void check_same_vocabulary(const text::Tokenizer& target, const text::Tokenizer& draft,
                           const std::string& draft_name);

}  // namespace ferry::engine
