// The class (letter, number, white space, other) GPT-2's pre-tokeniser gives a code point.
#pragma once

#include <algorithm>
#include <array>

#include "runtime/text/detail/unicode_tables.hpp"

namespace ferry::text::detail {

// Binary search of the generated ranges; constexpr so the ASCII table below is built at
// compile time (no static-initialisation order to worry about).
constexpr CharClass char_class_from_tables(char32_t cp) {
  // The first range whose last code point is >= cp is the only one that can hold cp.
  const auto* it = std::lower_bound(
      kCharClassRanges.begin(), kCharClassRanges.end(), cp,
      [](const CharClassRange& range, char32_t value) { return range.last < value; });
  if (it == kCharClassRanges.end() || it->first > cp) return CharClass::kOther;
  return it->cls;
}

// ASCII dominates English text and code, so it is answered from a 128-entry table.
inline constexpr std::array<CharClass, 128> kAsciiClasses = [] {
  std::array<CharClass, 128> classes{};
  for (char32_t c = 0; c < 128; ++c) classes[c] = char_class_from_tables(c);
  return classes;
}();

constexpr CharClass char_class(char32_t cp) {
  return cp < 128 ? kAsciiClasses[cp] : char_class_from_tables(cp);
}

}  // namespace ferry::text::detail
