// --kv-tokens: the paged KV cache's pool for batched runs and the server. A given size holds its
// sequences' tokens (outputs as with every slot at full context); too small for one sequence,
// or not a number, is refused naming the value; auto plans 1, 2, 4 … sequences' caches against
// resident layers within --max-ram and says which it chose.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <tuple>
#include <vector>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

test::CommandResult ferry(const std::vector<std::string>& args) {
  return test::run_command(FERRY_BIN, args, "FERRY_CACHE_DIR=/nonexistent-ferry-cache ");
}

class KvPoolCli : public ::testing::Test {
 protected:
  void SetUp() override {
    test::write_file(dir_ / "prompts.jsonl",
                     "{\"ids\": [1, 2, 3]}\n{\"ids\": [4, 5, 6, 7, 8]}\n{\"ids\": [9]}\n");
  }
  std::vector<std::string> run_args(const std::string& kv) const {
    return {"run",     "-m",         model_,  "--prompts", (dir_ / "prompts.jsonl").string(),
            "-n",      "6",          "--max-seqs", "3",   "--kv-tokens", kv, "--ignore-eos"};
  }
  test::TempDir dir_;
  std::string model_ = (test::data_dir() / "llama" / "llama3-gqa-f32").string();
};

TEST_F(KvPoolCli, AGivenPoolGivesTheSameOutputsAsFullSlots) {
  std::vector<std::string> full = run_args("9999");
  const auto want = ferry(full);
  ASSERT_EQ(want.rc, 0) << want.err;
  // One 32-token block: the three sequences (at most 10 tokens each) take turns in it.
  for (const std::string kv : {"11", "32", "auto"}) {
    const auto got = ferry(run_args(kv));
    ASSERT_EQ(got.rc, 0) << kv << ": " << got.err;
    EXPECT_EQ(got.out, want.out) << kv;
  }
}

// Seen: a default pool counted in tokens (slots × context) rounded to whole blocks held fewer
// sequences than slots (8 × 19 tokens = 5 blocks of 32), so 8 prompts ran 4 at a time. Each
// slot holds whole blocks: all run together, one pass per token.
TEST_F(KvPoolCli, EverySlotHoldsAFullContextByDefault) {
  std::string lines;
  for (int i = 0; i < 8; ++i) lines += "{\"ids\": [" + std::to_string(i + 1) + ", 2, 3]}\n";
  test::write_file(dir_ / "eight.jsonl", lines);
  for (const std::string kv : {"", "auto"}) {
    std::vector<std::string> args = {"run", "-m", model_, "--prompts",
                                     (dir_ / "eight.jsonl").string(), "-n", "16", "--max-seqs",
                                     "8", "--ignore-eos"};
    if (!kv.empty()) args.insert(args.end(), {"--kv-tokens", kv});
    const auto r = ferry(args);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.err.find("8 prompts, 8 at a time: 24 prompt tokens, 128 generated"),
              std::string::npos)
        << r.err;
    EXPECT_NE(r.err.find(" over 16 passes"), std::string::npos) << kv << ": " << r.err;
  }
}

TEST_F(KvPoolCli, AutoSaysWhatItChose) {
  const auto r = ferry(run_args("auto"));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("KV pool for "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tokens/s together"), std::string::npos) << r.err;
}

TEST_F(KvPoolCli, RefusesAPoolTooSmallOrNotANumber) {
  auto r = ferry(run_args("4"));
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("a KV pool of 4 tokens cannot hold one sequence of the context's 11 "
                       "tokens; give at least 11"),
            std::string::npos)
      << r.err;
  for (const std::string bad : {"x", "0", "-3", "12k"}) {
    r = ferry(run_args(bad));
    EXPECT_NE(r.rc, 0) << bad;
    EXPECT_NE(r.err.find("--kv-tokens " + bad + " is not auto or a whole number of tokens"),
              std::string::npos)
        << bad << ": " << r.err;
  }
}

