// The ferry pack format: write_pack and Checkpoint::open round-trip any blobs and dtypes; blobs
// are 4 KiB aligned and one read each; every kind of damage — a flipped bit, a truncated file,
// another version, a foreign file, a damaged header — is refused with a message saying what.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "offload/checkpoint.hpp"
#include "offload/detail/pack_format.hpp"
#include "offload/detail/xxhash64.hpp"
#include "offload/layer_streamer.hpp"
#include "offload/pack_writer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using test::error_text;

// Tensor bytes that depend on the tensor and the byte index only.
std::byte byte_of(std::size_t blob, std::size_t tensor, std::size_t i) {
  return static_cast<std::byte>((blob * 131 + tensor * 31 + i * 7 + i / 251) & 0xff);
}

// Two blobs of awkward sizes: a layer of three tensors (one packed) and a "head" of one, with a
// checksum chunk boundary inside the second blob.
std::vector<PackBlobSpec> specs() {
  return {{"layer 0",
           {{"a", DType::f32, Shape{3, 5}},
            {"b", DType::q4_g64, Shape{7, 100}},
            {"c", DType::f16, Shape{11}}}},
          {"head", {{"d", DType::q8, Shape{300, 1000}}}}};
}

fs::path write(const fs::path& dir) {
  const fs::path file = dir / "model.ferry";
  PackWriteOptions o;
  o.metadata = {{"model", {{"n_layer", 1}}}};
  write_pack(
      file, specs(),
      [](std::size_t b, std::size_t t, std::span<std::byte> dst) {
        for (std::size_t i = 0; i < dst.size(); ++i) dst[i] = byte_of(b, t, i);
      },
      o);
  return file;
}

TEST(Xxh64, MatchesTheReference) {
  EXPECT_EQ(detail::xxh64("", 0), 0xEF46DB3751D8E999ull);
  EXPECT_EQ(detail::xxh64("a", 1), 0xD24EC4F1A98C6E5Bull);
  EXPECT_EQ(detail::xxh64("abc", 3), 0x44BC2CF5AD770999ull);
  const char* s = "Nobody inspects the spammish repetition";
  EXPECT_EQ(detail::xxh64(s, std::strlen(s)), 0xFBCEA83C8A378BF1ull);
}

TEST(Pack, RoundTripsTensorsAndMetadata) {
  test::TempDir dir;
  const fs::path file = write(dir.path());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1)
      << "only model.ferry, no unfinished file";
  const Checkpoint ck = Checkpoint::open(dir.path());  // the directory finds model.ferry
  EXPECT_EQ(ck.format(), CheckpointFormat::ferry_pack);
  EXPECT_TRUE(ck.has_checksums());
  EXPECT_EQ((*ck.pack_metadata())["model"]["n_layer"], 1);
  const auto blobs = specs();
  for (std::size_t b = 0; b < blobs.size(); ++b) {
    for (std::size_t t = 0; t < blobs[b].tensors.size(); ++t) {
      const auto& spec = blobs[b].tensors[t];
      const TensorEntry& e = ck.at(spec.name);
      EXPECT_EQ(e.dtype, spec.dtype);
      EXPECT_EQ(e.shape, spec.shape);
      EXPECT_EQ(e.nbytes, spec.nbytes());
      EXPECT_EQ(e.offset_bytes % 64, 0u);
      std::vector<std::byte> got(e.nbytes);
      ck.read(e, got.data());
      for (std::size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], byte_of(b, t, i)) << i;
      // A part of a tensor (an embedding row) reads and checks too.
      std::vector<std::byte> part(7);
      ck.read_range(e, e.nbytes / 2, 7, part.data());
      EXPECT_EQ(part[0], byte_of(b, t, e.nbytes / 2));
    }
  }
  EXPECT_EQ(ck.at("d").nbytes, 300u * packed_row_bytes(DType::q8, 1000));
  // Each blob is one aligned read, and all of it is checked.
  const UnitLayout l = plan_unit_reads(ck, {"a", "b", "c"});
  ASSERT_EQ(l.ranges.size(), 1u);
  EXPECT_EQ(l.ranges[0].offset_bytes, detail::kPackAlignment);
  EXPECT_EQ(ck.verify_all(),
            ck.at("c").offset_bytes + ck.at("c").nbytes - 4096 + ck.at("d").nbytes);
}

