// PyTorch zip checkpoints: crafted archives for the layouts torch writes and for each defect.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/detail/torch_zip.hpp"
#include "runtime/core/error.hpp"
#include "tests/offload/checkpoint_builders.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using test::PickleTensorSpec;
using ::testing::HasSubstr;

// One 2×3 f32 weight in storage "0".
std::string one_weight_zip(const std::vector<int64_t>& stride = {},
                           const test::ZipOptions& options = {}) {
  const std::string pickle =
      test::make_state_dict_pickle({{"w", "FloatStorage", "0", 6, 0, {2, 3}, stride}});
  return test::make_torch_zip("my_model", pickle, {{"0", test::f32_bytes({1, 2, 3, 4, 5, 6})}},
                              options);
}

std::string open_error(const test::TempDir& tmp, std::string_view bytes) {
  const fs::path p = tmp / "pytorch_model.bin";
  test::write_file(p, bytes);
  return test::error_text<FormatError>([&] { (void)Checkpoint::open(p); });
}

TEST(TorchZip, CraftedArchiveWithAnyFolderNameOpens) {
  for (const bool zip64 : {true, false}) {
    test::TempDir tmp;
    test::ZipOptions options;
    options.zip64 = zip64;
    options.comment = "a comment";
    test::write_file(tmp / "pytorch_model.bin", one_weight_zip({}, options));
    const Checkpoint c = Checkpoint::open(tmp.path());
    EXPECT_EQ(c.format(), CheckpointFormat::torch_zip);
    ASSERT_EQ(c.tensors().size(), 1u);
    const TensorEntry& w = c.at("w");
    EXPECT_EQ(w.shape, (Shape{2, 3}));
    EXPECT_EQ(w.dtype, DType::f32);
    float v[6];
    c.read(w, v);
    EXPECT_EQ(v[0], 1.0f);
    EXPECT_EQ(v[5], 6.0f);
  }
}

TEST(TorchZip, ViewsIntoOneStorageUseTheirOffsets) {
  // Tied or sliced tensors share a storage; each starts at its own storage_offset.
  const std::string pickle = test::make_state_dict_pickle({
      {"a", "HalfStorage", "7", 8, 0, {2, 2}, {}},
      {"b", "HalfStorage", "7", 8, 4, {4}, {}},
      {"s", "FloatStorage", "8", 1, 0, {}, {}},
  });
  test::TempDir tmp;
  test::write_file(
      tmp / "pytorch_model.bin",
      test::make_torch_zip("archive", pickle,
                           {{"7", std::string("AABBCCDDEEFFGGHH")}, {"8", test::f32_bytes({42})}}));
  const Checkpoint c = Checkpoint::open(tmp / "pytorch_model.bin");
  ASSERT_EQ(c.tensors().size(), 3u);
  EXPECT_EQ(c.at("b").offset_bytes, c.at("a").offset_bytes + 8);
  char b[8];
  c.read(c.at("b"), b);
  EXPECT_EQ(std::string(b, 8), "EEFFGGHH");
  EXPECT_EQ(c.at("s").shape.rank, 0);
  float s = 0;
  c.read(c.at("s"), &s);
  EXPECT_EQ(s, 42.0f);
}

TEST(TorchZip, BuffersAndBoolTensorsAreSkipped) {
  const std::string pickle = test::make_state_dict_pickle({
      {"transformer.h.0.attn.bias", "BoolStorage", "0", 16, 0, {1, 1, 4, 4}, {}},
      {"transformer.h.0.attn.masked_bias", "FloatStorage", "1", 1, 0, {}, {}},
      {"transformer.h.0.attn.c_attn.bias", "FloatStorage", "2", 2, 0, {2}, {}},
      {"mask", "BoolStorage", "3", 2, 0, {2}, {}},
  });
  test::TempDir tmp;
  test::write_file(tmp / "pytorch_model.bin", test::make_torch_zip("pytorch_model", pickle,
                                                                   {{"0", std::string(16, '\1')},
                                                                    {"1", test::f32_bytes({-1e9f})},
                                                                    {"2", test::f32_bytes({1, 2})},
                                                                    {"3", std::string(2, '\0')}}));
  const Checkpoint c = Checkpoint::open(tmp.path());
  ASSERT_EQ(c.tensors().size(), 1u);
  EXPECT_EQ(c.tensors()[0].name, "transformer.h.0.attn.c_attn.bias");
  EXPECT_EQ(c.find("transformer.h.0.attn.bias"), nullptr);
  EXPECT_EQ(c.find("transformer.h.0.attn.masked_bias"), nullptr);
  EXPECT_EQ(c.total_bytes(), 8u);
}