// --kv-memory: where a CUDA plan puts the pool. The plan says which memory it chose and what
// the other would give (a what-if T4 short of VRAM, here with no GPU); a bad value, or device
// on the CPU, is refused naming it — by serve before it starts listening.
TEST_F(KvPoolCli, KvMemoryPlansAndRefusals) {
  const std::string gptj = (test::data_dir() / "gptj-6b-config" / "config.json").string();
  auto r = ferry({"plan", "-m", gptj, "--profile", "colab-t4", "--max-vram", "4GiB", "--max-ram",
                  "20GiB", "--no-measure"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("KV cache     2048 tokens (896.0 MiB) in host memory (pinned, read over "
                       "PCIe"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("; in VRAM it would leave"), std::string::npos) << r.out;
  r = ferry({"plan", "-m", gptj, "--profile", "colab-t4", "--max-vram", "4GiB", "--max-ram",
             "20GiB", "--no-measure", "--kv-memory", "device", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("\"memory\": \"device\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"place\": \"device\""), std::string::npos) << r.out;

  const std::string bad = "--kv-memory 'vram' is not auto, device or host";
  const std::string cpu = "--kv-memory device puts the KV pool in VRAM, which needs --device cuda";
  r = ferry({"plan", "-m", gptj, "--no-measure", "--kv-memory", "vram"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find(bad), std::string::npos) << r.err;
  r = ferry({"plan", "-m", gptj, "--no-measure", "--device", "cpu", "--kv-memory", "device"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find(cpu), std::string::npos) << r.err;
  std::vector<std::string> args = run_args("auto");
  args.insert(args.end(), {"--kv-memory", "device"});
  r = ferry(args);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find(cpu), std::string::npos) << r.err;
  for (const auto& [flag, value, want] :
       {std::tuple<std::string, std::string, std::string>{"--kv-memory", "vram", bad},
        {"--kv-memory", "device", cpu},
        {"--kv-tokens", "x", "--kv-tokens x is not auto or a whole number"}}) {
    r = ferry({"serve", "-m", model_, "--port", "1", flag, value});
    EXPECT_NE(r.rc, 0) << value;
    EXPECT_NE(r.err.find(want), std::string::npos) << value << ": " << r.err;
    EXPECT_EQ(r.err.find("listening"), std::string::npos) << r.err;
  }
}

// plan --batch past the budget: the sweep is printed with the batches that do not fit marked, the
// plan shown is the fastest that fits and says so; only a budget too small for one sequence is
// refused. GPT-J-6B at 2048 tokens keeps 1.75 GiB of KV cache per sequence: 4 GiB holds two.
TEST_F(KvPoolCli, PlanBatchPastTheBudgetShowsTheSweep) {
  const std::string gptj = (test::data_dir() / "gptj-6b-config" / "config.json").string();
  const std::vector<std::string> args = {"plan", "-m",        gptj,   "--no-measure", "--device",
                                         "cpu",  "--max-ram", "4GiB", "--batch",      "8"};
  auto r = ferry(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("context 2048 × 2 sequences"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("          4       8192  does not fit: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("          8      16384  does not fit: "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("   <- fastest"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--batch 8 does not fit; the plan above is for 2 sequences (run or serve "
                       "with --max-seqs 2)"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(r.out.find("is enough"), std::string::npos) << r.out;

  std::vector<std::string> json = args;
  json.push_back("--json");
  r = ferry(json);
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["batch"], 2);
  EXPECT_EQ(j["batch_best"], 2);
  EXPECT_EQ(j["batch_fits"], false);
  ASSERT_EQ(j["batch_sweep"].size(), 4u);
  EXPECT_EQ(j["batch_sweep"][1]["fits"], true);
  EXPECT_EQ(j["batch_sweep"][3]["fits"], false);
  EXPECT_NE(j["batch_sweep"][3]["refusal"].get<std::string>().find("--max-ram allows 4.00 GiB"),
            std::string::npos);

  // --quant auto with a batch no format fits: the formats compared for one sequence, say so.
  std::vector<std::string> quant = args;
  quant.insert(quant.end(), {"--quant", "auto"});
  r = ferry(quant);
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("quant auto: the least compression that fits one sequence (--batch 8 fits "
                       "none)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("context 2048 × 2 sequences"), std::string::npos) << r.out;

  // Not even one sequence: the refusal names the budget one sequence needs.
  std::vector<std::string> tight = args;
  tight[7] = "1GiB";
  r = ferry(tight);
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("needs at least 2.21 GiB of RAM"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("1.75 GiB of KV cache"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ferry
