// Unicode normalization forms C and D (the NFC/NFD normalizers), against Python's unicodedata.
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "runtime/text/detail/nfc.hpp"
#include "runtime/text/detail/nfc_tables.hpp"
#include "runtime/text/detail/unicode_tables.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

TEST(Nfc, ComposesWhatTheQwenFixtureNeeds) {
  EXPECT_EQ(to_nfc("caf"
                   "e\u0301"),
            "caf\u00e9");
  EXPECT_EQ(to_nfc("\u212b"), "\u00c5");              // Angstrom sign → Å
  EXPECT_EQ(to_nfc("\u2126"), "\u03a9");              // Ohm sign → Ω (a singleton)
  EXPECT_EQ(to_nfc("\u1100\u1161\u11a8"), "\uac01");  // conjoining jamo → 각
  EXPECT_EQ(to_nfc("\uac00\u11a8"), "\uac01");        // LV syllable + T
}

TEST(Nfc, ReordersMarksByCombiningClassAndSkipsBlockedOnes) {
  EXPECT_EQ(to_nfc("q\u0307\u0323"), "q\u0323\u0307");
  EXPECT_EQ(to_nfc("\u1e0b\u0323"), "\u1e0d\u0307");
  EXPECT_EQ(to_nfc("A\u030a\u0301"), "\u01fa");
  EXPECT_EQ(to_nfc("a\u0308\u0301\u0323"), "\u1ea1\u0308\u0301");
  EXPECT_EQ(to_nfc("\u0f73"), "\u0f71\u0f72");  // a composition exclusion stays decomposed
}

TEST(Nfd, DecomposesFully) {
  EXPECT_EQ(to_nfd("\u01fa"), "A\u030a\u0301");
  EXPECT_EQ(to_nfd("\uac01"), "\u1100\u1161\u11a8");
  EXPECT_EQ(to_nfd("\u1e0b\u0323"), "d\u0323\u0307");
}

TEST(Nfc, LeavesAsciiAndIllFormedBytesAlone) {
  EXPECT_EQ(to_nfc("plain ASCII text\n"), "plain ASCII text\n");
  const std::string bad = "e\xcc\x81\xff\xcc";  // é decomposed, a stray byte, a cut sequence
  EXPECT_EQ(to_nfc(bad), "\u00e9\xff\xcc");
}

TEST(Nfc, IsIdempotentOnRandomText) {
  // Letters, marks, jamo and composites mixed: NFC(NFC(x)) == NFC(x) and NFC(NFD(x)) == NFC(x).
  const char32_t pool[] = {U'a',      U'e',      U'A',      U'\u0301', U'\u0308',
                           U'\u0323', U'\u030a', U'\u1100', U'\u1161', U'\u11a8',
                           U'\u00e9', U'\u212b', U'\u1e0b', U'\u0f73'};
  std::mt19937 rng(7);
  for (int round = 0; round < 500; ++round) {
    std::u32string s;
    for (int k = 0; k < 8; ++k) s += pool[rng() % std::size(pool)];
    std::string utf8;
    for (const char32_t cp : s) append_utf8(utf8, cp);
    const std::string nfc = to_nfc(utf8);
    ASSERT_EQ(to_nfc(nfc), nfc);
    ASSERT_EQ(to_nfc(to_nfd(utf8)), nfc);
  }
}

TEST(Nfc, TablesComeFromTheSameUnicodeVersionAsTheClasses) {
  EXPECT_STREQ(kNfcTablesVersion, kUnicodeTablesVersion);
}

}  // namespace
}  // namespace ferry::text::detail
