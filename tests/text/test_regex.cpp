// The pre-tokenizer regex subset: what Hugging Face's patterns need, in Oniguruma's semantics,
// and the clear refusal of what ferry does not implement.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/text/detail/regex.hpp"

namespace ferry::text::detail {
namespace {

// Qwen2/Qwen3's and Llama 3's split patterns, as their tokenizer.json files give them.
constexpr const char* kQwen =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The matches, with the text between them, as the pre-tokenizer's Isolated split gives them.
std::vector<std::string> pieces(const Regex& re, const std::string& text) {
  std::vector<std::string> out;
  std::size_t prev = 0;
  for (const Regex::Span& s : re.find_all(text)) {
    if (s.begin > prev) out.push_back(text.substr(prev, s.begin - prev));
    out.push_back(text.substr(s.begin, s.end - s.begin));
    prev = s.end;
  }
  if (prev < text.size()) out.push_back(text.substr(prev));
  return out;
}

using Pieces = std::vector<std::string>;

TEST(Regex, QwenPatternSplitsLikeHuggingFace) {
  const Regex re(kQwen);
  EXPECT_EQ(pieces(re, "Hello world's  end"), (Pieces{"Hello", " world", "'s", " ", " end"}));
  EXPECT_EQ(pieces(re, "I'M HERE'S"), (Pieces{"I", "'M", " HERE", "'S"}));  // (?i:...)
  EXPECT_EQ(pieces(re, "x12345"), (Pieces{"x", "1", "2", "3", "4", "5"}));
  EXPECT_EQ(pieces(re, "a\r\n\r\nb"), (Pieces{"a", "\r\n\r\n", "b"}));
  EXPECT_EQ(pieces(re, "f(x);\n  y"), (Pieces{"f", "(x", ");\n", " ", " y"}));
  EXPECT_EQ(pieces(re, "   "), (Pieces{"   "}));  // \s+(?!\S) takes a final run whole
}

TEST(Regex, Llama3TakesDigitsThreeAtATime) {
  const Regex re(kLlama3);
  EXPECT_EQ(pieces(re, "1234567"), (Pieces{"123", "456", "7"}));
  EXPECT_EQ(pieces(re, " 2024!"), (Pieces{" ", "202", "4", "!"}));
}

TEST(Regex, CaseSplittingPatternsOfNewerTokenizers) {
  // Mistral's Tekken and GPT-4o-style patterns split words at case changes.
  const Regex re(
      R"([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)");
  EXPECT_EQ(pieces(re, "HelloWorld it's HTTPServer"),
            (Pieces{"Hello", "World", " it's", " HTTPServer"}));
  EXPECT_EQ(pieces(re, "a/b\n12345"), (Pieces{"a", "/b", "\n", "123", "45"}));
}

TEST(Regex, WhiteSpaceIsUnicodeWhiteSpace) {
  const Regex re(R"(\s+)");
  // U+0085 (NEL) and U+3000 are White_Space; U+FEFF is not (unlike JavaScript's \s).
  EXPECT_EQ(pieces(re, "a\u0085\u3000b\ufeffc"), (Pieces{"a", "\u0085\u3000", "b\ufeffc"}));
  const Regex not_space(R"(\S+)");
  EXPECT_EQ(pieces(not_space, "a\ufeff b"), (Pieces{"a\ufeff", " ", "b"}));
}

TEST(Regex, ClassesCategoriesAndEscapes) {
  EXPECT_EQ(pieces(Regex(R"([^\S\r\n]+)"), "a \t\nb"), (Pieces{"a", " \t", "\nb"}));
  EXPECT_EQ(pieces(Regex(R"(\p{Lu}+)"), "abCDéÉ"), (Pieces{"ab", "CD", "é", "É"}));
  EXPECT_EQ(pieces(Regex(R"(\P{L}+)"), "ab12c"), (Pieces{"ab", "12", "c"}));
  EXPECT_EQ(pieces(Regex(R"([a-c\x64\u0065]+)"), "abcdefg"), (Pieces{"abcde", "fg"}));
  EXPECT_EQ(pieces(Regex(R"(\d+)"), "x٣4½"), (Pieces{"x", "٣4", "½"}));  // \d is Nd, not No
  EXPECT_EQ(pieces(Regex(R"(\w+)"), "foo_bar, baz"), (Pieces{"foo_bar", ", ", "baz"}));
  EXPECT_EQ(pieces(Regex(R"(\p{N})"), "①"), (Pieces{"①"}));
  EXPECT_EQ(pieces(Regex(R"(.)"), "a\nb"), (Pieces{"a", "\n", "b"}));  // '.' skips newline
  EXPECT_EQ(pieces(Regex(R"([\p{L}\p{M}]+)"), "e\u0301x y"), (Pieces{"e\u0301x", " ", "y"}));
}

TEST(Regex, BacktracksLeftmostFirstAndGreedy) {
  EXPECT_EQ(pieces(Regex("a|ab"), "ab"), (Pieces{"a", "b"}));
  EXPECT_EQ(pieces(Regex("ab|a"), "ab"), (Pieces{"ab"}));
  EXPECT_EQ(pieces(Regex("a+?"), "aa"), (Pieces{"a", "a"}));
  EXPECT_EQ(pieces(Regex("(?:ab)+c"), "ababab ababc"), (Pieces{"ababab ", "ababc"}));
  EXPECT_EQ(pieces(Regex("a{2,3}"), "aaaaaaa"), (Pieces{"aaa", "aaa", "a"}));
  EXPECT_EQ(pieces(Regex("x(?=y)"), "xxy"), (Pieces{"x", "x", "y"}));
  EXPECT_EQ(pieces(Regex(R"(\s+(?!\S)|\s+)"), "a   b"), (Pieces{"a", "  ", " ", "b"}));
  EXPECT_EQ(pieces(Regex("a++b"), "aab"), (Pieces{"aab"}));  // possessive read as greedy
}

TEST(Regex, IllFormedBytesAreSingleOtherCharacters) {
  const Regex re(R"([^\s\p{L}\p{N}]+|\p{L}+)");
  EXPECT_EQ(pieces(re,
                   "ab\xff\xfe"
                   "cd"),
            (Pieces{"ab", "\xff\xfe", "cd"}));
}

TEST(Regex, RefusesWhatItDoesNotImplementByName) {
  const auto expect_refused = [](const std::string& pattern, const std::string& what) {
    try {
      (void)Regex(pattern);
      ADD_FAILURE() << "accepted " << pattern;
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(pattern), std::string::npos) << e.what();
    }
  };
  expect_refused("(?<=a)b", "look-behind");
  expect_refused(R"((a)\1)", "escape \\1");
  expect_refused(R"(\bword)", "escape \\b");
  expect_refused("^a", "anchor");
  expect_refused(R"(\p{Han})", "property");
  expect_refused("[a[b]]", "nested");
  expect_refused("(a", "unclosed");
  expect_refused("a)", "unbalanced");
  expect_refused("(?:a*)*", "can match nothing");
  expect_refused("*a", "quantifier");
}

}  // namespace
}  // namespace ferry::text::detail
