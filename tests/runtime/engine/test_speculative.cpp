// Speculative decoding: with every drafter (prompt lookup, the model itself, a drafter that is
// always wrong, int8 and int4 packs of the model), greedy output equals plain greedy decoding
// token for token on every fixture family, for k = 1, 2, 4, 8; rolled-back cache positions are
// as if never written; seeded sampling keeps the target's distribution (chi-square tests with
// stated false-alarm rates); drafters with another vocabulary and bad k are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/engine/convert.hpp"
#include "runtime/engine/drafts.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/engine/speculative.hpp"
#include "runtime/text/tokenizer.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr int64_t kNewTokens = 24;

struct Fixture {
  std::string family;
  fs::path dir;
};

std::vector<Fixture> fixtures() {
  const fs::path d = test::data_dir();
  return {{"gptj", d / "gptj" / "tiny-f32"},
          {"llama3", d / "llama" / "llama3-gqa-f32"},
          {"qwen2", d / "llama" / "qwen2-bias-tied-bf16-sharded"},
          {"mistral", d / "llama" / "mistral-f16"}};
}

// The fixture's first prompt, doubled so that prompt lookup finds matches from the start.
std::vector<int32_t> prompt_of(const fs::path& dir) {
  const json e = json::parse(test::read_file(dir / "expected.json"));
  auto ids = e["prompts"][0]["input_ids"].get<std::vector<int32_t>>();
  const auto copy = ids;
  ids.insert(ids.end(), copy.begin(), copy.end());
  return ids;
}

// A drafter that proposes what the wrapped one does, each token shifted by one: every draft is
// wrong (the wrapped drafter is the target itself).
class WrongDrafter final : public Drafter {
 public:
  WrongDrafter(Drafter& inner, int64_t vocab) : inner_(inner), vocab_(vocab) {}
  std::string name() const override { return "wrong"; }
  void propose(std::span<const int32_t> context, int k, const SamplingParams& sampling,
               std::mt19937_64& rng, Draft& out) override {
    inner_.propose(context, k, sampling, rng, out);
    for (int32_t& t : out.tokens) t = static_cast<int32_t>((t + 1) % vocab_);
  }

 private:
  Drafter& inner_;
  int64_t vocab_;
};

struct Result {
  std::vector<int32_t> tokens;
  SpeculativeStats stats;
};

Result speculate(Engine& target, Drafter& drafter, std::span<const int32_t> prompt,
                 const GenerateOptions& go, int k) {
  Result r;
  SpeculativeOptions so;
  so.k = k;
  r.tokens = generate_speculative(target, drafter, 0, prompt, go, so, {}, &r.stats);
  return r;
}

class SpeculativeGreedy : public ::testing::TestWithParam<Fixture> {};

