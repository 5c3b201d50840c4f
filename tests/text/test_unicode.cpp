// UTF-8 decoding, GPT-2's byte alphabet and the generated character-class tables.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/text/detail/byte_alphabet.hpp"
#include "runtime/text/detail/char_class.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

Utf8Char decode(std::string_view s) { return decode_utf8(s, 0); }

TEST(Utf8, DecodesEveryLength) {
  EXPECT_EQ(decode("A").cp, U'A');
  EXPECT_EQ(decode("\xC3\xA9").cp, U'\u00E9');
  EXPECT_EQ(decode("\xC3\xA9").len, 2u);
  EXPECT_EQ(decode("\xE2\x82\xAC").cp, U'\u20AC');
  EXPECT_EQ(decode("\xF0\x9F\xA4\x96").cp, U'\U0001F916');
  EXPECT_EQ(decode("\xF0\x9F\xA4\x96").len, 4u);
  EXPECT_EQ(decode("\xF4\x8F\xBF\xBF").cp, U'\U0010FFFF');
  EXPECT_EQ(decode("\xF4\x8F\xBF\xBF").status, Utf8Status::kOk);
}

TEST(Utf8, IllFormedSequencesReportTheirMaximalSubpart) {
  struct Case {
    std::string bytes;
    std::uint32_t len;
  };
  const std::vector<Case> cases = {
      {"\x80", 1},              // stray continuation byte
      {"\xC0\x80", 1},          // overlong lead
      {"\xE0\x80\x80", 1},      // overlong three-byte form
      {"\xED\xA0\x80", 1},      // surrogate U+D800
      {"\xF4\x90\x80\x80", 1},  // past U+10FFFF
      {"\xF5\x80", 1},
      {"\xE2\x82\x41", 2},  // cut short by an ASCII byte: lead + one good continuation
      {"\xF0\x9F\xA4\x41", 3},
  };
  for (const Case& c : cases) {
    const Utf8Char ch = decode(c.bytes);
    EXPECT_EQ(ch.status, Utf8Status::kInvalid) << testing::PrintToString(c.bytes);
    EXPECT_EQ(ch.len, c.len) << testing::PrintToString(c.bytes);
    EXPECT_EQ(ch.cp, kReplacementChar);
  }
}

TEST(Utf8, TruncatedSequenceIsIncomplete) {
  EXPECT_EQ(decode("\xE2\x82").status, Utf8Status::kIncomplete);
  EXPECT_EQ(decode("\xE2\x82").len, 2u);
  EXPECT_EQ(decode("\xF0\x9F\xA4").status, Utf8Status::kIncomplete);
  EXPECT_EQ(decode("\xF0").status, Utf8Status::kIncomplete);
  // A lead that could never start a valid sequence is invalid, not incomplete.
  EXPECT_EQ(decode("\xC1").status, Utf8Status::kInvalid);
  // So is a lead whose first continuation is already out of range.
  EXPECT_EQ(decode("\xE0\x80").status, Utf8Status::kInvalid);
}

TEST(Utf8, AppendRoundTripsEveryScalarValue) {
  for (char32_t cp = 0; cp <= 0x10FFFF; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;
    std::string s;
    append_utf8(s, cp);
    const Utf8Char ch = decode(s);
    ASSERT_EQ(ch.status, Utf8Status::kOk) << std::hex << static_cast<std::uint32_t>(cp);
    ASSERT_EQ(ch.cp, cp);
    ASSERT_EQ(ch.len, s.size());
  }
}

TEST(ByteAlphabet, MatchesGpt2Spellings) {
  EXPECT_EQ(bytes_to_token_string(" the"), "\u0120the");  // "Ġthe"
  EXPECT_EQ(bytes_to_token_string("\n"), "\u010A");       // "Ċ"
  EXPECT_EQ(bytes_to_token_string(std::string(1, '\0')), "\u0100");
  EXPECT_EQ(bytes_to_token_string("\xAD"), "\u0143");  // soft hyphen, the last remapped byte
  EXPECT_EQ(bytes_to_token_string("!~\xA1\xFF"), "!~\u00A1\u00FF");
}

TEST(ByteAlphabet, RoundTripsEveryByteAndRejectsOthers) {
  for (unsigned b = 0; b < 256; ++b) {
    const std::string bytes(1, static_cast<char>(b));
    EXPECT_EQ(token_string_to_bytes(bytes_to_token_string(bytes)), bytes) << b;
    EXPECT_EQ(char_to_byte(byte_to_char(static_cast<std::uint8_t>(b))), b);
  }
  EXPECT_FALSE(token_string_to_bytes("\u0144").has_value());  // first code point past the map
  EXPECT_FALSE(token_string_to_bytes(" ").has_value());       // space is spelled Ġ
  EXPECT_FALSE(token_string_to_bytes("\u20AC").has_value());
  EXPECT_FALSE(token_string_to_bytes("\xC3").has_value());  // not UTF-8
}

TEST(CharClass, ClassifiesAcrossScripts) {
  EXPECT_EQ(char_class(U'a'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'Z'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'7'), CharClass::kNumber);
  EXPECT_EQ(char_class(U'_'), CharClass::kOther);
  EXPECT_EQ(char_class(U' '), CharClass::kSpace);
  EXPECT_EQ(char_class(U'\t'), CharClass::kSpace);
  EXPECT_EQ(char_class(U'\x1C'), CharClass::kOther);  // isspace() in Python, not White_Space
  EXPECT_EQ(char_class(U'\u00A0'), CharClass::kSpace);
  EXPECT_EQ(char_class(U'\u2009'), CharClass::kSpace);
  EXPECT_EQ(char_class(U'\u3000'), CharClass::kSpace);
  EXPECT_EQ(char_class(U'\u200B'), CharClass::kOther);  // zero-width space is a format char
  EXPECT_EQ(char_class(U'\u00E9'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'\u03A9'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'\u4E2D'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'\uD55C'), CharClass::kLetter);
  EXPECT_EQ(char_class(U'\u0663'), CharClass::kNumber);  // Arabic-Indic three
  EXPECT_EQ(char_class(U'\u00BD'), CharClass::kNumber);  // ½ is No
  EXPECT_EQ(char_class(U'\u2167'), CharClass::kNumber);  // Roman numeral eight is Nl
  EXPECT_EQ(char_class(U'\U0001F916'), CharClass::kOther);
  EXPECT_EQ(char_class(U'\U00020000'), CharClass::kLetter);  // CJK extension B
  EXPECT_EQ(char_class(U'\U0010FFFF'), CharClass::kOther);
}

TEST(CharClass, TablesAreSortedDisjointAndMaximal) {
  for (std::size_t i = 0; i < kCharClassRanges.size(); ++i) {
    const CharClassRange& range = kCharClassRanges[i];
    ASSERT_LE(range.first, range.last);
    ASSERT_NE(range.cls, CharClass::kOther);
    if (i > 0) {
      const CharClassRange& prev = kCharClassRanges[i - 1];
      ASSERT_LT(prev.last, range.first);
      ASSERT_FALSE(prev.last + 1 == range.first && prev.cls == range.cls)
          << std::hex << static_cast<std::uint32_t>(range.first);
    }
  }
  EXPECT_LE(kCharClassRanges.back().last, U'\U0010FFFF');
}

}  // namespace
}  // namespace ferry::text::detail