TEST(TorchZip, IndexMayListSkippedBuffers) {
  const std::string pickle = test::make_state_dict_pickle({
      {"h.0.attn.masked_bias", "FloatStorage", "0", 1, 0, {}, {}},
      {"h.0.ln.weight", "HalfStorage", "1", 2, 0, {2}, {}},
  });
  test::TempDir tmp;
  test::write_file(tmp / "pytorch_model-00001-of-00001.bin",
                   test::make_torch_zip("pytorch_model-00001-of-00001", pickle,
                                        {{"0", test::f32_bytes({-1e9f})}, {"1", "abcd"}}));
  test::write_file(tmp / "pytorch_model.bin.index.json",
                   R"({"metadata":{"total_size":8},"weight_map":{)"
                   R"("h.0.attn.masked_bias":"pytorch_model-00001-of-00001.bin",)"
                   R"("h.0.ln.weight":"pytorch_model-00001-of-00001.bin"}})");
  const Checkpoint c = Checkpoint::open(tmp.path());
  ASSERT_EQ(c.tensors().size(), 1u);
  EXPECT_EQ(c.tensors()[0].dtype, DType::f16);
}

TEST(TorchZip, MissingTensorInShardIsNamed) {
  test::TempDir tmp;
  test::copy_dir(test::data_dir() / "gptj/tiny-f16-bin-sharded", tmp.path());
  std::string index = test::read_file(tmp / "pytorch_model.bin.index.json");
  index.replace(index.find("\"lm_head.bias\""), 14, "\"lm_head.bogus\"");
  test::write_file(tmp / "pytorch_model.bin.index.json", index);
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); });
  EXPECT_THAT(msg, HasSubstr("tensor 'lm_head.bogus' is listed in shard "
                             "'pytorch_model-00002-of-00002.bin' but that shard does not hold it"));
}

TEST(TorchZip, MissingTorchShard) {
  test::TempDir tmp;
  test::copy_dir(test::data_dir() / "gptj/tiny-f16-bin-sharded", tmp.path());
  fs::remove(tmp / "pytorch_model-00001-of-00002.bin");
  const std::string msg =
      test::error_text<FormatError>([&] { (void)Checkpoint::open(tmp.path()); });
  EXPECT_THAT(msg, HasSubstr("shard 'pytorch_model-00001-of-00002.bin'"));
  EXPECT_THAT(msg, HasSubstr("is missing from"));
}

TEST(TorchZip, NonContiguousStrideIsRefused) {
  test::TempDir tmp;
  const std::string msg = open_error(tmp, one_weight_zip({1, 2}));  // a transposed view
  EXPECT_THAT(msg, HasSubstr("tensor 'w' of size (2, 3) has strides (1, 2), which are not "
                             "row-major contiguous"));
  EXPECT_THAT(msg, HasSubstr(".contiguous()"));
}

TEST(TorchZip, SizeOneDimensionsMayHaveAnyStride) {
  const std::string pickle =
      test::make_state_dict_pickle({{"w", "FloatStorage", "0", 3, 0, {1, 3}, {99, 1}}});
  test::TempDir tmp;
  test::write_file(tmp / "pytorch_model.bin",
                   test::make_torch_zip("m", pickle, {{"0", test::f32_bytes({1, 2, 3})}}));
  EXPECT_EQ(Checkpoint::open(tmp.path()).at("w").shape, (Shape{1, 3}));
}

TEST(TorchZip, CompressedEntryIsRefused) {
  const std::string pickle =
      test::make_state_dict_pickle({{"w", "FloatStorage", "0", 2, 0, {2}, {}}});
  std::vector<test::ZipSpec> entries = {{"m/data.pkl", pickle, 0},
                                        {"m/data/0", test::f32_bytes({1, 2}), 8}};
  test::TempDir tmp;
  const std::string msg = open_error(tmp, test::make_zip(entries));
  EXPECT_THAT(msg, HasSubstr("zip entry 'm/data/0' is compressed (method 8, deflate)"));
  EXPECT_THAT(msg, HasSubstr("convert it to safetensors"));
}

TEST(TorchZip, TruncatedArchiveHasNoEndRecord) {
  test::TempDir tmp;
  std::string bytes = test::read_file(test::data_dir() / "gptj/tiny-f32/pytorch_model.bin");
  bytes.resize(bytes.size() - 100);
  const std::string msg = open_error(tmp, bytes);
  EXPECT_THAT(msg, HasSubstr("not a complete zip archive (no end-of-central-directory record"));
  EXPECT_THAT(msg, HasSubstr("download it again"));
}

