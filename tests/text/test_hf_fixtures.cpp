// Every case of the tokenizer.json fixtures (tests/data/tokenizers: Qwen3's real tokenizer and a
// small SentencePiece-style BPE), against the ids and text Hugging Face's pipeline gives:
// encode without and with special tokens, decode, byte for byte.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/text/tokenizer.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::text {
namespace {

struct Case {
  std::string text;
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> ids_with_special;
  std::string decoded;
  std::string category;
};

std::filesystem::path fixture_dir(const std::string& name) {
  return ferry::test::data_dir() / "tokenizers" / name;
}

std::vector<Case> load_cases(const std::string& name) {
  const auto j = nlohmann::json::parse(ferry::test::read_file(fixture_dir(name) / "cases.json"));
  std::vector<Case> out;
  for (const auto& c : j.at("cases")) {
    out.push_back({c.at("text").get<std::string>(), c.at("ids").get<std::vector<std::int32_t>>(),
                   c.at("ids_with_special").get<std::vector<std::int32_t>>(),
                   c.at("decoded").get<std::string>(), c.at("category").get<std::string>()});
  }
  return out;
}

// Each loaded once per process, and only when asked for (ctest runs every test alone).
const Tokenizer& fixture(const std::string& name) {
  if (name == "qwen3") {
    static const Tokenizer qwen3 = Tokenizer::from_model_dir(fixture_dir("qwen3"));
    return qwen3;
  }
  static const Tokenizer spm = Tokenizer::from_model_dir(fixture_dir("spm-bpe-tiny"));
  return spm;
}

class FixtureCases : public testing::TestWithParam<std::string> {};

TEST_P(FixtureCases, EveryCaseMatchesHuggingFace) {
  const Tokenizer& tok = fixture(GetParam());
  const std::vector<Case> cases = load_cases(GetParam());
  ASSERT_GE(cases.size(), 40u);
  int passed = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE(testing::Message() << GetParam() << " case " << i << " (" << c.category
                                    << "): " << testing::PrintToString(c.text));
    const bool plain = tok.encode(c.text) == c.ids;
    const bool special = tok.encode(c.text, true) == c.ids_with_special;
    const bool decoded = tok.decode(c.ids) == c.decoded;
    EXPECT_EQ(tok.encode(c.text), c.ids);
    EXPECT_EQ(tok.encode(c.text, true), c.ids_with_special);
    EXPECT_EQ(tok.decode(c.ids), c.decoded);
    passed += plain && special && decoded;
  }
  RecordProperty("cases_passed", passed);
  EXPECT_EQ(passed, static_cast<int>(cases.size()));
}

// A stream of the ids, token by token, prints what decode gives for the whole.
TEST_P(FixtureCases, StreamingGivesTheDecodedText) {
  const Tokenizer& tok = fixture(GetParam());
  for (const Case& c : load_cases(GetParam())) {
    StreamDecoder stream(tok);
    std::string out;
    for (const std::int32_t id : c.ids) out += stream.push(id);
    out += stream.flush();
    EXPECT_EQ(out, c.decoded) << testing::PrintToString(c.text);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, FixtureCases, testing::Values("qwen3", "spm-bpe-tiny"),
                         [](const auto& param_info) {
                           return param_info.param == "qwen3" ? std::string("Qwen3")
                                                              : std::string("SpmBpeTiny");
                         });

TEST(FixtureTokenizers, SpecialIdsComeFromTheConfig) {
  EXPECT_EQ(fixture("spm-bpe-tiny").bos_id(), 1);
  EXPECT_EQ(fixture("spm-bpe-tiny").eos_id(), 2);
  EXPECT_EQ(fixture("spm-bpe-tiny").encode("", true), (std::vector<std::int32_t>{1}));
  EXPECT_EQ(fixture("qwen3").bos_id(), std::nullopt);
  EXPECT_EQ(fixture("qwen3").token_id("<|im_end|>"), 151645);
  EXPECT_EQ(fixture("qwen3").vocab_size(), 151669);
}

}  // namespace
}  // namespace ferry::text
