#!/usr/bin/env python3
"""Generates nfc_tables.hpp: what Unicode normalization form C (and D) needs.

tokenizer.json files of the Qwen family normalise text to NFC before splitting it, so
decomposed "e" + U+0301 and the Angstrom sign U+212B become the characters the vocabulary
knows. Three tables, all derived from Python's unicodedata:
- the canonical combining class of every code point that has one (ranges);
- the full canonical decomposition of every code point that has one, except the Hangul
  syllables, which nfc.cpp decomposes and composes arithmetically;
- the primary composites: the pairs (first, second) that compose, composition exclusions
  and singletons left out (a pair is kept only where NFC of the two gives the composite).
Run with the Python whose Unicode version you want:
    python3 runtime/text/detail/gen_nfc_tables.py > runtime/text/detail/nfc_tables.hpp
Only the standard library is needed.
"""

import sys
import unicodedata

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
from gen_unicode_tables import header, maximal_ranges, packed  # noqa: E402

HANGUL_FIRST, HANGUL_LAST = 0xAC00, 0xD7A3


def is_hangul(cp):
    return HANGUL_FIRST <= cp <= HANGUL_LAST


def combining_class_ranges():
    return maximal_ranges(lambda cp: unicodedata.combining(chr(cp)), 0)


def decompositions():
    out = []
    for cp in range(sys.maxunicode + 1):
        if is_hangul(cp) or 0xD800 <= cp <= 0xDFFF:
            continue
        nfd = unicodedata.normalize("NFD", chr(cp))
        if nfd != chr(cp):
            out.append((cp, [ord(c) for c in nfd]))
    return out


def compositions():
    out = []
    for cp in range(sys.maxunicode + 1):
        if is_hangul(cp) or 0xD800 <= cp <= 0xDFFF:
            continue
        mapping = unicodedata.decomposition(chr(cp))
        if not mapping or mapping.startswith("<"):
            continue
        parts = [int(p, 16) for p in mapping.split()]
        if len(parts) != 2:
            continue
        if unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(cp):
            out.append((parts[0], parts[1], cp))
    out.sort()
    return out


def main():
    ccc = combining_class_ranges()
    decomp = decompositions()
    comp = compositions()
    data, index = [], []
    for cp, parts in decomp:
        index.append((cp, len(data), len(parts)))
        data.extend(parts)
    max_len = max(len(parts) for _, parts in decomp)
    lines = header("gen_nfc_tables.py", [
        "Canonical combining classes, full canonical decompositions (Hangul syllables are",
        "arithmetic, in nfc.cpp) and primary composites, for Unicode normalization forms C and D.",
    ]) + [
        f'inline constexpr const char* kNfcTablesVersion = "{unicodedata.unidata_version}";',
        "",
        "struct CombiningClassRange {",
        "  char32_t first;",
        "  char32_t last;  // inclusive",
        "  std::uint8_t ccc;",
        "};",
        "",
        "struct Decomposition {",
        "  char32_t cp;",
        "  std::uint16_t offset;  // into kDecompositionData",
        "  std::uint8_t length;",
        "};",
        "",
        "struct Composition {",
        "  char32_t first;",
        "  char32_t second;",
        "  char32_t composite;",
        "};",
        "",
        f"inline constexpr int kMaxDecompositionLength = {max_len};",
        "",
        "// clang-format off",
        "// Sorted; code points in no range have class 0.",
        f"inline constexpr std::array<CombiningClassRange, {len(ccc)}> kCombiningClassRanges{{{{",
    ]
    lines += packed([f"{{0x{a:X}, 0x{b:X}, {c}}}," for a, b, c in ccc])
    lines += ["}};", "", "// Sorted by code point.",
              f"inline constexpr std::array<Decomposition, {len(index)}> kDecompositions{{{{"]
    lines += packed([f"{{0x{cp:X}, {off}, {n}}}," for cp, off, n in index])
    lines += ["}};", "",
              f"inline constexpr std::array<char32_t, {len(data)}> kDecompositionData{{{{"]
    lines += packed([f"0x{c:X}," for c in data])
    lines += ["}};", "", "// Sorted by (first, second).",
              f"inline constexpr std::array<Composition, {len(comp)}> kCompositions{{{{"]
    lines += packed([f"{{0x{a:X}, 0x{b:X}, 0x{c:X}}}," for a, b, c in comp])
    lines += ["}};", "// clang-format on", "", "}  // namespace ferry::text::detail"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
