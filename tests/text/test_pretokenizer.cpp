// GPT-2's pre-tokeniser scanner against the pieces its regex gives (computed with Python's
// `regex` module for the pattern in pretokenizer.hpp).
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "runtime/text/detail/pretokenizer.hpp"

namespace ferry::text::detail {
namespace {

using Pieces = std::vector<std::string>;

Pieces split(std::string_view text) {
  Pieces out;
  for (const std::string_view p : split_gpt2_pieces(text)) out.emplace_back(p);
  return out;
}

TEST(Gpt2PreTokenizer, MatchesTheRegex) {
  EXPECT_EQ(split("Hello world"), (Pieces{"Hello", " world"}));
  EXPECT_EQ(split("I'm don'T 'sam"), (Pieces{"I", "'m", " don", "'", "T", " '", "sam"}));
  EXPECT_EQ(split("it's 're"), (Pieces{"it", "'s", " '", "re"}));
  EXPECT_EQ(split("we'll they've you're he'd"),
            (Pieces{"we", "'ll", " they", "'ve", " you", "'re", " he", "'d"}));
  EXPECT_EQ(split("'''"), (Pieces{"'''"}));
  EXPECT_EQ(split("3.14 1e-5"), (Pieces{"3", ".", "14", " 1", "e", "-", "5"}));
  EXPECT_EQ(split(" 123abc"), (Pieces{" 123", "abc"}));
  EXPECT_EQ(split("?!  ..."), (Pieces{"?!", " ", " ..."}));
  EXPECT_EQ(split("\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"),
            (Pieces{"\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"}));
}

TEST(Gpt2PreTokenizer, WhiteSpaceRunsGiveTheirLastCharacterToTheNextPiece) {
  EXPECT_EQ(split("  word"), (Pieces{" ", " word"}));
  EXPECT_EQ(split("a  \n\nb"), (Pieces{"a", "  \n", "\n", "b"}));
  EXPECT_EQ(split("x   "), (Pieces{"x", "   "}));
  EXPECT_EQ(split("a \t b"), (Pieces{"a", " \t", " b"}));
  EXPECT_EQ(split("\n\n\nfoo"), (Pieces{"\n\n", "\n", "foo"}));
  EXPECT_EQ(split("x\u00A0\u00A0y"), (Pieces{"x", "\u00A0", "\u00A0", "y"}));
  EXPECT_EQ(split("a\u3000\u3000b"), (Pieces{"a", "\u3000", "\u3000", "b"}));
  EXPECT_EQ(split(" "), (Pieces{" "}));
  EXPECT_EQ(split("\n"), (Pieces{"\n"}));
  EXPECT_EQ(split(""), (Pieces{}));
}

TEST(Gpt2PreTokenizer, IllFormedBytesAreSingleOtherCharacters) {
  EXPECT_EQ(split("a\xFF"
                  "b"),
            (Pieces{"a", "\xFF", "b"}));
  EXPECT_EQ(split("\xFF\xFE"), (Pieces{"\xFF\xFE"}));
  EXPECT_EQ(split(" \xFFx"), (Pieces{" \xFF", "x"}));
  EXPECT_EQ(split("!\xC3"), (Pieces{"!\xC3"}));  // truncated at the end
  EXPECT_EQ(split("\xC3"
                  "A"),
            (Pieces{"\xC3", "A"}));
}

TEST(Gpt2PreTokenizer, PiecesCoverRandomBytesExactly) {
  std::mt19937 rng(1234);
  // Bytes drawn mostly from the interesting ones: space, apostrophe, letters, UTF-8 leads
  // and continuations, so every branch of the scanner is exercised.
  const std::string alphabet =
      std::string(" \t\n'sdmtlrev1aZ.!") + "\xC3\xA9\xE3\x80\x80\xF0\x9F\xA4\x96\x80\xFF";
  for (int round = 0; round < 2000; ++round) {
    std::string text;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) text += alphabet[rng() % alphabet.size()];
    std::string joined;
    for (const std::string_view piece : split_gpt2_pieces(text)) {
      ASSERT_FALSE(piece.empty()) << testing::PrintToString(text);
      joined += piece;
    }
    ASSERT_EQ(joined, text);
  }
}

}  // namespace
}  // namespace ferry::text::detail
