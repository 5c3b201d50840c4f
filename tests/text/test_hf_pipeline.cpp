// The parts of a tokenizer.json pipeline one at a time, on hand-made files: SentencePiece-style
// byte fallback and <unk>, the Metaspace pre-tokenizer's prepend_scheme and split, Llama 3's
// ignore_merges, Split behaviours, added tokens' lstrip/rstrip, post-processors and
// tokenizer_config.json, generation EOS ids, and the errors malformed files give.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/text/tokenizer.hpp"
#include "tests/support/test_support.hpp"
#include "tests/text/tokenizer_test_util.hpp"

namespace ferry::text {
namespace {

using nlohmann::json;
using test::byte_vocab;
using test::expect_format_error;
using Ids = std::vector<std::int32_t>;

constexpr std::int32_t kByte0 = 3;  // <0x00> in the SentencePiece-style vocabulary below
constexpr std::int32_t kSpace = 259, kH = 260, kI = 261, kSpaceH = 262, kHi = 263, kSpaceHi = 264,
                       kX = 265, kSpaceSpace = 266;

// A SentencePiece-style BPE as transformers converts Llama 2's: ▁ for spaces, byte fallback.
json spm_json() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = kByte0 + b;
  vocab["\u2581"] = kSpace;
  vocab["h"] = kH;
  vocab["i"] = kI;
  vocab["\u2581h"] = kSpaceH;
  vocab["hi"] = kHi;
  vocab["\u2581hi"] = kSpaceHi;
  vocab["\u2581\u2581"] = kSpaceSpace;
  const auto special = [](int id, const char* content) {
    return json{{"id", id}, {"content", content}, {"special", true}, {"normalized", false}};
  };
  return {
      {"added_tokens", json::array({special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         json::array(
             {{{"type", "Prepend"}, {"prepend", "\u2581"}},
              {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         json::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                      {{"type", "ByteFallback"}},
                      {{"type", "Fuse"}},
                      {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", json::array({"\u2581 \u2581", "\u2581 h", "h i", "\u2581h i"})}}},
  };
}

Tokenizer load(const json& tokenizer, const json& config = nullptr) {
  return Tokenizer::from_json_strings(tokenizer.dump(), config.is_null() ? "" : config.dump(),
                                      "test tokenizer.json");
}

std::int32_t byte_token(unsigned char b) { return kByte0 + b; }

TEST(SentencePieceBpe, UnknownCharactersFallBackToBytes) {
  const Tokenizer tok = load(spm_json());
  EXPECT_EQ(tok.encode("hi"), (Ids{kSpaceHi}));
  EXPECT_EQ(tok.encode("h\u00e9"), (Ids{kSpaceH, byte_token(0xC3), byte_token(0xA9)}));
  EXPECT_EQ(tok.encode("h\ni"), (Ids{kSpaceH, byte_token('\n'), kI}));
  EXPECT_EQ(tok.encode("<0x41>"),  // typed in the text, it is plain text
            (Ids{kSpace, byte_token('<'), byte_token('0'), byte_token('x'), byte_token('4'),
                 byte_token('1'), byte_token('>')}));
  EXPECT_EQ(tok.decode(Ids{kSpaceH, byte_token(0xC3), byte_token(0xA9)}), "h\u00e9");
}

TEST(SentencePieceBpe, InvalidFallbackBytesDecodeToOneReplacementEach) {
  const Tokenizer tok = load(spm_json());
  EXPECT_EQ(tok.decode(Ids{kSpaceH, byte_token(0xC3)}), "h\ufffd");
  EXPECT_EQ(tok.decode(Ids{byte_token(0xE2), byte_token(0x82), kH}), "\ufffd\ufffdh");
  EXPECT_EQ(tok.decode(Ids{byte_token(0xE2), byte_token(0x82), byte_token(0xAC)}), "\u20ac");
}

TEST(SentencePieceBpe, UnknownWithoutFallbackIsOneFusedUnk) {
  json j = spm_json();
  j["model"]["byte_fallback"] = false;
  EXPECT_EQ(load(j).encode("h\u00e9\u20ac"), (Ids{kSpaceH, 0}));
  j["model"]["fuse_unk"] = false;
  EXPECT_EQ(load(j).encode("h\u00e9\u20ac"), (Ids{kSpaceH, 0, 0}));
  j["model"]["unk_token"] = nullptr;
  EXPECT_EQ(load(j).encode("h\u00e9\u20ac"), (Ids{kSpaceH}));  // dropped, as Hugging Face does
}

TEST(SentencePieceBpe, EachStretchBetweenAddedTokensIsNormalizedAlone) {
  const Tokenizer tok = load(spm_json());
  // "hi <s> hi" is ▁hi▁ | <s> | ▁▁hi
  EXPECT_EQ(tok.encode("hi <s> hi"), (Ids{kSpaceHi, kSpace, 1, kSpaceSpace, kHi}));
  EXPECT_EQ(tok.encode("hi", true), (Ids{1, kSpaceHi}));
  EXPECT_EQ(tok.encode("", true), (Ids{1}));
  EXPECT_EQ(tok.decode(Ids{1, kSpaceHi, 2}), "<s> hi</s>");
  EXPECT_EQ(tok.decode(Ids{kSpaceHi, kSpaceSpace, kHi}), "hi  hi");
}

TEST(SentencePieceBpe, StreamingStripsOnlyTheFirstLeadingSpace) {
  const Tokenizer tok = load(spm_json());
  StreamDecoder stream(tok);
  std::string out;
  for (const std::int32_t id :
       Ids{kSpaceHi, kSpaceHi, byte_token(0xE2), byte_token(0x82), byte_token(0xAC)}) {
    out += stream.push(id);
  }
  EXPECT_EQ(out + stream.flush(), "hi hi\u20ac");
  StreamDecoder continued(tok, /*at_start_of_text=*/false);
  EXPECT_EQ(continued.push(kSpaceHi), " hi");
  EXPECT_EQ(tok.token_bytes(kSpaceHi), " hi");
  EXPECT_EQ(tok.token_bytes(kSpaceHi, true), "hi");
  EXPECT_EQ(tok.token_bytes(byte_token(0xE2)), "\xe2");
}

json metaspace_json(const char* scheme, bool split) {
  json j = spm_json();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"},
                        {"replacement", "\u2581"},
                        {"prepend_scheme", scheme},
                        {"split", split}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Metaspace"},
                                             {"replacement", "\u2581"},
                                             {"prepend_scheme", scheme},
                                             {"split", split}},
                                            {{"type", "ByteFallback"}},
                                            {{"type", "Fuse"}}})}};
  j["added_tokens"].push_back(
      {{"id", kX}, {"content", "<x>"}, {"special", false}, {"normalized", false}});
  return j;
}

TEST(MetaspacePreTokenizer, PrependSchemeDecidesWhereTheSpaceGoes) {
  EXPECT_EQ(load(metaspace_json("first", false)).encode("hi<x>hi"), (Ids{kSpaceHi, kX, kHi}));
  EXPECT_EQ(load(metaspace_json("always", false)).encode("hi<x>hi"), (Ids{kSpaceHi, kX, kSpaceHi}));
  EXPECT_EQ(load(metaspace_json("never", false)).encode("hi<x>hi"), (Ids{kHi, kX, kHi}));
  // A text that starts with an added token has no first section to prepend to.
  EXPECT_EQ(load(metaspace_json("first", false)).encode("<x>hi"), (Ids{kX, kHi}));
}

TEST(MetaspacePreTokenizer, SplitMakesEachSpaceStartAWord) {
  // One word "▁hi▁▁hi" merges ▁▁ first; split words "▁hi" "▁" "▁hi" cannot.
  EXPECT_EQ(load(metaspace_json("first", false)).encode("hi  hi"),
            (Ids{kSpaceHi, kSpaceSpace, kHi}));
  EXPECT_EQ(load(metaspace_json("first", true)).encode("hi  hi"),
            (Ids{kSpaceHi, kSpace, kSpaceHi}));
  EXPECT_EQ(load(metaspace_json("first", false)).decode(Ids{kSpaceHi, kSpaceSpace, kHi}), "hi  hi");
}

// A byte-level BPE whose pre-tokens are the whole text (ByteLevel without its regex).
json byte_level_json(json pre_tokenizer) {
  return {{"pre_tokenizer", std::move(pre_tokenizer)},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array()}}}};
}

