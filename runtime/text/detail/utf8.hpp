// UTF-8 decoding that never fails: the tokenizer must accept any bytes, so a malformed
// sequence is reported (with the length of its maximal ill-formed subpart) instead of thrown.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace ferry::text::detail {

enum class Utf8Status : std::uint8_t {
  kOk,          // a well-formed character
  kInvalid,     // ill-formed; `len` bytes (at least 1) are one unit of garbage
  kIncomplete,  // a well-formed prefix cut off by the end of the input
};

struct Utf8Char {
  char32_t cp;  // U+FFFD unless status is kOk
  std::uint32_t len;
  Utf8Status status;
};

inline constexpr char32_t kReplacementChar = 0xFFFD;

// Decodes the character at s[pos] (pos < s.size()) following Unicode's table of well-formed
// byte sequences (no overlongs, no surrogates, nothing past U+10FFFF). The length of an
// ill-formed sequence is its maximal subpart, so replacing each with U+FFFD gives the
// substitution the Unicode standard recommends.
inline Utf8Char decode_utf8(std::string_view s, std::size_t pos) {
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const unsigned char b0 = byte(pos);
  if (b0 < 0x80) return {b0, 1, Utf8Status::kOk};

  std::uint32_t need = 0;              // continuation bytes after the lead
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the first continuation byte
  char32_t cp = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1Fu;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0Fu;
    if (b0 == 0xE0) lo = 0xA0;  // overlong below U+0800
    if (b0 == 0xED) hi = 0x9F;  // surrogates U+D800..U+DFFF
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07u;
    if (b0 == 0xF0) lo = 0x90;  // overlong below U+10000
    if (b0 == 0xF4) hi = 0x8F;  // beyond U+10FFFF
  } else {
    return {kReplacementChar, 1, Utf8Status::kInvalid};  // C0, C1, F5..FF, or a stray 80..BF
  }

  for (std::uint32_t i = 1; i <= need; ++i) {
    if (pos + i >= s.size()) return {kReplacementChar, i, Utf8Status::kIncomplete};
    const unsigned char b = byte(pos + i);
    const unsigned char min = i == 1 ? lo : 0x80;
    const unsigned char max = i == 1 ? hi : 0xBF;
    if (b < min || b > max) return {kReplacementChar, i, Utf8Status::kInvalid};
    cp = (cp << 6) | (b & 0x3Fu);
  }
  return {cp, need + 1, Utf8Status::kOk};
}

// Appends cp (a valid scalar value) as UTF-8.
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

}  // namespace ferry::text::detail
