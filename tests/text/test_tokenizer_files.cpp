// Loading: vocab.json + merges.txt, Hugging Face tokenizer.json, model directories, and the
// messages bad files produce.
#include <gtest/gtest.h>

#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/text/bpe_tokenizer.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"
#include "tests/text/gpt2_fixture.hpp"
#include "tests/text/tokenizer_test_util.hpp"

namespace ferry::text {
namespace {

using ferry::test::read_file;
using ferry::test::TempDir;
using ferry::test::write_file;
using nlohmann::json;
using test::byte_vocab;
using test::expect_format_error;

std::filesystem::path gpt2_dir() { return ferry::test::repo_data_dir() / "gpt2"; }

// GPT-2's merges as a list of "left right" lines.
std::vector<std::string> gpt2_merge_lines() {
  const std::string text = read_file(gpt2_dir() / "merges.txt");
  std::vector<std::string> lines;
  for (std::size_t start = text.find('\n') + 1; start < text.size();) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

// A tokenizer.json as transformers writes one for GPT-2, merges in either of its two forms.
json gpt2_tokenizer_json(bool merges_as_pairs) {
  json merges = json::array();
  for (const std::string& line : gpt2_merge_lines()) {
    const std::size_t space = line.find(' ');
    if (merges_as_pairs) {
      merges.push_back(json::array({line.substr(0, space), line.substr(space + 1)}));
    } else {
      merges.push_back(line);
    }
  }
  return {
      {"version", "1.0"},
      {"added_tokens",
       json::array({{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"},
        {"add_prefix_space", false},
        {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", json::parse(read_file(gpt2_dir() / "vocab.json"))},
        {"merges", merges}}},
  };
}

TEST(TokenizerJson, GivesTheSameIdsAsVocabAndMerges) {
  for (const bool pairs : {false, true}) {
    const TempDir dir;
    write_file(dir / "tokenizer.json", gpt2_tokenizer_json(pairs).dump());
    const BpeTokenizer tokenizer = BpeTokenizer::from_tokenizer_json(dir / "tokenizer.json");
    EXPECT_EQ(tokenizer.vocab_size(), 50257);
    EXPECT_EQ(tokenizer.eos_id(), 50256);
    for (const auto& c : test::reference_cases()) {
      EXPECT_EQ(tokenizer.encode(c.text), c.ids) << (pairs ? "[a, b] merges" : "\"a b\" merges");
    }
  }
}

TEST(TokenizerJson, HandMadeVocabularyWithAddedTokens) {
  json vocab = byte_vocab();
  vocab["he"] = 256;
  vocab["ll"] = 257;
  vocab["hell"] = 258;
  vocab["hello"] = 259;
  const json root = {
      {"added_tokens",
       json::array({{{"id", 260}, {"content", "<pad>"}, {"special", false}},
                    {{"id", 261}, {"content", "<|endoftext|>"}, {"special", true}}})},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"vocab", vocab}, {"merges", json::array({"h e", "l l", "he ll", "hell o"})}}},
  };
  const TempDir dir;
  write_file(dir / "tokenizer.json", root.dump());
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(dir.path());
  EXPECT_EQ(tokenizer.vocab_size(), 262);
  EXPECT_EQ(tokenizer.eos_id(), 261);
  EXPECT_EQ(tokenizer.token_id("<pad>"), 260);
  EXPECT_EQ(tokenizer.encode("hello<pad>hell<|endoftext|>"),
            (std::vector<std::int32_t>{259, 260, 258, 261}));
  EXPECT_EQ(tokenizer.encode("helo"), (std::vector<std::int32_t>{256, 'l', 'o'}));
  EXPECT_EQ(tokenizer.decode(std::vector<std::int32_t>{259, 260}), "hello<pad>");
}

TEST(TokenizerJson, RefusesWhatItCannotReproduce) {
  const TempDir dir;
  const auto path = dir / "tokenizer.json";
  const auto load = [&] { (void)BpeTokenizer::from_tokenizer_json(path); };

  json root = {{"model", {{"type", "WordPiece"}, {"vocab", byte_vocab()}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "WordPiece"});

  root = {{"pre_tokenizer", {{"type", "Whitespace"}}},
          {"model", {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array()}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "pre_tokenizer.type", "Whitespace"});

  root = {{"normalizer",
           {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "Lowercase"}}})}}},
          {"model", {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array()}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "normalizer.normalizers[0].type", "Lowercase"});

  root = {{"pre_tokenizer",
           {{"type", "Split"}, {"pattern", {{"Regex", "(?<=a)b"}}}, {"behavior", "Isolated"}}},
          {"model", {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array()}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "pre_tokenizer.pattern.Regex", "look-behind"});

  root = {
      {"pre_tokenizer", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array()}, {"dropout", 0.1}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "model.dropout"});

  root = {{"model", {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array({5})}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "model.merges[0]"});

  root = {{"model", {{"type", "BPE"}, {"vocab", byte_vocab()}, {"merges", json::array({"a"})}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "model.merges[0]", "one space"});

  root = {{"added_tokens", json::array({{{"content", "<x>"}}})},
          {"model", {{"vocab", byte_vocab()}, {"merges", json::array()}}}};
  write_file(path, root.dump());
  expect_format_error(load, {path.string(), "added_tokens[0]"});

  write_file(path, "{\"model\": ");
  expect_format_error(load, {path.string(), "is not valid JSON"});
}