TEST(Pack, WritingIsDeterministic) {
  test::TempDir a, b;
  EXPECT_EQ(test::read_file(write(a.path())), test::read_file(write(b.path())));
}

void flip(const fs::path& file, uint64_t at, unsigned char mask = 0x01) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(at));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ mask);
  f.seekp(static_cast<std::streamoff>(at));
  f.write(&c, 1);
}

TEST(Pack, AFlippedBitNamesItsBlobAndTensor) {
  test::TempDir dir;
  const fs::path file = write(dir.path());
  uint64_t at = 0;
  {
    const Checkpoint ck = Checkpoint::open(file);
    at = ck.at("d").offset_bytes + 299 * 1000;
  }
  flip(file, at, 0x80);
  const Checkpoint ck = Checkpoint::open(file);  // the header is intact: opening works
  std::vector<std::byte> buf(ck.at("d").nbytes);
  std::string msg = error_text<FormatError>([&] { ck.read(ck.at("d"), buf.data()); });
  EXPECT_NE(msg.find("head is corrupt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("tensor 'd'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("convert"), std::string::npos) << msg;
  // Streamed through the layer streamer: the same error, from acquire.
  LayerStreamer s(ck, {{"head", {"d"}, Tier::disk}, {"layer 0", {"a", "b", "c"}, Tier::disk}}, {});
  msg = error_text<FormatError>([&] { s.acquire(0); });
  EXPECT_NE(msg.find("head is corrupt"), std::string::npos) << msg;
  EXPECT_NO_THROW(s.acquire(1));  // the other blob is fine
  s.release(1);
  // Resident: caught at load.
  msg = error_text<FormatError>([&] { LayerStreamer r(ck, {{"head", {"d"}, Tier::host}}, {}); });
  EXPECT_NE(msg.find("head is corrupt"), std::string::npos) << msg;
  // Only-once verification still catches it the first time; off does not look.
  const Checkpoint once = Checkpoint::open(file, VerifyMode::once);
  EXPECT_THROW(once.read(once.at("d"), buf.data()), FormatError);
  const Checkpoint off = Checkpoint::open(file, VerifyMode::off);
  EXPECT_NO_THROW(off.read(off.at("d"), buf.data()));
}

TEST(Pack, VerifyOnceChecksEachChunkOnce) {
  test::TempDir dir;
  const Checkpoint ck = Checkpoint::open(write(dir.path()), VerifyMode::once);
  EXPECT_GT(ck.verify_all(), 0u);
  std::vector<std::byte> buf(ck.at("d").nbytes);
  ck.read(ck.at("d"), buf.data());
  EXPECT_EQ(ck.verify(0, ck.at("d").offset_bytes, buf.data(), buf.size()), 0u);  // done already
}

// Hashed on a pool (a blob of 4 MiB: 16 checksum chunks), verification checks the same bytes and
// names the first damaged chunk, whichever thread hashed which; with verify once, through the
// pool too, each chunk once.
TEST(Pack, VerificationOnAPoolReportsTheFirstDamagedChunk) {
  test::TempDir dir;
  const fs::path file = dir / "model.ferry";
  const std::vector<PackBlobSpec> big = {{"layer 0", {{"w", DType::f32, Shape{1024, 1024}}}}};
  write_pack(file, big,
             [](std::size_t b, std::size_t t, std::span<std::byte> dst) {
               for (std::size_t i = 0; i < dst.size(); ++i) dst[i] = byte_of(b, t, i);
             },
             {});
  ThreadPool pool(3);
  uint64_t start = 0;
  uint64_t nbytes = 0;
  {
    const Checkpoint ck = Checkpoint::open(file);
    start = ck.at("w").offset_bytes;
    nbytes = ck.at("w").nbytes;
    std::vector<std::byte> buf(nbytes);
    ck.read(ck.at("w"), buf.data());
    EXPECT_EQ(ck.verify(0, start, buf.data(), nbytes, &pool), nbytes);
    EXPECT_EQ(ck.verify(0, start, buf.data(), nbytes), nbytes);
  }
  const uint64_t chunk = detail::kPackChecksumChunk;
  flip(file, start + 11 * chunk + 5, 0x01);  // chunk 11, then chunk 3: 3 is reported
  flip(file, start + 3 * chunk + 17, 0x40);
  const Checkpoint ck = Checkpoint::open(file, VerifyMode::off);
  std::vector<std::byte> buf(nbytes);
  ck.read(ck.at("w"), buf.data());
  const Checkpoint always = Checkpoint::open(file);
  const std::string want = fmt::format("bytes [{}, {})", start + 3 * chunk, start + 4 * chunk);
  for (int round = 0; round < 20; ++round) {
    const std::string msg =
        error_text<FormatError>([&] { always.verify(0, start, buf.data(), nbytes, &pool); });
    ASSERT_NE(msg.find(want), std::string::npos) << msg;
    ASSERT_NE(msg.find("layer 0 is corrupt"), std::string::npos) << msg;
  }
  // Streamed with a verify pool: the same error, from acquire.
  StreamerOptions so;
  so.verify_pool = &pool;
  LayerStreamer s(always, {{"layer 0", {"w"}, Tier::disk}}, so);
  const std::string msg = error_text<FormatError>([&] { s.acquire(0); });
  EXPECT_NE(msg.find(want), std::string::npos) << msg;
  // Only once: the good chunks are remembered, the bad ones are reported again.
  const Checkpoint once = Checkpoint::open(file, VerifyMode::once);
  EXPECT_THROW(once.verify(0, start, buf.data(), nbytes, &pool), FormatError);
  EXPECT_THROW(once.verify(0, start, buf.data(), nbytes, &pool), FormatError);
}

TEST(Pack, ATruncatedPackIsRefused) {
  test::TempDir dir;
  const fs::path file = write(dir.path());
  fs::resize_file(file, fs::file_size(file) - 100);
  const std::string msg = error_text<FormatError>([&] { Checkpoint::open(file); });
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  fs::resize_file(file, 30);
  EXPECT_NE(error_text<FormatError>([&] { Checkpoint::open(file); }).find("too short"),
            std::string::npos);
}

// Rewrites the preamble's version (and its checksum, so only the version is wrong).
void set_version(const fs::path& file, uint32_t version) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  unsigned char pre[56];
  f.read(reinterpret_cast<char*>(pre), 56);
  std::memcpy(pre + 8, &version, 4);
  const uint64_t sum = detail::xxh64(pre, 48);
  std::memcpy(pre + 48, &sum, 8);
  f.seekp(0);
  f.write(reinterpret_cast<const char*>(pre), 56);
}

