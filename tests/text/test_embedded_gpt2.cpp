// The GPT-2 files built into the library are byte-for-byte the ones in data/gpt2.
#include <gtest/gtest.h>

#include "runtime/text/bpe_tokenizer.hpp"
#include "runtime/text/embedded_gpt2.hpp"
#include "tests/text/gpt2_fixture.hpp"

namespace ferry::text {
namespace {

TEST(EmbeddedGpt2, EqualsTheFilesInData) {
  const auto dir = ferry::test::repo_data_dir() / "gpt2";
  EXPECT_EQ(embedded_gpt2_vocab_json(), ferry::test::read_file(dir / "vocab.json"));
  EXPECT_EQ(embedded_gpt2_merges_txt(), ferry::test::read_file(dir / "merges.txt"));
}

TEST(EmbeddedGpt2, LoadsAndEncodesLikeTheFiles) {
  const BpeTokenizer embedded =
      BpeTokenizer::from_strings(embedded_gpt2_vocab_json(), embedded_gpt2_merges_txt());
  EXPECT_EQ(embedded.vocab_size(), 50257);
  for (const auto& c : test::reference_cases()) EXPECT_EQ(embedded.encode(c.text), c.ids);
}

TEST(EmbeddedGpt2, WrittenCopiesLoadFromAModelDirectory) {
  const ferry::test::TempDir dir;
  ferry::test::write_file(dir / "vocab.json", embedded_gpt2_vocab_json());
  ferry::test::write_file(dir / "merges.txt", embedded_gpt2_merges_txt());
  const BpeTokenizer loaded = BpeTokenizer::from_model_dir(dir.path());
  EXPECT_EQ(loaded.encode("Hello world"), (std::vector<std::int32_t>{15496, 995}));
}

}  // namespace
}  // namespace ferry::text
