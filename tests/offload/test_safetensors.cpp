// safetensors: crafted headers, each defect on its own, checking the message says what and where.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "offload/checkpoint.hpp"
#include "offload/detail/safetensors_header.hpp"
#include "runtime/core/error.hpp"
#include "tests/offload/checkpoint_builders.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// Writes a crafted file and returns the open error's message.
std::string open_error(const test::TempDir& tmp, std::string_view bytes) {
  const fs::path p = tmp / "model.safetensors";
  test::write_file(p, bytes);
  return test::error_text<FormatError>([&] { (void)Checkpoint::open(p); });
}

TEST(Safetensors, CraftedFileOpensAndReads) {
  test::TempDir tmp;
  const std::string data = test::f32_bytes({1, 2, 3, 4, 5, 6});
  test::write_file(
      tmp / "model.safetensors",
      test::make_safetensors(R"({"__metadata__":{"format":"pt"},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]},)"
                             R"("a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})",
                             data));
  const Checkpoint c = Checkpoint::open(tmp.path());
  ASSERT_EQ(c.tensors().size(), 2u);
  EXPECT_EQ(c.tensors()[0].name, "a");  // offset order, not header order
  EXPECT_EQ(c.tensors()[1].name, "b");
  EXPECT_EQ(c.at("a").shape, (Shape{2, 2}));
  float b[2];
  c.read(c.at("b"), b);
  EXPECT_EQ(b[0], 5.0f);
  EXPECT_EQ(b[1], 6.0f);
}

TEST(Safetensors, HeaderLengthThatLooksLikeAPickleIsStillSafetensors) {
  // 640 = 0x0280: the file starts with 0x80 0x02, like a pickle's PROTO 2.
  std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  header.resize(640, ' ');
  test::TempDir tmp;
  test::write_file(tmp / "model.safetensors", test::make_safetensors(header, "abcd"));
  const Checkpoint c = Checkpoint::open(tmp.path());
  EXPECT_EQ(c.at("w").offset_bytes, 648u);
}

TEST(Safetensors, ScalarAndEmptyTensors) {
  const auto t =
      detail::parse_safetensors_header(R"({"s":{"dtype":"F16","shape":[],"data_offsets":[0,2]},)"
                                       R"("e":{"dtype":"F32","shape":[0,8],"data_offsets":[2,2]}})",
                                       8, 2, "x.safetensors");
  ASSERT_EQ(t.tensors.size(), 2u);
  const auto& s = t.tensors[0].name == "s" ? t.tensors[0] : t.tensors[1];
  EXPECT_EQ(s.shape.rank, 0);
  EXPECT_EQ(s.nbytes, 2u);
  EXPECT_EQ(s.offset_bytes, 8u);
}

TEST(Safetensors, BuffersAndBoolTensorsAreSkipped) {
  const auto t = detail::parse_safetensors_header(
      R"({"transformer.h.0.attn.bias":{"dtype":"BOOL","shape":[1,1,2,2],"data_offsets":[0,4]},)"
      R"("transformer.h.0.attn.masked_bias":{"dtype":"F32","shape":[],"data_offsets":[4,8]},)"
      R"("transformer.h.0.attn.c_attn.bias":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},)"
      R"("flags":{"dtype":"BOOL","shape":[1],"data_offsets":[12,13]}})",
      8, 13, "x.safetensors");
  ASSERT_EQ(t.tensors.size(), 1u);
  EXPECT_EQ(t.tensors[0].name, "transformer.h.0.attn.c_attn.bias");
  EXPECT_EQ(t.skipped.size(), 3u);
}

TEST(Safetensors, TruncatedFile) {
  test::TempDir tmp;
  std::string bytes = test::read_file(test::data_dir() / "gptj/tiny-f32/model.safetensors");
  bytes.resize(bytes.size() / 2);
  const std::string msg = open_error(tmp, bytes);
  EXPECT_THAT(msg, HasSubstr("model.safetensors: tensor '"));
  EXPECT_THAT(msg, HasSubstr("end beyond the data section of"));
  EXPECT_THAT(msg, HasSubstr("download it again"));
}

TEST(Safetensors, FileShorterThanTheLengthPrefix) {
  test::TempDir tmp;
  const std::string msg = open_error(tmp, "abc");
  EXPECT_THAT(msg, HasSubstr("file of 3 bytes is too short to be safetensors"));
}

TEST(Safetensors, HeaderLengthBeyondFile) {
  test::TempDir tmp;
  std::string bytes = test::make_safetensors(R"({})", "");
  bytes[0] = 100;  // claims a 100-byte header in a 10-byte file
  const std::string msg = open_error(tmp, bytes);
  EXPECT_THAT(msg, HasSubstr("header length 100 is beyond the file of 10 bytes"));
}