TEST(TorchZip, TruncatedInsideTheData) {
  // The end records survive (the tail is kept) but the data they describe is gone.
  test::TempDir tmp;
  const std::string full = test::read_file(test::data_dir() / "gptj/tiny-f32/pytorch_model.bin");
  const std::string bytes = full.substr(0, 4096) + full.substr(full.size() - 2000);
  const std::string msg = open_error(tmp, bytes);
  EXPECT_THAT(msg, HasSubstr("pytorch_model.bin"));
  EXPECT_THAT(msg, HasSubstr("download it again"));
}

TEST(TorchZip, ForbiddenGlobalIsRefused) {
  test::PickleWriter w;
  w.proto(2).global("os", "system").str("echo pwned").op('\x85').op('R').stop();
  test::TempDir tmp;
  const std::string msg = open_error(tmp, test::make_torch_zip("m", w.bytes(), {}));
  EXPECT_THAT(msg, HasSubstr("data.pkl byte 2: pickle references the global 'os.system', which "
                             "ferry refuses to load"));
}

TEST(TorchZip, StorageBeyondItsEntryIsRefused) {
  const std::string pickle =
      test::make_state_dict_pickle({{"w", "FloatStorage", "0", 6, 0, {2, 3}, {}}});
  test::TempDir tmp;
  const std::string msg =
      open_error(tmp, test::make_torch_zip("m", pickle, {{"0", test::f32_bytes({1, 2})}}));
  EXPECT_THAT(msg, HasSubstr("tensor 'w' storage '0' of 6 elements (FloatStorage) needs 24 bytes "
                             "but its entry holds 8"));
}

TEST(TorchZip, TensorBeyondItsStorageIsRefused) {
  const std::string pickle =
      test::make_state_dict_pickle({{"w", "FloatStorage", "0", 6, 2, {2, 3}, {}}});
  test::TempDir tmp;
  const std::string msg = open_error(
      tmp, test::make_torch_zip("m", pickle, {{"0", test::f32_bytes({1, 2, 3, 4, 5, 6})}}));
  EXPECT_THAT(msg, HasSubstr("tensor 'w' needs elements [2, 8) of its storage '0', which holds "
                             "only 6"));
}

TEST(TorchZip, MissingStorageEntry) {
  const std::string pickle =
      test::make_state_dict_pickle({{"w", "FloatStorage", "5", 2, 0, {2}, {}}});
  test::TempDir tmp;
  const std::string msg = open_error(tmp, test::make_torch_zip("m", pickle, {}));
  EXPECT_THAT(msg, HasSubstr("tensor 'w' refers to storage '5' but the archive has no entry "
                             "'m/data/5'"));
}

TEST(TorchZip, UnsupportedDtypeNamesTheTensor) {
  const std::string pickle =
      test::make_state_dict_pickle({{"w", "DoubleStorage", "0", 1, 0, {1}, {}}});
  test::TempDir tmp;
  const std::string msg =
      open_error(tmp, test::make_torch_zip("m", pickle, {{"0", std::string(8, '\0')}}));
  EXPECT_THAT(msg, HasSubstr("tensor 'w' is stored as torch.DoubleStorage, a dtype ferry does "
                             "not read"));
}

TEST(TorchZip, ZipWithoutDataPkl) {
  test::TempDir tmp;
  const std::string msg = open_error(tmp, test::make_zip({{"m/version", "3\n", 0}}));
  EXPECT_THAT(msg, HasSubstr("has no '<folder>/data.pkl' entry"));
}

TEST(TorchZip, BigEndianCheckpointIsRefused) {
  const std::string pickle = test::make_state_dict_pickle({});
  test::TempDir tmp;
  const std::string msg =
      open_error(tmp, test::make_zip({{"m/data.pkl", pickle, 0}, {"m/byteorder", "big", 0}}));
  EXPECT_THAT(msg, HasSubstr("saved on a 'big'-endian machine"));
}

TEST(TorchZip, LegacyTorchFileIsRefused) {
  test::TempDir tmp;
  const std::string msg = open_error(tmp, std::string("\x80\x02\x8a\x0a", 4) + "rest");
  EXPECT_THAT(msg, HasSubstr("legacy (pre-1.6) PyTorch checkpoint"));
}

TEST(TorchZip, ParsesFromBytesWithoutAFile) {
  const std::string bytes = one_weight_zip();
  const detail::FileTensors t =
      detail::read_torch_zip(bytes.size(), detail::buffer_read_at(bytes, "mem"), "mem");
  ASSERT_EQ(t.tensors.size(), 1u);
  EXPECT_EQ(bytes.substr(t.tensors[0].offset_bytes, 24), test::f32_bytes({1, 2, 3, 4, 5, 6}));
}

}  // namespace
}  // namespace ferry::offload
