// ferry run --prompts: a JSON Lines file decoded batched gives, line for line and in order, what
// `ferry run` gives each prompt alone; bad lines are refused naming the line and the field.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/test_support.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Result = ferry::test::CommandResult;

Result ferry_cmd(const std::vector<std::string>& args) {
  return ferry::test::run_command(FERRY_BIN, args);
}

std::vector<json> json_lines(const std::string& out) {
  std::vector<json> lines;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(json::parse(line));
  return lines;
}

// The ids `ferry run` prints alone (--print-ids: its last line).
json alone(const std::vector<std::string>& args) {
  std::vector<std::string> all = args;
  all.insert(all.end(), {"--print-ids", "--ignore-eos", "-q"});
  const Result r = ferry_cmd(all);
  EXPECT_EQ(r.rc, 0) << r.err;
  std::istringstream in(r.out);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return json::parse(last);
}

class RunPromptsCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // A GPT-J with GPT-2's tokenizer files, so lines may be text.
    dir_ = new ferry::test::TempDir;
    model_ = (*dir_ / "m").string();
    const Result r = ferry_cmd({"make-model", "--preset", "tiny", "--n-layer", "2", "--n-embd",
                                "64", "--n-head", "4", "--rotary-dim", "8", "--seed", "5", "-o",
                                model_, "-q"});
    ASSERT_EQ(r.rc, 0) << r.err;
  }
  static void TearDownTestSuite() { delete dir_; }

  static ferry::test::TempDir* dir_;
  static std::string model_;
};
ferry::test::TempDir* RunPromptsCli::dir_ = nullptr;
std::string RunPromptsCli::model_;