TEST(Safetensors, HugeHeaderLengthIsRefusedBeforeAllocating) {
  test::TempDir tmp;
  std::string bytes = test::make_safetensors(R"({})", "");
  bytes[7] = 0x40;  // 2^62
  const std::string msg = open_error(tmp, bytes);
  EXPECT_THAT(msg, HasSubstr("exceeds the 104857600 byte limit"));
}

TEST(Safetensors, MalformedJson) {
  test::TempDir tmp;
  const std::string msg =
      open_error(tmp, test::make_safetensors(R"({"a":{"dtype":"F32",)", "xxxx"));
  EXPECT_THAT(msg, HasSubstr("safetensors header is not valid JSON"));
  EXPECT_THAT(msg, HasSubstr("model.safetensors"));
}

// A tensor named twice in the header: nlohmann kept the last entry silently (and the message a
// user saw spoke of overlapping shards); now the name is refused as it is.
TEST(Safetensors, ATensorNamedTwiceIsRefused) {
  test::TempDir tmp;
  const std::string msg = open_error(
      tmp, test::make_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                  R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                                  "xxxxxxxx"));
  EXPECT_THAT(msg, HasSubstr("safetensors header: the key \"a\" appears twice"));
  EXPECT_THAT(msg, HasSubstr("model.safetensors"));
}

TEST(Safetensors, HeaderIsNotAnObject) {
  EXPECT_THAT(test::error_text<FormatError>(
                  [] { detail::parse_safetensors_header("[1,2]", 8, 0, "m.safetensors"); }),
              HasSubstr("m.safetensors: safetensors header is not a JSON object"));
}

TEST(Safetensors, OffsetsOutOfRange) {
  test::TempDir tmp;
  const std::string msg = open_error(
      tmp, test::make_safetensors(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                  std::string(12, '\0')));
  EXPECT_THAT(msg, HasSubstr("tensor 'w' data_offsets [0, 16) end beyond the data section of 12 "
                             "bytes; the file is truncated or corrupt — download it again"));
}

TEST(Safetensors, OffsetsEndBeforeBegin) {
  const std::string msg = test::error_text<FormatError>([] {
    detail::parse_safetensors_header(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8,
                                     16, "m.safetensors");
  });
  EXPECT_THAT(msg, HasSubstr("tensor 'w' data_offsets [8, 4) end before begin"));
}

TEST(Safetensors, OffsetsDisagreeWithShape) {
  const std::string msg = test::error_text<FormatError>([] {
    detail::parse_safetensors_header(R"({"w":{"dtype":"F16","shape":[3,2],"data_offsets":[0,16]}})",
                                     8, 16, "m.safetensors");
  });
  EXPECT_THAT(msg, HasSubstr("tensor 'w' data_offsets [0, 16) hold 16 bytes but shape [3, 2] of "
                             "f16 needs 12"));
}

TEST(Safetensors, OverlappingOffsets) {
  test::TempDir tmp;
  const std::string msg = open_error(
      tmp, test::make_safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                                  R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                                  std::string(16, '\0')));
  EXPECT_THAT(msg, HasSubstr("tensors 'a' data_offsets [0, 16) and 'b' [8, 16) overlap"));
}

TEST(Safetensors, UnknownDtype) {
  test::TempDir tmp;
  const std::string msg = open_error(
      tmp, test::make_safetensors(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})",
                                  std::string(8, '\0')));
  EXPECT_THAT(msg, HasSubstr("tensor 'w' has dtype \"F64\", which ferry does not read"));
}

TEST(Safetensors, NegativeShape) {
  const std::string msg = test::error_text<FormatError>([] {
    detail::parse_safetensors_header(R"({"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,0]}})",
                                     8, 0, "m.safetensors");
  });
  EXPECT_THAT(msg, HasSubstr("tensor 'w' has shape [-1,4] with a dimension that is not a "
                             "non-negative integer"));
}

TEST(Safetensors, ShapeOverflow) {
  const std::string msg = test::error_text<FormatError>([] {
    detail::parse_safetensors_header(
        R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 8, 0,
        "m.safetensors");
  });
  EXPECT_THAT(msg, HasSubstr("tensor 'w' shape [4294967296,4294967296] overflows 64 bits"));
}

TEST(Safetensors, RankAboveFourIsRefused) {
  const std::string msg = test::error_text<FormatError>([] {
    detail::parse_safetensors_header(
        R"({"w":{"dtype":"F32","shape":[1,1,1,1,1],"data_offsets":[0,4]}})", 8, 4, "m.st");
  });
  EXPECT_THAT(msg, HasSubstr("tensor 'w' has rank 5, but ferry handles tensors of rank at most 4"));
}