TEST(VocabAndMerges, LoadFromAModelDirectory) {
  const TempDir dir;
  write_file(dir / "vocab.json", read_file(gpt2_dir() / "vocab.json"));
  write_file(dir / "merges.txt", read_file(gpt2_dir() / "merges.txt"));
  const BpeTokenizer tokenizer = BpeTokenizer::from_model_dir(dir.path());
  EXPECT_EQ(tokenizer.encode("Hello world"), (std::vector<std::int32_t>{15496, 995}));
}

TEST(VocabAndMerges, CrlfAndMissingVersionLineAreAccepted) {
  std::string merges;
  for (const std::string& line : gpt2_merge_lines()) merges += line + "\r\n";
  const BpeTokenizer tokenizer =
      BpeTokenizer::from_strings(read_file(gpt2_dir() / "vocab.json"), merges);
  for (const auto& c : test::reference_cases()) EXPECT_EQ(tokenizer.encode(c.text), c.ids);
}

TEST(VocabAndMerges, ModelDirectoryWithoutTokenizerSaysWhatIsMissing) {
  const TempDir dir;
  expect_format_error([&] { (void)BpeTokenizer::from_model_dir(dir.path()); },
                      {dir.path().string(), "tokenizer.json", "vocab.json"});
  write_file(dir / "vocab.json", "{}");
  expect_format_error([&] { (void)BpeTokenizer::from_model_dir(dir.path()); },
                      {"merges.txt is missing"});
  expect_format_error([&] { (void)BpeTokenizer::from_model_dir(dir / "nope"); },
                      {"nope", "not a directory"});
}

TEST(VocabAndMerges, BadFilesAreNamedWithTheProblem) {
  const TempDir dir;
  const auto vocab = dir / "vocab.json";
  const auto merges = dir / "merges.txt";
  const auto load = [&] { (void)BpeTokenizer::from_files(vocab, merges); };
  write_file(merges, "#version: 0.2\n");

  expect_format_error(load, {vocab.string(), "cannot open"});  // missing

  write_file(vocab, "{\"a\": 1,");
  expect_format_error(load, {vocab.string(), "is not valid JSON"});

  write_file(vocab, "[1, 2]");
  expect_format_error(load, {vocab.string(), "object"});

  json v = byte_vocab();
  v["ab"] = "x";
  write_file(vocab, v.dump());
  expect_format_error(load, {vocab.string(), "\"ab\"", "not an integer"});

  v = byte_vocab();
  v["ab"] = 0;  // the id of "!"
  write_file(vocab, v.dump());
  expect_format_error(load, {vocab.string(), "id 0", "two tokens"});

  v = byte_vocab();
  v.erase("x");
  write_file(vocab, v.dump());
  expect_format_error(load, {vocab.string(), "byte 0x78"});

  v = byte_vocab();
  v["a b"] = 300;  // a raw space cannot appear in a byte-level spelling
  write_file(vocab, v.dump());
  expect_format_error(load, {vocab.string(), "\"a b\"", "byte alphabet"});

  v = byte_vocab();
  v["ab"] = 256;
  write_file(vocab, v.dump());
  write_file(merges, "#version: 0.2\na b\nab\n");
  expect_format_error(load, {merges.string() + ":3", "\"ab\""});

  write_file(merges, "#version: 0.2\na b\nab zz\n");
  expect_format_error(load, {merges.string(), "line 3", "\"zz\"", "not in the vocabulary"});

  write_file(merges, "a b\nb a\n");  // "ba" is not a token
  expect_format_error(load, {merges.string(), "line 2", "\"ba\""});

  write_file(merges, "#version: 0.2\na b\n");
  EXPECT_NO_THROW(load());  // the files are otherwise fine
  std::filesystem::remove(merges);
  expect_format_error(load, {merges.string(), "cannot open"});
}

}  // namespace
}  // namespace ferry::text
