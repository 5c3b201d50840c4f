// ferry tokenize on the tokenizer.json fixtures: --jsonl prints, line by line, the ids Hugging
// Face gives each case (with --add-special, those with the special tokens); --decode the text.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

using nlohmann::json;

struct Result {
  int status;
  std::string out;  // stdout and stderr together: a successful run writes nothing to stderr
};

// Runs ferry with `args`, none of which holds a single quote.
Result ferry(const std::vector<std::string>& args) {
  std::string cmd = std::string("'") + FERRY_BIN + "'";
  for (const auto& a : args) cmd += " '" + a + "'";
  cmd += " 2>&1 </dev/null";
  FILE* pipe = popen(cmd.c_str(), "r");
  EXPECT_NE(pipe, nullptr) << cmd;
  if (pipe == nullptr) return {-1, ""};
  std::string out;
  std::array<char, 4096> buffer;
  std::size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), pipe)) > 0) out.append(buffer.data(), n);
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

class TokenizeCli : public testing::TestWithParam<std::string> {};

TEST_P(TokenizeCli, JsonlGivesEveryFixtureCaseItsIds) {
  const auto dir = test::data_dir() / "tokenizers" / GetParam();
  const json cases = json::parse(test::read_file(dir / "cases.json")).at("cases");
  const test::TempDir tmp;
  std::string jsonl;
  for (const auto& c : cases) jsonl += json(c.at("text")).dump() + "\n";
  test::write_file(tmp / "in.jsonl", jsonl);
  for (const bool special : {false, true}) {
    std::vector<std::string> args = {"tokenize", "-m", dir.string(), "--jsonl",
                                     (tmp / "in.jsonl").string()};
    if (special) args.emplace_back("--add-special");
    const Result r = ferry(args);
    ASSERT_EQ(r.status, 0) << r.out;
    std::istringstream lines(r.out);
    std::string line;
    for (const auto& c : cases) {
      ASSERT_TRUE(std::getline(lines, line)) << "fewer lines than cases";
      EXPECT_EQ(json::parse(line), c.at(special ? "ids_with_special" : "ids"))
          << c.at("text").dump();
    }
    EXPECT_FALSE(std::getline(lines, line)) << "more lines than cases";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TokenizeCli, testing::Values("qwen3", "spm-bpe-tiny"),
                         [](const auto& param_info) {
                           return param_info.param == "qwen3" ? std::string("Qwen3")
                                                              : std::string("SpmBpeTiny");
                         });

TEST(TokenizeCli, TextAndDecode) {
  const auto spm = (test::data_dir() / "tokenizers" / "spm-bpe-tiny").string();
  const Result encoded = ferry({"tokenize", "-m", spm, "--text", "Hello world", "--add-special"});
  ASSERT_EQ(encoded.status, 0) << encoded.out;
  const json ids = json::parse(encoded.out);
  ASSERT_FALSE(ids.empty());
  EXPECT_EQ(ids[0], 1);  // <s>, from the post-processor
  std::string list;
  for (const auto& id : ids) list += std::to_string(id.get<int>()) + " ";
  const Result decoded = ferry({"tokenize", "-m", spm, "--decode", list});
  ASSERT_EQ(decoded.status, 0) << decoded.out;
  EXPECT_EQ(decoded.out, "<s> Hello world\n");
}

// A GGUF file's tokenizer through the command line: llama.cpp's ids for every case, with and
// without add_special and parse_special (tokenize.json, from llama_tokenize), and its
// detokenization.
TEST(TokenizeCli, GgufFileGivesLlamaCppsIds) {
  const auto dir = test::data_dir() / "gguf" / "tiny-llama-bpe";
  const std::string model = (dir / "Q4_0" / "model.gguf").string();
  const json cases = json::parse(test::read_file(dir / "tokenize.json")).at("cases");
  const test::TempDir tmp;
  std::string jsonl;
  for (const auto& c : cases) jsonl += json(c.at("text")).dump() + "\n";
  test::write_file(tmp / "in.jsonl", jsonl);
  for (const bool add : {false, true}) {
    for (const bool parse : {false, true}) {
      SCOPED_TRACE(fmt::format("add_special {} parse_special {}", add, parse));
      std::vector<std::string> args = {"tokenize", "-m", model, "--jsonl",
                                       (tmp / "in.jsonl").string()};
      if (add) args.emplace_back("--add-special");
      if (!parse) args.emplace_back("--no-parse-special");
      const Result r = ferry(args);
      ASSERT_EQ(r.status, 0) << r.out;
      std::istringstream lines(r.out);
      std::string line;
      const std::string key = fmt::format("ids_add_special_{}_parse_special_{}",
                                          add ? "True" : "False", parse ? "True" : "False");
      for (const auto& c : cases) {
        ASSERT_TRUE(std::getline(lines, line)) << "fewer lines than cases";
        EXPECT_EQ(json::parse(line), c.at(key)) << c.at("text").dump();
      }
    }
  }
  for (const auto& c : cases) {
    const auto& ids = c.at("ids_add_special_True_parse_special_True");
    if (ids.empty()) continue;
    std::string list;
    for (const auto& id : ids) list += std::to_string(id.get<int>()) + " ";
    const Result decoded = ferry({"tokenize", "-m", model, "--decode", list});
    ASSERT_EQ(decoded.status, 0) << decoded.out;
    EXPECT_EQ(decoded.out, c.at("detokenized").get<std::string>() + "\n") << c.at("text").dump();
  }
}

}  // namespace
}  // namespace ferry