TEST(Safetensors, MissingFieldsAreNamed) {
  EXPECT_THAT(test::error_text<FormatError>([] {
                detail::parse_safetensors_header(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 8,
                                                 4, "m.st");
              }),
              HasSubstr("tensor 'w' has no \"dtype\" string"));
  EXPECT_THAT(test::error_text<FormatError>([] {
                detail::parse_safetensors_header(R"({"w":{"dtype":"F32","shape":[1]}})", 8, 4,
                                                 "m.st");
              }),
              HasSubstr("tensor 'w' needs \"data_offsets\""));
  EXPECT_THAT(test::error_text<FormatError>([] {
                detail::parse_safetensors_header(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 8,
                                                 4, "m.st");
              }),
              HasSubstr("tensor 'w' has no \"shape\" array"));
}

TEST(Safetensors, MissingTensorViaAt) {
  test::TempDir tmp;
  test::write_file(
      tmp / "model.safetensors",
      test::make_safetensors(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                             std::string(4, '\0')));
  const Checkpoint c = Checkpoint::open(tmp.path());
  const std::string msg = test::error_text<FormatError>([&] { (void)c.at("lm_head.weight"); });
  EXPECT_THAT(msg, HasSubstr("tensor 'lm_head.weight' is missing from " +
                             (tmp / "model.safetensors").string()));
}

TEST(Safetensors, ReadOfAFileTruncatedAfterOpenNamesTheTensor) {
  test::TempDir tmp;
  const fs::path p = tmp / "model.safetensors";
  test::write_file(
      p, test::make_safetensors(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
                                std::string(16, '\0')));
  const Checkpoint c = Checkpoint::open(p);
  fs::resize_file(p, fs::file_size(p) - 4);
  float buf[4];
  const std::string msg = test::error_text<FormatError>([&] { c.read(c.at("w"), buf); });
  EXPECT_THAT(msg, HasSubstr("tensor 'w'"));
  EXPECT_THAT(msg, HasSubstr("truncated"));
}

// ---- directories and indexes --------------------------------------------------------------

TEST(CheckpointIndex, MissingShard) {
  test::TempDir tmp;
  test::copy_dir(test::data_dir() / "gptj/sharded-f32", tmp.path());
  fs::remove(tmp / "model-00002-of-00002.safetensors");
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); });
  EXPECT_THAT(msg, HasSubstr("shard 'model-00002-of-00002.safetensors'"));
  EXPECT_THAT(msg, HasSubstr("is missing from " + tmp.path().string()));
  EXPECT_THAT(msg, HasSubstr("download it again"));
}

TEST(CheckpointIndex, TensorListedButNotInItsShard) {
  test::TempDir tmp;
  test::copy_dir(test::data_dir() / "gptj/sharded-f32", tmp.path());
  auto index = nlohmann::json::parse(test::read_file(tmp / "model.safetensors.index.json"));
  index["weight_map"]["transformer.h.7.ln_1.weight"] = "model-00001-of-00002.safetensors";
  test::write_file(tmp / "model.safetensors.index.json", index.dump());
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); });
  EXPECT_THAT(msg, HasSubstr("tensor 'transformer.h.7.ln_1.weight' is listed in shard "
                             "'model-00001-of-00002.safetensors' but that shard does not hold it"));
}

TEST(CheckpointIndex, ShardOutsideTheDirectoryIsRefused) {
  test::TempDir tmp;
  test::write_file(tmp / "model.safetensors.index.json",
                   R"({"weight_map":{"w":"../../etc/passwd"}})");
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); });
  EXPECT_THAT(msg, HasSubstr("places tensor 'w' in '../../etc/passwd', which is not a file name "
                             "beside the index"));
}

TEST(CheckpointIndex, MalformedIndex) {
  test::TempDir tmp;
  test::write_file(tmp / "model.safetensors.index.json", R"({"weight_map": [)");
  EXPECT_THAT(test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); }),
              HasSubstr("index is not valid JSON"));
  test::write_file(tmp / "model.safetensors.index.json", R"({"metadata": {}})");
  EXPECT_THAT(test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); }),
              HasSubstr("index has no \"weight_map\" object"));
}

TEST(CheckpointIndex, TensorInTwoShardsIsRefused) {
  test::TempDir tmp;
  test::write_file(
      tmp / "a.safetensors",
      test::make_safetensors(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                             std::string(4, '\0')));
  test::write_file(
      tmp / "b.safetensors",
      test::make_safetensors(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("v":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                             std::string(8, '\0')));
  test::write_file(tmp / "model.safetensors.index.json",
                   R"({"weight_map":{"w":"a.safetensors","v":"b.safetensors"}})");
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); });
  EXPECT_THAT(msg, HasSubstr("tensor 'w' appears in both " + (tmp / "a.safetensors").string() +
                             " and " + (tmp / "b.safetensors").string()));
}

TEST(CheckpointOpen, EmptyDirectory) {
  test::TempDir tmp;
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); });
  EXPECT_THAT(msg, HasSubstr("no checkpoint found (looked for model.safetensors"));
}

TEST(CheckpointOpen, MissingPath) {
  test::TempDir tmp;
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp / "nope"); });
  EXPECT_THAT(msg, HasSubstr("nope: no such file or directory"));
}

}  // namespace
}  // namespace ferry::offload
