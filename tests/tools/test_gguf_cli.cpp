// GGUF files through the command line: text in and out with the file's own tokenizer, logits,
// a budget that streams, plans from the file alone, and bad files refused with the problem named
// (never a crash).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

using Result = test::CommandResult;

Result ferry(const std::vector<std::string>& args, const std::string& env = "") {
  return test::run_command(FERRY_BIN, args, env);
}

fs::path fixture(const std::string& type) {
  return test::data_dir() / "gguf" / "tiny-llama-bpe" / type / "model.gguf";
}

TEST(GgufCli, RunsTextThroughTheFilesTokenizer) {
  const std::string model = fixture("Q4_K_M").string();
  Result r = ferry({"run", "-m", model, "-p", "The licence", "-n", "6", "--print-ids"});
  ASSERT_EQ(r.rc, 0) << r.err;
  // The prompt's ids begin with the file's BOS (add_bos_token), and six tokens follow.
  const json ids = json::parse(r.out.substr(r.out.rfind('[')));
  EXPECT_EQ(ids.size(), 6u);
  EXPECT_NE(r.err.find("plan:"), std::string::npos) << r.err;

  // Greedy ids from ids: llama.cpp's dequant-f32 run's tokens (the first steps, whose margins are
  // wide) through the command line too.
  const json e = json::parse(test::read_file(fixture("Q4_K_M").parent_path() / "expected.json"));
  const json& p = e["prompts"][1];
  std::string prompt;
  for (const auto& id : p["input_ids"]) prompt += std::to_string(id.get<int>()) + " ";
  r = ferry({"run", "-m", model, "--ids", prompt, "-n", "4", "--print-ids", "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json got = json::parse(r.out.substr(r.out.rfind('[')));
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(got[i], p["greedy_tokens_dequant_f32"][i]) << i;

  // A budget too small even to stream says the smallest that works.
  r = ferry({"run", "-m", model, "--ids", prompt, "-n", "4", "--max-ram", "3MiB"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("raise --max-ram to at least"), std::string::npos) << r.err;
}

TEST(GgufCli, LogitsAndPlanFromTheFile) {
  const std::string model = fixture("Q8_0").string();
  Result r = ferry({"logits", "-m", model, "--ids", "1021 5 853"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["logits"].size(), 1024u);
  // Planned from the file alone for another machine: its units priced by their real bytes.
  r = ferry({"plan", "-m", model, "--profile", "colab-t4", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json plan = json::parse(r.out);
  ASSERT_EQ(plan["layers"].size(), 3u);  // two blocks and the head
  // 7 Q8_0 matrices of 835,584 bytes, as the streamer reads them (whole 4 KiB pages).
  EXPECT_EQ(plan["layers"][0]["bytes"], 839680);
  r = ferry({"inspect", "-m", model});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("architecture: llama"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ggml type Q8_0: 16 tensors"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layer 1"), std::string::npos) << r.out;
}

// FERRY_GGUF_PRODUCTS=fast rounds the activations to q8_K / q8_0 and multiplies in integers as
// llama.cpp does: its logits are llama.cpp's own (last_logits, not the dequant-f32 ones) to a few
// 1e-7 (0 on Q8_0), and its greedy tokens are llama.cpp's, every step of every prompt.
TEST(GgufCli, FastProductsGiveLlamaCppsOwnLogits) {
  for (const char* type : {"Q8_0", "Q4_K_M", "Q6_K"}) {
    SCOPED_TRACE(type);
    const std::string model = fixture(type).string();
    const json e = json::parse(test::read_file(fixture(type).parent_path() / "expected.json"));
    for (const json& p : e["prompts"]) {
      std::string ids;
      for (const auto& id : p["input_ids"]) ids += std::to_string(id.get<int>()) + " ";
      Result r = ferry({"logits", "-m", model, "--ids", ids}, "FERRY_GGUF_PRODUCTS=fast ");
      ASSERT_EQ(r.rc, 0) << r.err;
      const auto got = json::parse(r.out)["logits"].get<std::vector<float>>();
      const auto want = p["last_logits"].get<std::vector<float>>();
      ASSERT_EQ(got.size(), want.size());
      float worst = 0;
      for (std::size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
      EXPECT_LE(worst, 1e-5f);
      r = ferry({"run", "-m", model, "--ids", ids, "-n", "20", "--print-ids", "-q"},
                "FERRY_GGUF_PRODUCTS=fast ");
      ASSERT_EQ(r.rc, 0) << r.err;
      EXPECT_EQ(json::parse(r.out.substr(r.out.rfind('['))), p["greedy_tokens"]);
    }
  }
  const Result bad = ferry({"logits", "-m", fixture("Q8_0").string(), "--ids", "1 2"},
                           "FERRY_GGUF_PRODUCTS=quick ");
  EXPECT_EQ(bad.rc, 1);
  EXPECT_NE(bad.err.find("FERRY_GGUF_PRODUCTS"), std::string::npos) << bad.err;
}

// Bytes of the fixture with `edit` applied, written to dir/name.
fs::path edited(const test::TempDir& dir, const std::string& name,
                const std::function<void(std::string&)>& edit) {
  std::string bytes = test::read_file(fixture("Q4_0"));
  edit(bytes);
  test::write_file(dir / name, bytes);
  return dir / name;
}

TEST(GgufCli, BadFilesAreRefusedByName) {
  test::TempDir dir;
  struct Case {
    const char* name;
    std::function<void(std::string&)> edit;
    const char* says;
  };
  auto replace = [](std::string from, std::string to) {
    return [from, to](std::string& b) {
      const auto at = b.find(from);
      ASSERT_NE(at, std::string::npos) << from;
      b.replace(at, from.size(), to);
    };
  };
  const std::vector<Case> cases = {
      {"truncated.gguf", [](std::string& b) { b.resize(b.size() / 2); }, "truncated"},
      {"header-cut.gguf", [](std::string& b) { b.resize(5000); }, "truncated"},
      {"magic.gguf", [](std::string& b) { b[0] = 'X'; }, "not a GGUF file"},
      // Same length, so the rest of the file stays valid.
      {"arch.gguf", replace(std::string("\x05\0\0\0\0\0\0\0llama", 13),
                            std::string("\x05\0\0\0\0\0\0\0phi3x", 13)),
       "general.architecture 'phi3x' is not supported"},
      {"tensor-name.gguf", replace("blk.1.ffn_up.weight", "blk.1.ffn_xx.weight"),
       "tensor 'blk.1.ffn_up.weight' is missing"},
      {"heads.gguf",
       [](std::string& b) {
         const std::string key = "llama.attention.head_count_kv";
         const auto at = b.find(key);
         ASSERT_NE(at, std::string::npos);
         const uint32_t three = 3;
         std::memcpy(b.data() + at + key.size() + 4, &three, 4);
       },
       "num_key_value_heads 3"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path f = edited(dir, c.name, c.edit);
    const Result r = ferry({"run", "-m", f.string(), "--ids", "1 2 3", "-n", "2"});
    EXPECT_EQ(r.rc, 1) << r.err;
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("Aborted"), std::string::npos) << r.err;
  }
}

}  // namespace
}  // namespace ferry