// Every drafter, k = 1, 2, 4, 8: the tokens of plain greedy decoding.
TEST_P(SpeculativeGreedy, EqualsPlainDecodingForEveryDrafter) {
  const Fixture& f = GetParam();
  LoadedModel m = load_model(f.dir);
  EngineOptions eo;
  eo.max_seqs = 2;  // slot 1: the model drafting for itself
  Engine target(*m.weights, eo, default_thread_pool());
  const auto prompt = prompt_of(f.dir);
  GenerateOptions go;
  go.max_new_tokens = kNewTokens;
  const auto plain = generate(target, 0, prompt, go);
  ASSERT_EQ(static_cast<int64_t>(plain.size()), kNewTokens);

  LookupDrafter lookup;
  ModelDrafter self(target, "self", 1);
  WrongDrafter wrong(self, m.config.vocab_size);
  // Packs of the same model, each on its own engine.
  std::map<std::string, std::unique_ptr<ModelDrafter>> packs;
  std::vector<test::TempDir> dirs(2);
  std::vector<LoadedModel> pack_models;
  std::vector<std::unique_ptr<Engine>> pack_engines;
  pack_models.reserve(2);
  for (const char* quant : {"int8", "int4"}) {
    ConvertOptions co;
    co.format = model::WeightFormat::parse(quant);
    const fs::path out = dirs[pack_engines.size()].path() / "pack";
    convert_model(f.dir, out, co);
    pack_models.push_back(load_model(out));
    pack_engines.push_back(std::make_unique<Engine>(*pack_models.back().weights, EngineOptions{},
                                                    default_thread_pool()));
    packs[quant] = std::make_unique<ModelDrafter>(*pack_engines.back(), quant);
  }

  for (const int k : {1, 2, 4, 8}) {
    SCOPED_TRACE("k = " + std::to_string(k));
    const Result l = speculate(target, lookup, prompt, go, k);
    EXPECT_EQ(l.tokens, plain) << "lookup";
    const Result s = speculate(target, self, prompt, go, k);
    EXPECT_EQ(s.tokens, plain) << "self";
    EXPECT_EQ(s.stats.accepted, s.stats.drafted) << "the model drafting for itself";
    EXPECT_GT(s.stats.drafted, 0);
    const Result w = speculate(target, wrong, prompt, go, k);
    EXPECT_EQ(w.tokens, plain) << "wrong";
    EXPECT_EQ(w.stats.accepted, 0);
    // One draft judged and turned down a round, but in the last (one token left: no drafts).
    EXPECT_EQ(w.stats.rejected, w.stats.rounds - 1);
    EXPECT_EQ(s.stats.rejected, 0);
    EXPECT_GT(w.stats.drafted, 0);
    EXPECT_EQ(w.stats.rounds, kNewTokens - 1) << "one token per pass when every draft is wrong";
    for (auto& [quant, drafter] : packs) {
      const Result q = speculate(target, *drafter, prompt, go, k);
      EXPECT_EQ(q.tokens, plain) << quant;
      std::printf("[ %s ] %-7s k=%d %-6s accepted %3lld of %3lld (%.2f), %.2f tokens/pass\n",
                  f.family.c_str(), "", k, quant.c_str(), static_cast<long long>(q.stats.accepted),
                  static_cast<long long>(q.stats.drafted), q.stats.acceptance(),
                  q.stats.tokens_per_pass());
    }
    std::printf("[ %s ] k=%d lookup accepted %lld of %lld (%.2f), self %.2f tokens/pass\n",
                f.family.c_str(), k, static_cast<long long>(l.stats.accepted),
                static_cast<long long>(l.stats.drafted), l.stats.acceptance(),
                s.stats.tokens_per_pass());
    // The cache holds what plain decoding leaves: prompt + tokens - 1.
    EXPECT_EQ(target.length(0), static_cast<int64_t>(prompt.size() + plain.size()) - 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Families, SpeculativeGreedy, ::testing::ValuesIn(fixtures()),
                         [](const auto& p) { return p.param.family; });

// What lossless greedy speculation rests on: a verification pass's rows of logits are the ones
// decoding one token at a time computes (the same products per row, whatever the row count).
TEST_P(SpeculativeGreedy, VerificationRowsEqualOneTokenSteps) {
  const Fixture& f = GetParam();
  LoadedModel m = load_model(f.dir);
  Engine e(*m.weights, {}, default_thread_pool());
  const auto prompt = prompt_of(f.dir);
  const std::vector<int32_t> next = {3, 9, 4, 1, 5, 9, 2, 6, 5};
  const auto vocab = static_cast<std::size_t>(m.config.vocab_size);
  e.reset(0);
  SeqTokens s{0, prompt};
  e.forward({&s, 1}, LogitsFor::last);
  s = SeqTokens{0, next};
  const std::vector<float> all = e.forward({&s, 1}, LogitsFor::all);
  e.reset(0);
  s = SeqTokens{0, prompt};
  e.forward({&s, 1}, LogitsFor::last);
  float worst = 0;
  for (std::size_t i = 0; i < next.size(); ++i) {
    s = SeqTokens{0, {&next[i], 1}};
    const auto& one = e.forward({&s, 1}, LogitsFor::last);
    for (std::size_t t = 0; t < vocab; ++t)
      worst = std::max(worst, std::fabs(one[t] - all[i * vocab + t]));
  }
  EXPECT_EQ(worst, 0.0f);
}

// Stopping: an end id inside an accepted run, max_new_tokens below, at and above k, and a callback
// that stops early — the same tokens as plain decoding, never more than asked for.
TEST(Speculative, StopsWherePlainDecodingStops) {
  const fs::path dir = test::data_dir() / "gptj" / "tiny-f32";
  LoadedModel m = load_model(dir);
  EngineOptions eo;
  eo.max_seqs = 2;
  Engine target(*m.weights, eo, default_thread_pool());
  ModelDrafter self(target, "self", 1);
  const auto prompt = prompt_of(dir);
  GenerateOptions go;
  go.max_new_tokens = kNewTokens;
  const auto plain = generate(target, 0, prompt, go);
  for (const int k : {1, 3, 8}) {
    SCOPED_TRACE("k = " + std::to_string(k));
    for (const int64_t n :
         {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{8}, int64_t{9}, int64_t{10}}) {
      GenerateOptions g = go;
      g.max_new_tokens = n;
      const auto want = generate(target, 0, prompt, g);
      EXPECT_EQ(speculate(target, self, prompt, g, k).tokens, want) << n << " new tokens";
    }
    // An end id that the model emits at index 5 (its first occurrence): the run stops there,
    // inside a run of accepted drafts.
    GenerateOptions g = go;
    g.eos_ids = {plain[5]};
    const auto want = generate(target, 0, prompt, g);
    ASSERT_LE(want.size(), 6u);
    EXPECT_EQ(speculate(target, self, prompt, g, k).tokens, want);
    // A callback that stops after 4 tokens sees exactly 4.
    std::vector<int32_t> seen;
    SpeculativeOptions so;
    so.k = k;
    const auto got = generate_speculative(target, self, 0, prompt, go, so, [&](int32_t t) {
      seen.push_back(t);
      return seen.size() < 4;
    });
    EXPECT_EQ(got, std::vector<int32_t>(plain.begin(), plain.begin() + 4));
    EXPECT_EQ(seen, got);
    EXPECT_EQ(target.length(0), static_cast<int64_t>(prompt.size()) + 3);
  }
}

// Rolled-back positions leave no trace: after scoring drafts and truncating, the next logits are
// bit-equal whatever the drafts were, and equal to a cache that never held them.
TEST_P(SpeculativeGreedy, RollbackLeavesTheCacheAsIfNeverWritten) {
  const Fixture& f = GetParam();
  LoadedModel m = load_model(f.dir);
  Engine e(*m.weights, {}, default_thread_pool());
  const auto prompt = prompt_of(f.dir);
  const auto n = static_cast<int64_t>(prompt.size());
  const int32_t a = 3;
  const int32_t x = 7;
  const auto after = [&](std::vector<int32_t> pass, int64_t keep) {
    e.reset(0);
    SeqTokens s{0, prompt};
    e.forward({&s, 1}, LogitsFor::last);
    s = SeqTokens{0, pass};
    e.forward({&s, 1}, LogitsFor::all);
    e.truncate(0, n + keep);
    s = SeqTokens{0, {&x, 1}};
    return e.forward({&s, 1}, LogitsFor::last);
  };
  const auto one = after({a, 11, 12, 13}, 1);
  const auto other = after({a, 21, 22, 23}, 1);
  EXPECT_EQ(one, other) << "rejected drafts changed later logits";
  EXPECT_EQ(e.length(0), n + 2);
  // Rolled back past the fed token too: as if only the prompt had been run.
  const auto none = after({a, 11, 12}, 0);
  e.reset(0);
  SeqTokens s{0, prompt};
  e.forward({&s, 1}, LogitsFor::last);
  s = SeqTokens{0, {&x, 1}};
  EXPECT_EQ(e.forward({&s, 1}, LogitsFor::last), none);
  EXPECT_THROW(e.truncate(0, n + 2), InvalidArgument);
}

// A model with known next-token distributions: logits depend on the previous token and the
// position only, so exact sequence probabilities can be enumerated.
class FakeModel final : public ForwardPass {
 public:
  FakeModel(int64_t vocab, uint64_t salt) : salt_(salt) {
    config_.vocab_size = vocab;
    lengths_.assign(2, 0);
    history_.resize(2);
  }
  static float logit(uint64_t salt, int32_t prev, int64_t pos, int32_t t) {
    uint64_t h = salt * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(prev) * 1000003u +
                 static_cast<uint64_t>(pos) * 7919u + static_cast<uint64_t>(t) * 104729u;
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 29;
    return static_cast<float>(h % 1000) / 500.0f - 1.0f;  // [-1, 1)
  }
  const model::ModelConfig& config() const override { return config_; }
  int64_t context() const override { return 64; }
  int max_seqs() const override { return 2; }
  int64_t length(int seq) const override { return lengths_[static_cast<std::size_t>(seq)]; }
  KvUsage kv_usage() const override { return {}; }
  void reset(int seq) override { truncate(seq, 0); }
  void truncate(int seq, int64_t n) override {
    lengths_[static_cast<std::size_t>(seq)] = n;
    history_[static_cast<std::size_t>(seq)].resize(static_cast<std::size_t>(n));
  }
  const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which) override {
    logits_.clear();
    for (const SeqTokens& s : batch) {
      auto& h = history_[static_cast<std::size_t>(s.seq)];
      for (std::size_t i = 0; i < s.tokens.size(); ++i) {
        h.push_back(s.tokens[i]);
        if (which == LogitsFor::last && i + 1 < s.tokens.size()) continue;
        const auto pos = static_cast<int64_t>(h.size());
        for (int32_t t = 0; t < config_.vocab_size; ++t)
          logits_.push_back(logit(salt_, h.back(), pos, t));
      }
      lengths_[static_cast<std::size_t>(s.seq)] = static_cast<int64_t>(h.size());
    }
    return logits_;
  }

 private:
  model::ModelConfig config_;
  uint64_t salt_;
  std::vector<int64_t> lengths_;
  std::vector<std::vector<int32_t>> history_;
  std::vector<float> logits_;
};

// The upper 1 - alpha point of chi-square with df degrees of freedom (Wilson–Hilferty).
double chi2_critical(int df, double z_alpha) {
  const double d = df;
  const double a = 2.0 / (9.0 * d);
  return d * std::pow(1.0 - a + z_alpha * std::sqrt(a), 3.0);
}
constexpr double kZ1e4 = 3.719;  // z of a one-sided false-alarm rate of 1e-4

// Proposes the same fixed tokens whatever the context (q one-hot): often wrong, sometimes right.
class FixedDrafter final : public Drafter {
 public:
  std::string name() const override { return "fixed"; }
  void propose(std::span<const int32_t>, int k, const SamplingParams&, std::mt19937_64&,
               Draft& out) override {
    out.tokens.clear();
    out.probs.clear();
    for (int i = 0; i < k; ++i) out.tokens.push_back(i % 3);
  }
};

// Seeded sampling with speculation draws the first three tokens from the target's exact joint
// distribution: a chi-square test over all vocab³ sequences, 20000 seeds, with a false-alarm rate
// of 1e-4 for a correct implementation (the seeds are fixed, so the test itself is repeatable).
TEST(Speculative, SamplingKeepsTheTargetDistribution) {
  constexpr int64_t kVocab = 5;
  constexpr int kSeeds = 20000;
  const std::vector<int32_t> prompt = {1, 2};
  struct Case {
    std::string name;
    SamplingParams sampling;
  };
  std::vector<Case> cases(2);
  cases[0].name = "temperature 1";
  cases[0].sampling.temperature = 1.0f;
  cases[1].name = "temperature 0.7, top-k 4, top-p 0.9";
  cases[1].sampling.temperature = 0.7f;
  cases[1].sampling.top_k = 4;
  cases[1].sampling.top_p = 0.9f;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    FakeModel target(kVocab, 1);
    FakeModel draft_model(kVocab, 2);  // another distribution q: a sampling drafter
    ModelDrafter sampled(draft_model, "other");
    FixedDrafter fixed;
    // The exact joint distribution of the first three tokens.
    std::vector<double> expected(kVocab * kVocab * kVocab, 0.0);
    std::vector<float> p0, p1, p2, row(kVocab);
    const auto dist = [&](int32_t prev, int64_t pos, std::vector<float>& out) {
      for (int32_t t = 0; t < kVocab; ++t)
        row[static_cast<std::size_t>(t)] = FakeModel::logit(1, prev, pos, t);
      sampling_distribution(row, c.sampling, out);
    };
    dist(prompt.back(), 2, p0);
    for (int32_t a = 0; a < kVocab; ++a) {
      dist(a, 3, p1);
      for (int32_t b = 0; b < kVocab; ++b) {
        dist(b, 4, p2);
        for (int32_t d = 0; d < kVocab; ++d)
          expected[static_cast<std::size_t>((a * kVocab + b) * kVocab + d)] =
              static_cast<double>(p0[static_cast<std::size_t>(a)]) *
              p1[static_cast<std::size_t>(b)] * p2[static_cast<std::size_t>(d)];
      }
    }
    for (Drafter* drafter : std::vector<Drafter*>{&sampled, &fixed}) {
      SCOPED_TRACE(drafter->name());
      for (const int k : {1, 2}) {
        std::vector<int64_t> counts(expected.size(), 0);
        SpeculativeStats total;
        for (int s = 0; s < kSeeds; ++s) {
          GenerateOptions go;
          go.max_new_tokens = 3;
          go.sampling = c.sampling;
          go.sampling.seed = static_cast<uint64_t>(s) + 1000u * static_cast<uint64_t>(k);
          SpeculativeOptions so;
          so.k = k;
          SpeculativeStats st;
          const auto t = generate_speculative(target, *drafter, 0, prompt, go, so, {}, &st);
          ASSERT_EQ(t.size(), 3u);
          ++counts[static_cast<std::size_t>((t[0] * kVocab + t[1]) * kVocab + t[2])];
          total.drafted += st.drafted;
          total.accepted += st.accepted;
        }
        double chi2 = 0;
        int cells = 0;
        for (std::size_t i = 0; i < expected.size(); ++i) {
          const double e = expected[i] * kSeeds;
          if (e == 0.0) {
            EXPECT_EQ(counts[i], 0) << "a sequence the target cannot produce, sequence " << i;
            continue;
          }
          chi2 += (static_cast<double>(counts[i]) - e) * (static_cast<double>(counts[i]) - e) / e;
          ++cells;
        }
        EXPECT_LT(chi2, chi2_critical(cells - 1, kZ1e4))
            << "k = " << k << ": chi-square over " << cells << " sequences";
        EXPECT_GT(total.accepted, 0);
        EXPECT_LT(total.accepted, total.drafted);
      }
    }
  }
}

