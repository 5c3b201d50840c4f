// `ferry run --device cuda` on a GPU (label gpu; skipped without one): all layers resident, and
// with a VRAM cap that streams some, the greedy tokens of the CPU run; the Llama family too.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

struct Result {
  int rc;
  std::string out;
  std::string err;
};

// The ferry binary: FERRY_BIN from the environment when set (prebuilt binaries run on another
// machine, bench/gpu_session.sh), else the one this build made.
std::string ferry_bin() {
  const char* env = std::getenv("FERRY_BIN");
  return env != nullptr && *env != '\0' ? env : FERRY_BIN;
}

Result ferry(const std::string& args) {
  test::TempDir tmp;
  const std::string cmd = ferry_bin() + " " + args + " >" + (tmp / "out").string() + " 2>" +
                          (tmp / "err").string() + " </dev/null";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::read_file(tmp / "out"),
          test::read_file(tmp / "err")};
}

TEST(CudaCliGpu, RunMatchesCpuTokens) {
  if (ferry("info").out.find("device cuda:") == std::string::npos) GTEST_SKIP() << "no CUDA device";
  const std::string dir = (test::data_dir() / "gptj/sharded-f32").string();  // vocabulary of 500
  const std::string args = "run -m " + dir + " --ids '154 11 61' -n 12 --print-ids";
  const Result cpu = ferry(args);
  ASSERT_EQ(cpu.rc, 0) << cpu.err;
  const Result gpu = ferry(args + " --device cuda");
  ASSERT_EQ(gpu.rc, 0) << gpu.err;
  EXPECT_EQ(gpu.out, cpu.out);
  EXPECT_NE(gpu.err.find("units in VRAM"), std::string::npos) << gpu.err;
  // --max-vram reaches the planner: far too little is refused with the figure needed.
  const Result tiny = ferry(args + " --device cuda --max-vram 1MiB");
  EXPECT_EQ(tiny.rc, 1);
  EXPECT_NE(tiny.err.find("of VRAM"), std::string::npos) << tiny.err;
  // A plan for this device, edited so that layers alternate disk and host tiers (the fixture is
  // too small for a VRAM cap to split it): streamed through device slots, the same tokens.
  test::TempDir tmp;
  // (`ferry plan` plans for a what-if GPU given --max-vram; the run replays it on this one.)
  const Result plan = ferry("plan -m " + dir + " --device cuda --max-vram 2GiB --ctx 64 --json");
  ASSERT_EQ(plan.rc, 0) << plan.err;
  nlohmann::json j = nlohmann::json::parse(plan.out);
  std::size_t i = 0;
  for (auto& layer : j["layers"]) layer["tier"] = i++ % 2 ? "host" : "disk";
  j["staging"]["device_slots"] = 2;
  test::write_file(tmp / "plan.json", j.dump());
  const Result streamed = ferry(args + " --device cuda --plan " + (tmp / "plan.json").string());
  ASSERT_EQ(streamed.rc, 0) << streamed.err;
  EXPECT_EQ(streamed.out, cpu.out) << streamed.err;
  EXPECT_NE(streamed.err.find("device slots"), std::string::npos) << streamed.err;
}

// The Llama family through `ferry run --device cuda`: Hugging Face's greedy tokens for the f32
// fixture (as the CPU's), and the 16-bit ones (bf16 shards with a tied head, f16) run all in VRAM.
TEST(CudaCliGpu, LlamaFamilyRuns) {
  if (ferry("info").out.find("device cuda:") == std::string::npos) GTEST_SKIP() << "no CUDA device";
  for (const std::string fixture :
       {"llama/llama3-gqa-f32", "llama/qwen2-bias-tied-bf16-sharded", "llama/mistral-f16"}) {
    SCOPED_TRACE(fixture);
    const auto dir = test::data_dir() / fixture;
    const auto expected = nlohmann::json::parse(test::read_file(dir / "expected.json"));
    const auto& prompt = expected["prompts"][1];
    std::string ids;
    for (const auto& id : prompt["input_ids"]) {
      if (!ids.empty()) ids += ' ';
      ids += id.dump();
    }
    const std::string args =
        "run -m " + dir.string() + " --ids '" + ids + "' -n 20 --ignore-eos --print-ids";
    const Result gpu = ferry(args + " --device cuda");
    ASSERT_EQ(gpu.rc, 0) << gpu.err;
    EXPECT_NE(gpu.err.find("units in VRAM"), std::string::npos) << gpu.err;
    if (fixture.find("f32") == std::string::npos) continue;
    const Result cpu = ferry(args);
    ASSERT_EQ(cpu.rc, 0) << cpu.err;
    EXPECT_EQ(gpu.out, cpu.out);
    std::string greedy = "[";  // as --print-ids writes them
    for (const auto& id : prompt["greedy_tokens"]) {
      if (greedy.size() > 1) greedy += ", ";
      greedy += id.dump();
    }
    EXPECT_NE(gpu.out.find(greedy + "]"), std::string::npos) << gpu.out;
  }
}

// `ferry logits --device cuda`: Hugging Face's last-position logits for the f32 Llama-3-style
// fixture within the CPU's 2e-5.
TEST(CudaCliGpu, LogitsMatchHuggingFace) {
  if (ferry("info").out.find("device cuda:") == std::string::npos) GTEST_SKIP() << "no CUDA device";
  const auto dir = test::data_dir() / "llama/llama3-gqa-f32";
  const auto expected = nlohmann::json::parse(test::read_file(dir / "expected.json"));
  const auto& prompt = expected["prompts"][0];
  std::string ids;
  for (const auto& id : prompt["input_ids"]) {
    if (!ids.empty()) ids += ' ';
    ids += id.dump();
  }
  const Result gpu = ferry("logits -m " + dir.string() + " --ids '" + ids + "' --device cuda");
  ASSERT_EQ(gpu.rc, 0) << gpu.err;
  const auto got = nlohmann::json::parse(gpu.out)["logits"].get<std::vector<float>>();
  const auto want = prompt["last_logits"].get<std::vector<float>>();
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-5f) << i;
}

// `ferry perplexity --device cuda` scores as the CPU does (within the GPU's rounding), alone and
// with a reference on the same device (the two engines share it, half the VRAM each).
TEST(CudaCliGpu, PerplexityMatchesCpu) {
  if (ferry("info").out.find("device cuda:") == std::string::npos) GTEST_SKIP() << "no CUDA device";
  const std::string dir = (test::data_dir() / "gptj/sharded-f32").string();
  const std::string args = "perplexity -m " + dir +
                           " --ids '154 11 61 7 300 42 99 5 17 250 3 480 66 12 8 140 27' --ctx 8 "
                           "--json --reference " +
                           dir;
  const Result cpu = ferry(args);
  ASSERT_EQ(cpu.rc, 0) << cpu.err;
  const Result gpu = ferry(args + " --device cuda");
  ASSERT_EQ(gpu.rc, 0) << gpu.err;
  const auto last = [](std::string s) {  // the JSON line ends the output
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return nlohmann::json::parse(s.substr(s.rfind('\n') + 1));
  };
  const nlohmann::json c = last(cpu.out);
  const nlohmann::json g = last(gpu.out);
  EXPECT_EQ(g["tokens"], c["tokens"]);
  EXPECT_NEAR(g["mean_nll"].get<double>(), c["mean_nll"].get<double>(), 1e-4);
  EXPECT_EQ(g["reference"]["kl_max"].get<double>(), 0.0);  // the same model twice, on one device
  EXPECT_NE(gpu.err.find("from half of the free VRAM"), std::string::npos) << gpu.err;
}

}  // namespace
}  // namespace ferry
