#include "runtime/text/detail/byte_alphabet.hpp"

#include <array>

#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

// Bytes that are printable Latin-1 map to themselves; the other 68 (controls, space, DEL,
// NBSP, soft hyphen...) take U+0100, U+0101, ... in byte order. Every code point used is
// therefore below 256 + 68.
constexpr char32_t kAlphabetEnd = 256 + 68;

constexpr bool maps_to_itself(unsigned b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

struct Alphabet {
  std::array<char32_t, 256> to_char{};
  std::array<std::int16_t, kAlphabetEnd> to_byte{};  // -1: not in the alphabet
};

constexpr Alphabet make_alphabet() {
  Alphabet a;
  for (auto& b : a.to_byte) b = -1;
  char32_t next_extra = 256;
  for (unsigned b = 0; b < 256; ++b) {
    a.to_char[b] = maps_to_itself(b) ? char32_t{b} : next_extra++;
    a.to_byte[a.to_char[b]] = static_cast<std::int16_t>(b);
  }
  return a;
}

constexpr Alphabet kAlphabet = make_alphabet();
static_assert(kAlphabet.to_char[' '] == U'\u0120', "space is spelled 'Ġ' in GPT-2's files");
static_assert(kAlphabet.to_char['\n'] == U'\u010A', "newline is spelled 'Ċ' in GPT-2's files");

}  // namespace

char32_t byte_to_char(std::uint8_t b) { return kAlphabet.to_char[b]; }

std::optional<std::uint8_t> char_to_byte(char32_t cp) {
  if (cp >= kAlphabetEnd || kAlphabet.to_byte[cp] < 0) return std::nullopt;
  return static_cast<std::uint8_t>(kAlphabet.to_byte[cp]);
}

std::string bytes_to_token_string(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) append_utf8(out, byte_to_char(static_cast<std::uint8_t>(c)));
  return out;
}

std::optional<std::string> token_string_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  for (std::size_t pos = 0; pos < token.size();) {
    const Utf8Char ch = decode_utf8(token, pos);
    if (ch.status != Utf8Status::kOk) return std::nullopt;
    const std::optional<std::uint8_t> b = char_to_byte(ch.cp);
    if (!b) return std::nullopt;
    out += static_cast<char>(*b);
    pos += ch.len;
  }
  return out;
}

}  // namespace ferry::text::detail
