#!/usr/bin/env python3
"""Generates category_tables.hpp: the Unicode general category of every code point.

Hugging Face's pre-tokenizer patterns ask about categories (\\p{L}, \\p{Lu}, \\p{N}, \\p{P}...)
and White_Space (\\s); regex.cpp answers from these tables. The output is a sorted list of
maximal ranges of code points that share a category; code points in no range are unassigned
(Cn). White_Space comes from gen_unicode_tables.py's list, so the two headers agree.
Run with the Python whose Unicode version you want:
    python3 runtime/text/detail/gen_category_tables.py > runtime/text/detail/category_tables.hpp
Only the standard library is needed.
"""

import sys
import unicodedata

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
from gen_unicode_tables import (WHITE_SPACE, header, maximal_ranges, packed,  # noqa: E402
                                white_space_set)

# The enum's order; Cn (unassigned) is 0 so that code points in no range read as it.
CATEGORIES = ["Cn", "Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Pc",
              "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "So", "Zs", "Zl", "Zp",
              "Cc", "Cf", "Cs", "Co"]


def ranges():
    return maximal_ranges(lambda cp: unicodedata.category(chr(cp)), "Cn")


def main():
    white_space_set()  # checks the list against str.isspace()
    table = ranges()
    enum = ", ".join(f"k{c}" for c in CATEGORIES)
    enum = enum[:enum.index(" kSm")] + "\n   " + enum[enum.index(" kSm"):]
    lines = header("gen_category_tables.py", [
        "The general category of every code point (code points in no range are Cn) and the",
        "White_Space property, for the pre-tokenizer patterns of tokenizer.json files.",
    ]) + [
        "enum class GeneralCategory : std::uint8_t {",
        f"  {enum}",
        "};",
        f"inline constexpr int kGeneralCategoryCount = {len(CATEGORIES)};",
        "",
        "struct CategoryRange {",
        "  char32_t first;",
        "  char32_t last;  // inclusive",
        "  GeneralCategory category;",
        "};",
        "",
        f'inline constexpr const char* kCategoryTablesVersion = "{unicodedata.unidata_version}";',
        "",
        "// White_Space (PropList.txt), inclusive ranges.",
        f"inline constexpr std::array<std::array<char32_t, 2>, {len(WHITE_SPACE)}> kWhiteSpaceRanges{{{{",
    ]
    lines += [f"    {{0x{a:X}, 0x{b:X}}}," for a, b in WHITE_SPACE]
    lines += [
        "}};",
        "",
        "// Sorted, disjoint, and maximal: neighbouring ranges never share a category.",
        "// clang-format off",
        f"inline constexpr std::array<CategoryRange, {len(table)}> kCategoryRanges{{{{",
    ]
    lines += packed(f"{{0x{a:X}, 0x{b:X}, GeneralCategory::k{c}}}," for a, b, c in table)
    lines += ["}};", "// clang-format on", "", "}  // namespace ferry::text::detail"]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
