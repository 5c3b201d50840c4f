// GPT-2's reversible map between bytes and printable code points (bytes_to_unicode in
// OpenAI's encoder.py). Vocabulary and merges files spell every token in this alphabet so
// that spaces, control bytes and partial UTF-8 survive as visible text: " the" is "Ġthe".
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace ferry::text::detail {

// The printable code point that stands for byte b.
char32_t byte_to_char(std::uint8_t b);
// The byte a code point stands for, if it is in the alphabet.
std::optional<std::uint8_t> char_to_byte(char32_t cp);

// Raw bytes → the UTF-8 spelling a vocabulary file uses.
std::string bytes_to_token_string(std::string_view bytes);
// A vocabulary spelling → raw bytes; nullopt when it is not valid UTF-8 or holds a character
// outside the alphabet (so it cannot be a byte-level token).
std::optional<std::string> token_string_to_bytes(std::string_view token);

}  // namespace ferry::text::detail