TEST(Pack, OtherVersionsAreRefused) {
  test::TempDir dir;
  const fs::path file = write(dir.path());
  set_version(file, 2);
  std::string msg = error_text<FormatError>([&] { Checkpoint::open(file); });
  EXPECT_NE(msg.find("version 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("reads version 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("upgrade ferry"), std::string::npos) << msg;
  set_version(file, 0);
  msg = error_text<FormatError>([&] { Checkpoint::open(file); });
  EXPECT_NE(msg.find("convert the model again"), std::string::npos) << msg;
}

TEST(Pack, ForeignFilesAreRefused) {
  test::TempDir dir;
  test::write_file(dir / "model.ferry", std::string(8192, 'x'));
  std::string msg = error_text<FormatError>([&] { Checkpoint::open(dir.path()); });
  EXPECT_NE(msg.find("not a ferry pack"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ferry convert"), std::string::npos) << msg;
  // A damaged preamble or header.
  test::TempDir d2;
  const fs::path file = write(d2.path());
  flip(file, 20);  // header_offset
  msg = error_text<FormatError>([&] { Checkpoint::open(file); });
  EXPECT_NE(msg.find("preamble fails its checksum"), std::string::npos) << msg;
  test::TempDir d3;
  const fs::path f3 = write(d3.path());
  flip(f3, fs::file_size(f3) - 10);
  msg = error_text<FormatError>([&] { Checkpoint::open(f3); });
  EXPECT_NE(msg.find("header fails its checksum"), std::string::npos) << msg;
}

// Rewrites the pack's JSON header through `edit`, with the preamble's sizes and checksums made
// to match, so only what `edit` changed is wrong.
void rewrite_header(const fs::path& file, const std::function<void(nlohmann::json&)>& edit) {
  std::string bytes = test::read_file(file);
  uint64_t header_offset = 0;
  uint64_t header_bytes = 0;
  std::memcpy(&header_offset, bytes.data() + 16, 8);
  std::memcpy(&header_bytes, bytes.data() + 24, 8);
  nlohmann::json h = nlohmann::json::parse(bytes.substr(header_offset, header_bytes));
  edit(h);
  const std::string text = h.dump();
  bytes.resize(header_offset);
  bytes += text;
  const uint64_t n = text.size();
  const uint64_t sum = detail::xxh64(text.data(), text.size());
  const uint64_t file_bytes = bytes.size();
  std::memcpy(bytes.data() + 24, &n, 8);
  std::memcpy(bytes.data() + 32, &sum, 8);
  std::memcpy(bytes.data() + 40, &file_bytes, 8);
  const uint64_t pre_sum = detail::xxh64(bytes.data(), 48);
  std::memcpy(bytes.data() + 48, &pre_sum, 8);
  test::write_file(file, bytes);
}

// Seen: a forged tensor offset of 1 (unaligned, overlapping its neighbour) computed garbage.
TEST(Pack, ForgedTensorOffsetsAreRefused) {
  auto tensor = [](nlohmann::json& h, const std::string& name) -> nlohmann::json& {
    for (auto& t : h["tensors"])
      if (t["name"] == name) return t;
    throw std::runtime_error("no tensor " + name);
  };
  test::TempDir d1;
  const fs::path f1 = write(d1.path());
  rewrite_header(f1, [&](nlohmann::json& h) { tensor(h, "b")["offset"] = 1; });
  std::string msg = error_text<FormatError>([&] { Checkpoint::open(f1); });
  EXPECT_NE(msg.find("tensor 'b' starts at offset 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("convert it again"), std::string::npos) << msg;
  test::TempDir d2;
  const fs::path f2 = write(d2.path());
  rewrite_header(f2, [&](nlohmann::json& h) { tensor(h, "b")["offset"] = 0; });  // over 'a'
  msg = error_text<FormatError>([&] { Checkpoint::open(f2); });
  EXPECT_NE(msg.find("overlap"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
  // The forging itself leaves a pack that opens when nothing is changed.
  test::TempDir d3;
  const fs::path f3 = write(d3.path());
  rewrite_header(f3, [](nlohmann::json&) {});
  EXPECT_NO_THROW(Checkpoint::open(f3));
}

// A header naming one tensor twice crashed (the error path looked up the file the first copy
// was in, which had not been added yet); now it names the tensor and the file.
TEST(Pack, ATensorNamedTwiceIsRefused) {
  test::TempDir dir;
  const fs::path file = write(dir.path());
  rewrite_header(file, [](nlohmann::json& h) { h["tensors"][2]["name"] = "a"; });
  const std::string msg = error_text<FormatError>([&] { Checkpoint::open(file); });
  EXPECT_NE(msg.find("tensor 'a' appears twice in " + file.string()), std::string::npos) << msg;
}

// Dimensions each below the 2^40 limit whose product overflows 64 bits made numel() and the
// size check multiply unchecked (signed overflow).
TEST(Pack, AShapeWhoseElementsOverflowIsRefused) {
  test::TempDir dir;
  const fs::path file = write(dir.path());
  rewrite_header(file, [](nlohmann::json& h) {
    h["tensors"][0]["shape"] = {int64_t{1} << 39, int64_t{1} << 39, 4};
  });
  const std::string msg = error_text<FormatError>([&] { Checkpoint::open(file); });
  EXPECT_NE(msg.find("more elements than any file holds"), std::string::npos) << msg;
}

TEST(Pack, BadSpecsAreRefusedBeforeWriting) {
  test::TempDir dir;
  const auto fill = [](std::size_t, std::size_t, std::span<std::byte>) {};
  EXPECT_THROW(write_pack(dir / "x.ferry", {{"l", {{"a", DType::q8, Shape{4}}}}}, fill),
               InvalidArgument);
  EXPECT_THROW(
      write_pack(dir / "x.ferry",
                 {{"l", {{"a", DType::f16, Shape{4}}, {"a", DType::f16, Shape{4}}}}}, fill),
      InvalidArgument);
  EXPECT_FALSE(fs::exists(dir / "x.ferry"));
}

}  // namespace
}  // namespace ferry::offload
