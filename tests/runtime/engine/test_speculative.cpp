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
    pack_engines.push_back(
        std::make_unique<Engine>(*pack_models.back().weights, EngineOptions{}, default_thread_pool()));
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

}  // namespace
}  // namespace ferry::engine