json whole_text_byte_level() {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
}

TEST(ByteLevelBpe, IgnoreMergesTakesAWordInTheVocabularyWhole) {
  json j = byte_level_json(whole_text_byte_level());
  j["model"]["vocab"]["bc"] = 256;
  j["model"]["vocab"]["abc"] = 257;  // not reachable by the merges: a + bc
  j["model"]["merges"] = json::array({json::array({"b", "c"})});
  EXPECT_EQ(load(j).encode("abc"), (Ids{'a', 256}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load(j).encode("abc"), (Ids{257}));
  EXPECT_EQ(load(j).encode("abcc"), (Ids{'a', 256, 'c'}));
}

TEST(ByteLevelBpe, AddPrefixSpaceAndGpt2Regex) {
  const json j = byte_level_json({{"type", "ByteLevel"}, {"add_prefix_space", true}});
  EXPECT_EQ(load(j).encode("a b"), (Ids{' ', 'a', ' ', 'b'}));
  EXPECT_EQ(load(j).encode(" a"), (Ids{' ', 'a'}));
}

TEST(SplitPreTokenizer, BehaviorsJoinTheDelimiterAsHuggingFaceDoes) {
  const auto encode_with = [](const char* behavior, bool invert) {
    json split = {{"type", "Split"},
                  {"pattern", {{"String", " "}}},
                  {"behavior", behavior},
                  {"invert", invert}};
    json j = byte_level_json(
        {{"type", "Sequence"}, {"pretokenizers", json::array({split, whole_text_byte_level()})}});
    j["model"]["vocab"]["a\u0120"] = 256;  // "a "
    j["model"]["vocab"]["\u0120b"] = 257;  // " b"
    j["model"]["ignore_merges"] = true;    // so each pre-token in the vocabulary is one id
    return load(j).encode("a b");
  };
  EXPECT_EQ(encode_with("Isolated", false), (Ids{'a', ' ', 'b'}));
  EXPECT_EQ(encode_with("Removed", false), (Ids{'a', 'b'}));
  EXPECT_EQ(encode_with("MergedWithPrevious", false), (Ids{256, 'b'}));
  EXPECT_EQ(encode_with("MergedWithNext", false), (Ids{'a', 257}));
  EXPECT_EQ(encode_with("Removed", true), (Ids{' '}));
}

TEST(DigitsPreTokenizer, IndividualDigits) {
  json digits = {{"type", "Digits"}, {"individual_digits", true}};
  json j = byte_level_json(
      {{"type", "Sequence"}, {"pretokenizers", json::array({digits, whole_text_byte_level()})}});
  j["model"]["vocab"]["12"] = 256;
  j["model"]["vocab"]["x1"] = 257;
  j["model"]["merges"] = json::array({"1 2", "x 1"});
  EXPECT_EQ(load(j).encode("x12"), (Ids{'x', '1', '2'}));
  j["pre_tokenizer"]["pretokenizers"][0]["individual_digits"] = false;
  EXPECT_EQ(load(j).encode("x12"), (Ids{'x', 256}));
}

TEST(AddedTokens, LeftmostLongestWithStripping) {
  json j = byte_level_json(whole_text_byte_level());
  j["added_tokens"] = json::array(
      {{{"id", 300}, {"content", "<a>"}, {"special", true}},
       {{"id", 301}, {"content", "<a><b>"}, {"special", true}},
       {{"id", 302}, {"content", "<m>"}, {"lstrip", true}, {"rstrip", true}, {"special", true}}});
  const Tokenizer tok = load(j);
  EXPECT_EQ(tok.encode("x<a><b><a>"), (Ids{'x', 301, 300}));
  EXPECT_EQ(tok.encode("a  <m>\t b"), (Ids{'a', 302, 'b'}));
  EXPECT_EQ(tok.encode("<a"), (Ids{'<', 'a'}));
  EXPECT_EQ(tok.decode(Ids{'x', 301, 'y'}), "x<a><b>y");
}

TEST(AddedTokens, NormalizedOnesAreFoundAfterNormalization) {
  json j = byte_level_json(whole_text_byte_level());
  j["normalizer"] = {{"type", "NFC"}};
  j["added_tokens"] = json::array(
      {{{"id", 300}, {"content", "\u00e9!"}, {"special", false}, {"normalized", true}}});
  EXPECT_EQ(load(j).encode("xe\u0301!"), (Ids{'x', 300}));
}

TEST(PostProcessor, SequenceOfByteLevelAndTemplateLikeLlama3) {
  json j = byte_level_json(whole_text_byte_level());
  j["added_tokens"] =
      json::array({{{"id", 300}, {"content", "<|begin_of_text|>"}, {"special", true}},
                   {{"id", 301}, {"content", "<|end_of_text|>"}, {"special", true}}});
  j["post_processor"] = {
      {"type", "Sequence"},
      {"processors",
       json::array(
           {{{"type", "ByteLevel"}},
            {{"type", "TemplateProcessing"},
             {"single", json::array({{{"SpecialToken", {{"id", "<|begin_of_text|>"}}}},
                                     {{"Sequence", {{"id", "A"}}}},
                                     {{"SpecialToken", {{"id", "<|end_of_text|>"}}}}})}}})}};
  EXPECT_EQ(load(j).encode("a", true), (Ids{300, 'a', 301}));
  EXPECT_EQ(load(j).encode("a"), (Ids{'a'}));
}

TEST(TokenizerConfig, LlamaClassFollowsAddBosAndAddEos) {
  const json config = {{"tokenizer_class", "LlamaTokenizer"},
                       {"bos_token", "<s>"},
                       {"eos_token", {{"content", "</s>"}, {"__type", "AddedToken"}}},
                       {"add_bos_token", false},
                       {"add_eos_token", true}};
  const Tokenizer tok = load(spm_json(), config);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.encode("hi", true), (Ids{kSpaceHi, 2}));
  // Another class keeps the file's post-processor.
  EXPECT_EQ(load(spm_json(), {{"tokenizer_class", "PreTrainedTokenizerFast"}}).encode("hi", true),
            (Ids{1, kSpaceHi}));
}