TEST_F(RunPromptsCli, BatchedLinesEqualRunAlone) {
  ferry::test::TempDir tmp;
  ferry::test::write_file(
      tmp / "p.jsonl",
      "{\"prompt\": \"The quick brown fox\"}\n"
      "{\"ids\": [464, 2068], \"max_tokens\": 3, \"id\": \"second\"}\n"
      "\n"  // blank lines are skipped
      "{\"prompt\": \"A ferry crossed the river at dawn\", \"temperature\": 0.8, \"top_p\": 0.9, "
      "\"top_k\": 20, \"seed\": 7, \"max_tokens\": 9}\n"
      "{\"ids\": [11], \"temperature\": 1.0, \"seed\": 123}\n");
  const Result r = ferry_cmd({"run", "-m", model_, "--prompts", (tmp / "p.jsonl").string(), "-n",
                              "6", "--max-seqs", "3", "--ignore-eos"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 4u) << r.out;
  // Ids and order.
  EXPECT_EQ(lines[0]["id"], 1);
  EXPECT_EQ(lines[1]["id"], "second");
  EXPECT_EQ(lines[2]["id"], 4);
  EXPECT_EQ(lines[3]["id"], 5);
  // Each equals the prompt run alone.
  EXPECT_EQ(lines[0]["ids"], alone({"run", "-m", model_, "-p", "The quick brown fox", "-n", "6"}));
  EXPECT_EQ(lines[1]["ids"], alone({"run", "-m", model_, "--ids", "464 2068", "-n", "3"}));
  EXPECT_EQ(lines[2]["ids"],
            alone({"run", "-m", model_, "-p", "A ferry crossed the river at dawn", "-n", "9",
                   "--temperature", "0.8", "--top-p", "0.9", "--top-k", "20", "--seed", "7"}));
  EXPECT_EQ(lines[3]["ids"], alone({"run", "-m", model_, "--ids", "11", "-n", "6", "--temperature",
                                    "1.0", "--seed", "123"}));
  for (const json& l : lines) {
    EXPECT_EQ(l["finish_reason"], "length");
    EXPECT_TRUE(l["text"].is_string());
    EXPECT_EQ(l["ids"].size(), l["id"] == "second" ? 3u : (l["id"] == 4 ? 9u : 6u));
  }
  EXPECT_EQ(lines[1]["prompt_tokens"], 2);
  EXPECT_EQ(lines[3]["prompt_tokens"], 1);
  // The keys in the documented order.
  EXPECT_EQ(r.out.substr(0, 7), "{\"id\":1");
  EXPECT_NE(r.err.find("4 prompts, 3 at a time"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tok/s in all"), std::string::npos) << r.err;
}

TEST_F(RunPromptsCli, BadLinesNameTheLineAndField) {
  ferry::test::TempDir tmp;
  const std::string good = "{\"ids\": [1, 2]}\n";
  const struct {
    std::string line;
    std::string words;
  } cases[] = {
      {"{\"ids\": [1, 2]", "line 2"},  // not JSON
      {"[1, 2]", "line 2: the line is an array, not a JSON object"},
      {"{\"ids\": [1], \"temprature\": 0.5}", "line 2: unknown field \"temprature\""},
      {"{\"ids\": [1], \"max_tokens\": \"5\"}",
       "line 2: \"max_tokens\" must be a whole number from 0 to 16777216, not a string"},
      {"{\"ids\": [1], \"max_tokens\": -1}", "line 2: \"max_tokens\" is -1 but must be from 0"},
      {"{\"ids\": [1, -2]}", "line 2: \"ids\"[1] is -2, not a token id"},
      {"{\"ids\": []}", "line 2: \"ids\" must be a non-empty array of token ids, not an empty"},
      {"{\"ids\": [1], \"prompt\": \"x\"}", "line 2: the line has both \"prompt\" and \"ids\""},
      {"{\"max_tokens\": 3}", "line 2: the line has no \"prompt\" and no \"ids\""},
      {"{\"prompt\": 5}", "line 2: \"prompt\" must be a string, not a whole number"},
      {"{\"ids\": [1], \"temperature\": -1}", "line 2: \"temperature\" is -1 but must be 0"},
      {"{\"ids\": [1], \"top_p\": 0}", "line 2: \"top_p\" is 0 but must be in (0, 1]"},
      {"{\"ids\": [1], \"top_k\": 1.5}", "line 2: \"top_k\" must be a whole number"},
      {"{\"ids\": [1], \"seed\": -3}", "line 2: \"seed\" must be a whole number ≥ 0, not -3"},
      {"{\"ids\": [60000]}", "line 2: token id 60000 (position 0 of the prompt) is outside the "
                             "vocabulary of this model"},
      {"{\"ids\": [1], \"max_tokens\": 5000}",
       "line 2: the prompt (1 tokens) plus 5000 new tokens exceeds the model's context"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.line);
    ferry::test::write_file(tmp / "bad.jsonl", good + c.line + "\n" + good);
    const Result r = ferry_cmd({"run", "-m", model_, "--prompts", (tmp / "bad.jsonl").string()});
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.err.find(c.words), std::string::npos) << r.err;
    EXPECT_EQ(r.out, "");  // nothing runs before every line is checked
  }
  // The other ways to give a prompt are exclusive with --prompts; an empty file says what to write.
  ferry::test::write_file(tmp / "empty.jsonl", "\n\n");
  Result r = ferry_cmd({"run", "-m", model_, "--prompts", (tmp / "empty.jsonl").string()});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("has no prompts"), std::string::npos) << r.err;
  r = ferry_cmd({"run", "-m", model_, "--prompts", (tmp / "empty.jsonl").string(), "-p", "hi"});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("excludes"), std::string::npos) << r.err;
  r = ferry_cmd({"run", "-m", model_, "--prompts", (tmp / "missing.jsonl").string()});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("missing.jsonl"), std::string::npos) << r.err;
}

// A model without tokenizer files still runs lines of ids; a text line says what to give.
TEST(RunPromptsCliIds, FixtureWithoutTokenizer) {
  const fs::path model = ferry::test::data_dir() / "llama" / "llama3-gqa-f32";
  ferry::test::TempDir tmp;
  ferry::test::write_file(tmp / "p.jsonl", "{\"ids\": [1, 2, 3]}\n{\"ids\": [4]}\n");
  Result r = ferry_cmd({"run", "-m", model.string(), "--prompts", (tmp / "p.jsonl").string(),
                        "-n", "4", "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_FALSE(lines[0].contains("text"));
  EXPECT_EQ(lines[0]["ids"], alone({"run", "-m", model.string(), "--ids", "1 2 3", "-n", "4"}));
  EXPECT_EQ(lines[1]["ids"], alone({"run", "-m", model.string(), "--ids", "4", "-n", "4"}));
  ferry::test::write_file(tmp / "t.jsonl", "{\"prompt\": \"hello\"}\n");
  r = ferry_cmd({"run", "-m", model.string(), "--prompts", (tmp / "t.jsonl").string()});
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("line 1: \"prompt\" is text but the model has no tokenizer files"),
            std::string::npos)
      << r.err;
}

}  // namespace
