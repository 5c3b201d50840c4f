// ferry run --draft end to end: the same tokens as without it for every drafter kind, the
// acceptance line on stderr, and the refusals a user can hit (bad --draft, --draft-k out of
// range, a draft model with another vocabulary); run --prompts with drafts.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
using Result = test::CommandResult;

std::string last_line(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

class DraftCli : public ::testing::Test {
 protected:
  Result ferry(const std::vector<std::string>& args) {
    // Self-draft packs go into a private cache, never the user's.
    return test::run_command(FERRY_BIN, args, "FERRY_CACHE_DIR=" + cache_.path().string() + " ");
  }
  test::TempDir cache_;
};

TEST_F(DraftCli, EveryDrafterGivesThePlainTokens) {
  for (const char* fixture : {"gptj/tiny-f32", "llama/llama3-gqa-f32"}) {
    SCOPED_TRACE(fixture);
    const std::string dir = (test::data_dir() / fixture).string();
    const std::vector<std::string> base = {"run",           "-m", dir,  "--ids",
                                           "5 6 7 8 5 6 7", "-n", "20", "--print-ids"};
    Result plain = ferry([&] {
      auto a = base;
      a.push_back("-q");
      return a;
    }());
    ASSERT_EQ(plain.rc, 0) << plain.err;
    const json want = json::parse(last_line(plain.out));
    ASSERT_EQ(want.size(), 20u);
    for (const std::string draft : {"lookup", "self-int8", "self-int4", dir.c_str()}) {
      for (const char* k : {"1", "4"}) {
        SCOPED_TRACE(draft + " k " + k);
        auto a = base;
        a.insert(a.end(), {"--draft", draft, "--draft-k", k});
        const Result r = ferry(a);
        ASSERT_EQ(r.rc, 0) << r.err;
        EXPECT_EQ(json::parse(last_line(r.out)), want);
        EXPECT_NE(r.err.find("ferry: speculative ("), std::string::npos) << r.err;
        EXPECT_NE(r.err.find("drafts judged were accepted"), std::string::npos) << r.err;
      }
    }
    // The self packs live in the cache, converted once.
    int packs = 0;
    for (const auto& e : fs::directory_iterator(cache_.path() / "drafts"))
      packs += e.is_directory() && e.path().filename().string()[0] != '.';
    EXPECT_EQ(packs, 2 * (fixture == std::string("gptj/tiny-f32") ? 1 : 2));
  }
}

TEST_F(DraftCli, RefusesWhatCannotWork) {
  const std::string tiny = (test::data_dir() / "gptj" / "tiny-f32").string();
  const std::string qwen = (test::data_dir() / "llama" / "qwen2-bias-tied-bf16-sharded").string();
  const std::vector<std::string> base = {"run", "-m", tiny, "--ids", "1 2 3", "-n", "4"};
  const auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return ferry(a);
  };
  Result r = with({"--draft", "lookup", "--draft-k", "0"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--draft-k"), std::string::npos) << r.err;
  r = with({"--draft", "lookup", "--draft-k", "33"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--draft-k"), std::string::npos) << r.err;
  r = with({"--draft", "self-int5"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--draft 'self-int5' is neither lookup, self-int4, self-int8 nor an "
                       "existing model path"),
            std::string::npos)
      << r.err;
  r = with({"--draft-k", "2"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("--draft-k needs --draft"), std::string::npos) << r.err;
  // A draft whose vocabulary differs from the target's.
  r = with({"--draft", qwen});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("but the target's has 1000; a draft model must share the target's "
                       "tokenizer"),
            std::string::npos)
      << r.err;
}

// run --prompts --draft: every line's output as without drafts (the sequences verify their
// drafts inside the batch; a draft model drafts on a cache slot per sequence), the speculation
// line on stderr.
TEST_F(DraftCli, PromptsWithDraftsGiveThePlainOutputs) {
  const std::string dir = (test::data_dir() / "gptj" / "tiny-f32").string();
  const test::TempDir tmp;
  const fs::path prompts = tmp.path() / "prompts.jsonl";
  test::write_file(prompts,
                   "{\"ids\": [5, 6, 7, 8, 5, 6, 7]}\n{\"ids\": [1, 2, 1, 2, 1], \"max_tokens\": 9}\n"
                   "{\"ids\": [9, 9, 9], \"max_tokens\": 30}\n{\"ids\": [4], \"max_tokens\": 1}\n");
  const std::vector<std::string> base = {"run", "-m", dir, "--prompts", prompts.string(),
                                         "-n",  "20", "--max-seqs", "3"};
  const Result plain = ferry(base);
  ASSERT_EQ(plain.rc, 0) << plain.err;
  for (const std::string draft : {"lookup", "self-int8", dir.c_str()}) {
    for (const char* k : {"1", "4"}) {
      SCOPED_TRACE(draft + " k " + k);
      auto a = base;
      a.insert(a.end(), {"--draft", draft, "--draft-k", k});
      const Result r = ferry(a);
      ASSERT_EQ(r.rc, 0) << r.err;
      EXPECT_EQ(r.out, plain.out);
      EXPECT_NE(r.err.find("ferry: speculative (" + draft + ", k " + k + "): "),
                std::string::npos)
          << r.err;
    }
  }
  // The model drafting for itself: every draft kept.
  auto a = base;
  a.insert(a.end(), {"--draft", dir, "--draft-k", "4"});
  const Result r = ferry(a);
  EXPECT_NE(r.err.find("(100.0%)"), std::string::npos) << r.err;
}

// ferry plan --draft: the draft's resident bytes come out of the budget, and the choice of k (or
// none) is printed; --explain adds the prediction for every k.
TEST_F(DraftCli, PlanShowsTheTrade) {
  const std::string cfg = (test::data_dir() / "gptj-6b-config").string();
  const std::vector<std::string> base = {"plan", "-m",    cfg,   "--max-ram",
                                         "8GiB", "--ctx", "256", "--no-measure"};
  auto a = base;
  a.insert(a.end(), {"--draft", "self-int4", "--explain"});
  Result r = ferry(a);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("draft: self-int4, "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("resident (weights and KV, out of the budget)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("less the draft's"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("acceptance 0.60 (default guess for self-int4)"), std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("  k 8: "), std::string::npos) << r.out;
  // The baseline is the target without the draft: its 8 GiB keep more layers resident.
  EXPECT_NE(r.out.find("  without the draft: "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("speculation does not pay here"), std::string::npos) << r.out;
  // With 14 GiB the target alone is all resident; an int8 draft's 5.7 GiB would make it stream,
  // and the plan says that decoding without the draft is faster.
  a = {"plan", "-m", cfg, "--max-ram", "14GiB", "--ctx", "256", "--no-measure", "--draft",
       "self-int8", "--explain"};
  r = ferry(a);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("without the draft: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("29 of 29 units resident with the draft's memory given back"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("speculation does not pay here: decoding without --draft is predicted "
                       "faster"),
            std::string::npos)
      << r.out;
  // A draft that does not fit names its KV cache for the planned context and --ctx.
  a = {"plan", "-m", cfg, "--max-ram", "3.75GiB", "--no-measure", "--draft", "self-int4"};
  r = ferry(a);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("the draft self-int4 does not fit in RAM"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("its KV cache for 2048 tokens takes"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--ctx"), std::string::npos) << r.err;
  a = base;
  a.insert(a.end(), {"--draft", "lookup", "--draft-k", "2", "--json"});
  r = ferry(a);
  ASSERT_EQ(r.rc, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["speculation"]["k"], 2);
  EXPECT_EQ(j["speculation"]["draft"], "lookup");
  EXPECT_GT(j["speculation"]["tokens_per_pass"].get<double>(), 1.0);
}

}  // namespace
}  // namespace ferry
