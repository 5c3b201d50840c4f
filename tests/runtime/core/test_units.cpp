#include <gtest/gtest.h>

#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry {
namespace {

TEST(Units, ParsesSizes) {
  EXPECT_EQ(parse_size("512MiB"), 512ull << 20);
  EXPECT_EQ(parse_size("4GiB"), 4ull << 30);
  EXPECT_EQ(parse_size("1.5GB"), 1500000000ull);
  EXPECT_EQ(parse_size("1048576"), 1048576ull);
  EXPECT_EQ(parse_size("2 kib"), 2048ull);
  EXPECT_EQ(parse_size("0.5GiB"), 512ull << 20);
  EXPECT_EQ(parse_size("10M"), 10000000ull);
}

TEST(Units, RejectsNonsense) {
  for (const char* bad : {"", "GiB", "4XB", "1.2.3GB", "-1GiB", "four", "1e3"}) {
    try {
      parse_size(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find("512MiB"), std::string::npos) << e.what();
    }
  }
}

TEST(Units, Formats) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(384ull << 20), "384.0 MiB");
  EXPECT_EQ(format_bytes(3ull << 30), "3.00 GiB");
}

}  // namespace
}  // namespace ferry