TEST(MalformedTokenizerJson, ErrorsNameTheFileAndTheField) {
  const std::string file = "test tokenizer.json";
  const auto expect_refused = [&](json j, std::initializer_list<std::string> parts,
                                  const json& config = nullptr) {
    expect_format_error([&] { (void)load(j, config); }, parts);
  };
  json j = spm_json();
  j["model"]["merges"][1] = "\u2581 q";
  expect_refused(j, {file, "model.merges[1]", "\"q\"", "not in the vocabulary"});
  j = spm_json();
  j["added_tokens"][1].erase("content");
  expect_refused(j, {file, "added_tokens[1]", "content"});
  j = spm_json();
  j["normalizer"]["normalizers"][0]["type"] = "Precompiled";
  expect_refused(j, {file, "normalizer.normalizers[0].type", "Precompiled"});
  j = metaspace_json("sometimes", false);
  expect_refused(j, {file, "pre_tokenizer.prepend_scheme", "sometimes"});
  j = spm_json();
  j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<bos>";
  j["post_processor"].erase("special_tokens");
  expect_refused(j, {file, "post_processor.single[0]", "<bos>"});
  j = spm_json();
  j["decoder"]["decoders"][1]["type"] = "CTC";
  expect_refused(j, {file, "decoder.decoders[1].type", "CTC"});
  j = spm_json();
  j["model"]["type"] = "Unigram";
  expect_refused(j, {file, "model.type", "Unigram"});
  j = byte_level_json({{"type", "Split"}, {"pattern", {{"Regex", "\\p{Foo}"}}}});
  expect_refused(j, {file, "pre_tokenizer.pattern.Regex", "\\p{Foo}"});
  expect_refused(spm_json(), {"tokenizer_config.json", "eos_token", "<eos>"},
                 {{"eos_token", "<eos>"}});
  expect_format_error([] { (void)Tokenizer::from_json_strings("{\"model\": [", "", "t.json"); },
                      {"t.json", "is not valid JSON"});
}

}  // namespace
}  // namespace ferry::text