// sampling_distribution is what Sampler draws from (chi-square, false-alarm rate 1e-4).
TEST(Speculative, SamplingDistributionIsTheSamplers) {
  const std::vector<float> logits = {0.5f, 2.0f, 2.0f, -1.0f, 1.0f, 0.0f, 1.5f, -3.0f};
  SamplingParams sp;
  sp.temperature = 0.8f;
  sp.top_k = 6;
  sp.top_p = 0.95f;
  sp.seed = 7;
  std::vector<float> probs;
  sampling_distribution(logits, sp, probs);
  double sum = 0;
  for (const float q : probs) sum += q;
  EXPECT_NEAR(sum, 1.0, 1e-6);
  EXPECT_EQ(probs[7], 0.0f) << "below top-k";
  Sampler sampler(sp);
  constexpr int kDraws = 50000;
  std::vector<int64_t> counts(logits.size(), 0);
  for (int i = 0; i < kDraws; ++i) ++counts[static_cast<std::size_t>(sampler.sample(logits))];
  double chi2 = 0;
  int cells = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    const double e = probs[i] * kDraws;
    if (e == 0.0) {
      EXPECT_EQ(counts[i], 0) << "token " << i;
      continue;
    }
    chi2 += (static_cast<double>(counts[i]) - e) * (static_cast<double>(counts[i]) - e) / e;
    ++cells;
  }
  EXPECT_LT(chi2, chi2_critical(cells - 1, kZ1e4));
}

