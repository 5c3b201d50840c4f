// The Unicode properties tokenizer.json patterns ask about, as bits: a code point's general
// category (one bit of 30) and White_Space, so a character class is one mask test.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>

#include "runtime/text/detail/category_tables.hpp"

namespace ferry::text::detail {

constexpr GeneralCategory general_category_from_tables(char32_t cp) {
  const auto* it = std::lower_bound(
      kCategoryRanges.begin(), kCategoryRanges.end(), cp,
      [](const CategoryRange& range, char32_t value) { return range.last < value; });
  if (it == kCategoryRanges.end() || it->first > cp) return GeneralCategory::kCn;
  return it->category;
}

constexpr bool is_white_space(char32_t cp) {
  for (const auto& [first, last] : kWhiteSpaceRanges) {
    if (cp >= first && cp <= last) return true;
  }
  return false;
}

// JavaScript's white space (String.prototype.trim): White_Space without U+0085, plus U+FEFF.
// transformers.js strips added tokens' neighbours (lstrip/rstrip) with it.
constexpr bool is_js_space(char32_t cp) {
  return cp == 0xFEFF || (cp != 0x85 && is_white_space(cp));
}

constexpr std::uint32_t category_bit(GeneralCategory c) {
  return std::uint32_t{1} << static_cast<unsigned>(c);
}
// White_Space sits above the 30 category bits.
inline constexpr std::uint32_t kWhiteSpaceBit = std::uint32_t{1} << 31;

constexpr std::uint32_t category_mask(std::initializer_list<GeneralCategory> cs) {
  std::uint32_t mask = 0;
  for (const GeneralCategory c : cs) mask |= category_bit(c);
  return mask;
}

using GC = GeneralCategory;
inline constexpr std::uint32_t kLetterMask =
    category_mask({GC::kLu, GC::kLl, GC::kLt, GC::kLm, GC::kLo});
inline constexpr std::uint32_t kMarkMask = category_mask({GC::kMn, GC::kMc, GC::kMe});
inline constexpr std::uint32_t kNumberMask = category_mask({GC::kNd, GC::kNl, GC::kNo});
inline constexpr std::uint32_t kPunctuationMask =
    category_mask({GC::kPc, GC::kPd, GC::kPs, GC::kPe, GC::kPi, GC::kPf, GC::kPo});
inline constexpr std::uint32_t kSymbolMask = category_mask({GC::kSm, GC::kSc, GC::kSk, GC::kSo});
inline constexpr std::uint32_t kSeparatorMask = category_mask({GC::kZs, GC::kZl, GC::kZp});
inline constexpr std::uint32_t kOtherMask =
    category_mask({GC::kCc, GC::kCf, GC::kCs, GC::kCo, GC::kCn});
inline constexpr std::uint32_t kAllCategoriesMask = (std::uint32_t{1} << kGeneralCategoryCount) - 1;

// Category bit plus kWhiteSpaceBit, computed from the tables.
constexpr std::uint32_t unicode_props_from_tables(char32_t cp) {
  return category_bit(general_category_from_tables(cp)) | (is_white_space(cp) ? kWhiteSpaceBit : 0);
}

inline constexpr std::array<std::uint32_t, 128> kAsciiProps = [] {
  std::array<std::uint32_t, 128> props{};
  for (char32_t c = 0; c < 128; ++c) props[c] = unicode_props_from_tables(c);
  return props;
}();

constexpr std::uint32_t unicode_props(char32_t cp) {
  return cp < 128 ? kAsciiProps[cp] : unicode_props_from_tables(cp);
}

}  // namespace ferry::text::detail
