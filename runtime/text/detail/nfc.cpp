#include "runtime/text/detail/nfc.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "runtime/text/detail/nfc_tables.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

// Hangul syllables decompose and compose by arithmetic (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

// An ill-formed byte is carried as this plus its value: above U+10FFFF, so no table knows it,
// and written back as the byte itself.
constexpr char32_t kRawByte = 0x110000;

std::uint8_t combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const auto* it =
      std::lower_bound(kCombiningClassRanges.begin(), kCombiningClassRanges.end(), cp,
                       [](const CombiningClassRange& r, char32_t value) { return r.last < value; });
  if (it == kCombiningClassRanges.end() || it->first > cp) return 0;
  return it->ccc;
}

void decompose(char32_t cp, std::vector<char32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    const auto* it =
        std::lower_bound(kDecompositions.begin(), kDecompositions.end(), cp,
                         [](const Decomposition& d, char32_t value) { return d.cp < value; });
    if (it != kDecompositions.end() && it->cp == cp) {
      out.insert(out.end(), kDecompositionData.begin() + it->offset,
                 kDecompositionData.begin() + it->offset + it->length);
      return;
    }
  }
  out.push_back(cp);
}

// The primary composite of a and b, or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);
  }
  const auto* it =
      std::lower_bound(kCompositions.begin(), kCompositions.end(), std::pair{a, b},
                       [](const Composition& c, std::pair<char32_t, char32_t> key) {
                         return c.first != key.first ? c.first < key.first : c.second < key.second;
                       });
  if (it != kCompositions.end() && it->first == a && it->second == b) return it->composite;
  return 0;
}

// Full canonical decomposition, then the canonical ordering of every run of non-starters.
std::vector<char32_t> decomposed(std::string_view text) {
  std::vector<char32_t> out;
  out.reserve(text.size());
  for (std::size_t pos = 0; pos < text.size();) {
    const Utf8Char ch = decode_utf8(text, pos);
    if (ch.status == Utf8Status::kOk) {
      decompose(ch.cp, out);
      pos += ch.len;
    } else {
      out.push_back(kRawByte + static_cast<unsigned char>(text[pos]));
      ++pos;
    }
  }
  for (std::size_t i = 0; i < out.size();) {
    if (combining_class(out[i]) == 0) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < out.size() && combining_class(out[end]) != 0) ++end;
    std::stable_sort(out.begin() + static_cast<std::ptrdiff_t>(i),
                     out.begin() + static_cast<std::ptrdiff_t>(end), [](char32_t a, char32_t b) {
                       return combining_class(a) < combining_class(b);
                     });
    i = end;
  }
  return out;
}

void compose_in_place(std::vector<char32_t>& cps) {
  std::size_t n = 0;            // characters kept so far
  std::ptrdiff_t starter = -1;  // index of the last starter kept
  int last_class = 0;           // class of the last character kept after it
  for (const char32_t cp : cps) {
    const int cls = combining_class(cp);
    if (starter >= 0) {
      // A character between the starter and cp blocks them when it is a starter or of a
      // class at least cp's.
      const bool adjacent = static_cast<std::ptrdiff_t>(n) == starter + 1;
      if (adjacent || (last_class != 0 && last_class < cls)) {
        if (const char32_t composite = compose(cps[static_cast<std::size_t>(starter)], cp)) {
          cps[static_cast<std::size_t>(starter)] = composite;
          continue;
        }
      }
    }
    if (cls == 0) {
      starter = static_cast<std::ptrdiff_t>(n);
      last_class = 0;
    } else {
      last_class = cls;
    }
    cps[n++] = cp;
  }
  cps.resize(n);
}

std::string encode(const std::vector<char32_t>& cps) {
  std::string out;
  out.reserve(cps.size() * 2);
  for (const char32_t cp : cps) {
    if (cp >= kRawByte) {
      out += static_cast<char>(cp - kRawByte);
    } else {
      append_utf8(out, cp);
    }
  }
  return out;
}

// Whether every byte of the text is below `limit`: text below U+0300 (lead bytes under 0xCC)
// has no combining mark and is already NFC; text below U+00C0 (under 0xC3) has nothing that
// decomposes either.
bool bytes_below(std::string_view text, unsigned char limit) {
  return std::none_of(text.begin(), text.end(),
                      [limit](char c) { return static_cast<unsigned char>(c) >= limit; });
}

}  // namespace

std::string to_nfc(std::string_view text) {
  if (bytes_below(text, 0xCC)) return std::string(text);
  std::vector<char32_t> cps = decomposed(text);
  compose_in_place(cps);
  return encode(cps);
}

std::string to_nfd(std::string_view text) {
  if (bytes_below(text, 0xC3)) return std::string(text);
  return encode(decomposed(text));
}

}  // namespace ferry::text::detail