TEST(Speculative, RefusesKOutOfRange) {
  FakeModel target(5, 1);
  LookupDrafter lookup;
  const std::vector<int32_t> prompt = {1, 2};
  for (const int k : {0, -1, SpeculativeOptions::kMaxK + 1}) {
    SpeculativeOptions so;
    so.k = k;
    try {
      generate_speculative(target, lookup, 0, prompt, {}, so);
      ADD_FAILURE() << "k = " << k << " was accepted";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("--draft-k " + std::to_string(k) + " is out of range"),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(Speculative, RefusesADraftVocabularyThatDiffers) {
  // A byte-level vocabulary: GPT-2's 256 byte tokens (bytes_to_unicode), then `extra`.
  const auto tok = [](const std::vector<std::string>& extra, const char* merges) {
    json vocab = json::object();
    int32_t shifted = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int32_t cp = printable ? b : shifted++;
      std::string u;
      if (cp < 0x80) {
        u += static_cast<char>(cp);
      } else {
        u += static_cast<char>(0xC0 | (cp >> 6));
        u += static_cast<char>(0x80 | (cp & 0x3F));
      }
      vocab[u] = b;
    }
    for (const std::string& e : extra) vocab[e] = static_cast<int32_t>(vocab.size());
    return text::Tokenizer::from_strings(vocab.dump(), merges);
  };
  const auto target = tok({"ab", "cd"}, "#version: 0.2\na b\nc d\n");
  const auto same = tok({"ab", "cd"}, "#version: 0.2\na b\nc d\n");
  const auto other = tok({"ab", "dc"}, "#version: 0.2\na b\nd c\n");
  const auto smaller = tok({"ab"}, "#version: 0.2\na b\n");
  EXPECT_NO_THROW(check_same_vocabulary(target, same, "d"));
  try {
    check_same_vocabulary(target, other, "DRAFT");
    ADD_FAILURE() << "a differing token was accepted";
  } catch (const InvalidArgument& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("token 257 is \"cd\" for the target but \"dc\" for the draft"),
              std::string::npos)
        << msg;
    EXPECT_NE(msg.find("DRAFT"), std::string::npos) << msg;
  }
  try {
    check_same_vocabulary(target, smaller, "DRAFT");
    ADD_FAILURE() << "a smaller vocabulary was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary of 257 tokens but the target's has 258"),
              std::string::npos)
        << e.what();
  }
}

