// The zip directory reader on crafted archives.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "offload/detail/source.hpp"
#include "offload/detail/zip.hpp"
#include "runtime/core/error.hpp"
#include "tests/offload/checkpoint_builders.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload::detail {
namespace {

using ::testing::HasSubstr;

ZipDirectory read_dir(const std::string& bytes) {
  return ZipDirectory::read(bytes.size(), buffer_read_at(bytes, "z.zip"), "z.zip");
}

std::string zip_error(const std::string& bytes) {
  return test::error_text<FormatError>([&] { (void)read_dir(bytes); });
}

TEST(Zip, FindsEntriesAndTheirData) {
  for (const bool zip64 : {true, false}) {
    for (const uint32_t align : {0u, 64u}) {
      test::ZipOptions o;
      o.zip64 = zip64;
      o.align_data = align;
      const std::string bytes = test::make_zip({{"a/x", "hello", 0}, {"a/yy", "world!", 0}}, o);
      const ReadAt read_at = buffer_read_at(bytes, "z.zip");
      const ZipDirectory dir = ZipDirectory::read(bytes.size(), read_at, "z.zip");
      ASSERT_EQ(dir.entries().size(), 2u);
      const ZipEntry* y = dir.find("a/yy");
      ASSERT_NE(y, nullptr);
      EXPECT_EQ(y->uncompressed_size, 6u);
      const uint64_t off = dir.data_offset(*y, read_at);
      if (align != 0) {
        EXPECT_EQ(off % align, 0u);
      }
      EXPECT_EQ(bytes.substr(off, 6), "world!");
      EXPECT_EQ(dir.read_entry(*dir.find("a/x"), read_at, 100), "hello");
      EXPECT_EQ(dir.find("a/z"), nullptr);
    }
  }
}

TEST(Zip, RealTorchArchive) {
  const std::string file = test::read_file(test::data_dir() / "gptj/tiny-f32/pytorch_model.bin");
  const ZipDirectory dir = read_dir(file);
  EXPECT_EQ(dir.entries().size(), 27u);
  EXPECT_NE(dir.find("pytorch_model/data.pkl"), nullptr);
  EXPECT_EQ(dir.find("pytorch_model/version")->uncompressed_size, 2u);
}

TEST(Zip, NoEndRecord) {
  EXPECT_THAT(zip_error(std::string(100, 'x')),
              HasSubstr("z.zip: not a complete zip archive (no end-of-central-directory record "
                        "in its last 100 bytes)"));
  EXPECT_THAT(zip_error("PK"), HasSubstr("too short to be a zip archive"));
}

TEST(Zip, TrailingBytesAfterTheEndRecordAreNotAccepted) {
  const std::string bytes = test::make_zip({{"a/x", "hello", 0}}) + "junk";
  EXPECT_THAT(zip_error(bytes), HasSubstr("no end-of-central-directory record"));
}

TEST(Zip, CentralDirectoryBeyondTheEndRecords) {
  test::ZipOptions o;
  o.zip64 = false;
  std::string bytes = test::make_zip({{"a/x", "hello", 0}}, o);
  bytes[bytes.size() - 6] = '\x7f';  // cd offset's low byte, now past the end
  EXPECT_THAT(zip_error(bytes), HasSubstr("runs past the end records"));
}

TEST(Zip, EntryCountBeyondTheDirectory) {
  test::ZipOptions o;
  o.zip64 = false;
  std::string bytes = test::make_zip({{"a/x", "hello", 0}}, o);
  bytes[bytes.size() - 12] = 50;  // total entries
  EXPECT_THAT(zip_error(bytes), HasSubstr("claims 50 entries"));
}

TEST(Zip, Zip64ExtraMissing) {
  std::string bytes = test::make_zip({{"a/x", "hello", 0}});
  // Rename the zip64 extra's id so the placeholder offset has no value behind it.
  const std::size_t cd = bytes.rfind("a/x");
  bytes[cd + 3] = 9;
  EXPECT_THAT(zip_error(bytes), HasSubstr("zip entry 'a/x' needs a zip64 extra field"));
}

TEST(Zip, DuplicateEntries) {
  EXPECT_THAT(zip_error(test::make_zip({{"a/x", "1", 0}, {"a/x", "2", 0}})),
              HasSubstr("holds entry 'a/x' twice"));
}

TEST(Zip, LocalHeaderMismatch) {
  test::ZipOptions o;
  o.zip64 = false;
  std::string bytes = test::make_zip({{"a/x", "hello", 0}, {"a/y", "world", 0}}, o);
  const ReadAt read_at = buffer_read_at(bytes, "z.zip");
  // Point entry a/y's local header offset (last 4 bytes of its fixed part) at a/x's header.
  const std::size_t name = bytes.rfind("a/y");
  bytes[name - 4] = 0;
  bytes[name - 3] = 0;
  const ZipDirectory dir = ZipDirectory::read(bytes.size(), read_at, "z.zip");
  EXPECT_THAT(
      test::error_text<FormatError>([&] { (void)dir.data_offset(*dir.find("a/y"), read_at); }),
      HasSubstr("zip entry 'a/y' local header at byte 0 names a different entry"));
}

TEST(Zip, OversizedEntryIsNotRead) {
  const std::string bytes = test::make_zip({{"a/x", std::string(100, 'x'), 0}});
  const ReadAt read_at = buffer_read_at(bytes, "z.zip");
  const ZipDirectory dir = ZipDirectory::read(bytes.size(), read_at, "z.zip");
  EXPECT_THAT(
      test::error_text<FormatError>([&] { (void)dir.read_entry(*dir.find("a/x"), read_at, 99); }),
      HasSubstr("'a/x' is 100 bytes, more than the 99 byte limit"));
}

}  // namespace
}  // namespace ferry::offload::detail