// Prompt lookup proposes what followed the latest earlier occurrence of the longest suffix it
// finds, continuing through its own proposal.
TEST(Speculative, LookupProposesTheContinuation) {
  LookupDrafter lookup;
  std::mt19937_64 rng;
  Draft d;
  const std::vector<int32_t> ctx = {5, 1, 2, 3, 9, 1, 2, 3, 4, 7, 1, 2, 3};
  lookup.propose(ctx, 3, {}, rng, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{4, 7, 1}));  // the latest "1 2 3" is followed by 4
  const std::vector<int32_t> loop = {8, 1, 2, 1, 2};
  lookup.propose(loop, 5, {}, rng, d);
  EXPECT_EQ(d.tokens, (std::vector<int32_t>{1, 2, 1, 2, 1}));
  const std::vector<int32_t> none = {1, 2, 3};
  lookup.propose(none, 4, {}, rng, d);
  EXPECT_TRUE(d.tokens.empty());
}

}  // namespace
}  // namespace ferry::engine

namespace ferry::engine {
namespace {

// self-int4 / self-int8: converted once into the cache (never beside the model), found again by
// the next run, a pack per quantization.
TEST(Drafts, SelfDraftIsConvertedOnceIntoTheCache) {
  const fs::path model = test::data_dir() / "gptj" / "tiny-f32";
  const auto model_files = [&] {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(model)) names.push_back(e.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  };
  const auto before = model_files();
  test::TempDir cache;
  int conversions = 0;
  const auto count = [&](const fs::path&) { ++conversions; };
  const fs::path int4 = ensure_self_draft(model, "int4", cache.path(), count);
  EXPECT_EQ(conversions, 1);
  EXPECT_EQ(int4.parent_path(), cache.path());
  EXPECT_TRUE(fs::exists(int4 / "model.ferry"));
  EXPECT_EQ(ensure_self_draft(model, "int4", cache.path(), count), int4);
  EXPECT_EQ(conversions, 1) << "converted a second time";
  const fs::path int8 = ensure_self_draft(model, "int8", cache.path(), count);
  EXPECT_NE(int8, int4);
  EXPECT_EQ(conversions, 2);
  EXPECT_EQ(model_files(), before) << "wrote into the model's folder";
  EXPECT_EQ(read_model_config(int4).vocab_size, read_model_config(model).vocab_size);
  try {
    ensure_self_draft(model, "int4", std::nullopt);
    ADD_FAILURE() << "no cache directory was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("--quant int4` and give --draft DIR"), std::string::npos)
        << e.what();
  }
}

TEST(Drafts, ParsesWhatDraftNames) {
  EXPECT_EQ(DraftSpec::parse("lookup").kind, DraftSpec::Kind::lookup);
  const DraftSpec s = DraftSpec::parse("self-int8");
  EXPECT_EQ(s.kind, DraftSpec::Kind::self);
  EXPECT_EQ(s.quant, "int8");
  const fs::path dir = test::data_dir() / "gptj" / "tiny-f32";
  EXPECT_EQ(DraftSpec::parse(dir.string()).kind, DraftSpec::Kind::model);
  try {
    DraftSpec::parse("self-int3");
    ADD_FAILURE() << "self-int3 was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("--draft 'self-int3' is neither lookup, self-int4, "
                                         "self-int8 nor an existing model path"),
              std::string::npos)
        << e.what();
  }
}

// The trade k weighs: disk-bound passes gain from drafts that are accepted; a drafter that is
// never right, or one slower than the target, is not used (k = 0).
TEST(Drafts, PredictsSecondsPerTokenForK) {
  SpeculationCosts c;
  c.disk_s = 1.0;  // streamed: a pass costs its read, however many rows
  c.compute_s = 0.05;
  c.draft_s_per_token = 0.01;
  c.acceptance = 0.6;
  const auto p = predict_speculation(c, 8);
  ASSERT_EQ(p.size(), 9u);
  EXPECT_DOUBLE_EQ(p[0].s_per_token, 1.0);
  EXPECT_DOUBLE_EQ(p[0].tokens_per_pass, 1.0);
  EXPECT_NEAR(p[2].tokens_per_pass, 1 + 0.6 + 0.36, 1e-12);
  EXPECT_NEAR(p[2].s_per_token, (1.0 + 2 * 0.01) / 1.96, 1e-12);
  EXPECT_GT(best_speculation(p).k, 2);
  c.acceptance = 0.0;
  EXPECT_EQ(best_speculation(predict_speculation(c, 8)).k, 0);
  c.acceptance = 0.6;
  c.draft_s_per_token = 2.0;  // a draft slower than the target
  EXPECT_EQ(best_speculation(predict_speculation(c, 8)).k, 0);
  // Compute-bound (resident): extra rows cost compute, so a modest k wins at most.
  SpeculationCosts r;
  r.compute_s = 1.0;
  r.acceptance = 0.3;
  EXPECT_LE(best_speculation(predict_speculation(r, 8)).k, 1);
}

// The acceptance rate starts as the default guess and is learned per (target, drafter).
TEST(Drafts, LearnsTheAcceptanceRatePerTargetAndDrafter) {
  test::TempDir cache;
  ::setenv("FERRY_CACHE_DIR", cache.path().c_str(), 1);
  const fs::path target = test::data_dir() / "gptj" / "tiny-f32";
  const DraftSpec int4 = DraftSpec::parse("self-int4");
  const DraftSpec lookup = DraftSpec::parse("lookup");
  EXPECT_DOUBLE_EQ(planned_acceptance(target, int4).rate, 0.6);
  EXPECT_EQ(planned_acceptance(target, int4).source, "default guess for self-int4");
  EXPECT_DOUBLE_EQ(planned_acceptance(target, lookup).rate, 0.3);
  learn_acceptance(target, int4, 0.42);
  EXPECT_DOUBLE_EQ(planned_acceptance(target, int4).rate, 0.42);
  EXPECT_DOUBLE_EQ(planned_acceptance(target, lookup).rate, 0.3) << "another drafter's rate";
  ::unsetenv("FERRY_CACHE_DIR");
}

}  // namespace
}  // namespace ferry::engine
