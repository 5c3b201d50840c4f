// The GPT-J fixtures open in every layout, list the tensors config.json implies, and give the
// same bytes whichever format they come from.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "offload/checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/offload/gptj_shapes.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path fixture(const char* name) { return test::data_dir() / "gptj" / name; }

std::vector<char> read_tensor(const Checkpoint& c, const TensorEntry& t) {
  std::vector<char> buf(t.nbytes);
  c.read(t, buf.data());
  return buf;
}

void expect_gptj_tensors(const Checkpoint& c, const fs::path& dir, DType dtype) {
  const auto expected = test::gptj_expected_shapes(dir / "config.json");
  ASSERT_EQ(c.tensors().size(), expected.size());
  uint64_t total = 0;
  for (const auto& [name, shape] : expected) {
    const TensorEntry* t = c.find(name);
    ASSERT_NE(t, nullptr) << name;
    EXPECT_EQ(t->name, name);
    EXPECT_EQ(t->shape, shape) << name << " is " << t->shape.str();
    EXPECT_EQ(t->dtype, dtype) << name;
    EXPECT_EQ(t->nbytes, static_cast<uint64_t>(shape.numel()) * dtype_size(dtype)) << name;
    ASSERT_LT(t->file_index, c.files().size());
    EXPECT_LE(t->offset_bytes + t->nbytes, c.files()[t->file_index].size_bytes) << name;
    total += t->nbytes;
  }
  EXPECT_EQ(c.total_bytes(), total);
  // tensors() is in file order, then offset order, and no two tensors share bytes.
  for (std::size_t i = 1; i < c.tensors().size(); ++i) {
    const TensorEntry& a = c.tensors()[i - 1];
    const TensorEntry& b = c.tensors()[i];
    ASSERT_TRUE(a.file_index < b.file_index ||
                (a.file_index == b.file_index && a.offset_bytes + a.nbytes <= b.offset_bytes))
        << a.name << " / " << b.name;
  }
}

TEST(CheckpointFixtures, TinyF32DirectoryPrefersSafetensors) {
  const Checkpoint c = Checkpoint::open(fixture("tiny-f32"));
  EXPECT_EQ(c.format(), CheckpointFormat::safetensors);
  EXPECT_EQ(format_name(c.format()), "safetensors");
  ASSERT_EQ(c.files().size(), 1u);
  EXPECT_EQ(c.files()[0].path.filename(), "model.safetensors");
  EXPECT_EQ(c.files()[0].size_bytes, fs::file_size(fixture("tiny-f32") / "model.safetensors"));
  EXPECT_GE(c.fd(0), 0);
  expect_gptj_tensors(c, fixture("tiny-f32"), DType::f32);
}

TEST(CheckpointFixtures, TinyF32TorchZipOpens) {
  const Checkpoint c = Checkpoint::open(fixture("tiny-f32") / "pytorch_model.bin");
  EXPECT_EQ(c.format(), CheckpointFormat::torch_zip);
  EXPECT_EQ(format_name(c.format()), "torch-zip");
  expect_gptj_tensors(c, fixture("tiny-f32"), DType::f32);
  // torch aligns every storage entry to 64 bytes.
  for (const TensorEntry& t : c.tensors()) EXPECT_EQ(t.offset_bytes % 64, 0u) << t.name;
}

TEST(CheckpointFixtures, TinyF32SafetensorsAndTorchZipAreByteIdentical) {
  const Checkpoint st = Checkpoint::open(fixture("tiny-f32") / "model.safetensors");
  const Checkpoint pt = Checkpoint::open(fixture("tiny-f32") / "pytorch_model.bin");
  ASSERT_EQ(st.tensors().size(), pt.tensors().size());
  for (const TensorEntry& a : st.tensors()) {
    const TensorEntry& b = pt.at(a.name);
    EXPECT_EQ(a.shape, b.shape) << a.name;
    EXPECT_EQ(a.dtype, b.dtype) << a.name;
    EXPECT_EQ(read_tensor(st, a), read_tensor(pt, b)) << a.name;
  }
}

TEST(CheckpointFixtures, ShardedSafetensorsFollowTheIndex) {
  const fs::path dir = fixture("sharded-f32");
  const Checkpoint c = Checkpoint::open(dir);
  EXPECT_EQ(c.format(), CheckpointFormat::safetensors);
  ASSERT_EQ(c.files().size(), 2u);
  EXPECT_EQ(c.files()[0].path.filename(), "model-00001-of-00002.safetensors");
  EXPECT_EQ(c.files()[1].path.filename(), "model-00002-of-00002.safetensors");
  expect_gptj_tensors(c, dir, DType::f32);
  const auto index = nlohmann::json::parse(test::read_file(dir / "model.safetensors.index.json"));
  for (const auto& [name, shard] : index.at("weight_map").items()) {
    const TensorEntry& t = c.at(name);
    EXPECT_EQ(c.files()[t.file_index].path.filename(), shard.get<std::string>()) << name;
  }
}

TEST(CheckpointFixtures, ShardedTorchF16Loads) {
  const fs::path dir = fixture("tiny-f16-bin-sharded");
  const Checkpoint c = Checkpoint::open(dir);
  EXPECT_EQ(c.format(), CheckpointFormat::torch_zip);
  ASSERT_EQ(c.files().size(), 2u);
  expect_gptj_tensors(c, dir, DType::f16);
  const auto index = nlohmann::json::parse(test::read_file(dir / "pytorch_model.bin.index.json"));
  for (const auto& [name, shard] : index.at("weight_map").items()) {
    const TensorEntry& t = c.at(name);
    EXPECT_EQ(c.files()[t.file_index].path.filename(), shard.get<std::string>()) << name;
  }
  // Real weights: finite, and not all zero (a wrong offset would read zip headers or padding).
  const TensorEntry& w = c.at("transformer.h.2.mlp.fc_out.weight");
  const std::vector<char> bytes = read_tensor(c, w);
  std::vector<uint16_t> halves(w.nbytes / 2);
  std::memcpy(halves.data(), bytes.data(), w.nbytes);
  int nonzero = 0;
  for (const uint16_t h : halves) {
    const float f = f16_to_f32(h);
    ASSERT_TRUE(std::isfinite(f));
    nonzero += f != 0.0f;
  }
  EXPECT_GT(nonzero, static_cast<int>(halves.size()) / 2);
}

TEST(CheckpointFixtures, IndexFileOpensDirectly) {
  const Checkpoint c = Checkpoint::open(fixture("sharded-f32") / "model.safetensors.index.json");
  EXPECT_EQ(c.files().size(), 2u);
  expect_gptj_tensors(c, fixture("sharded-f32"), DType::f32);
}

TEST(CheckpointFixtures, ReadRangeReadsOneRow) {
  const Checkpoint c = Checkpoint::open(fixture("tiny-f32"));
  const TensorEntry& wte = c.at("transformer.wte.weight");
  const std::vector<char> all = read_tensor(c, wte);
  const uint64_t row_bytes = static_cast<uint64_t>(wte.shape[1]) * 4;
  std::vector<char> row(row_bytes);
  c.read_range(wte, 17 * row_bytes, row_bytes, row.data());
  EXPECT_EQ(0, std::memcmp(row.data(), all.data() + 17 * row_bytes, row_bytes));
  // A safetensors tensor starts where its header says, so it matches a manual read.
  const std::string file = test::read_file(c.files()[wte.file_index].path);
  EXPECT_EQ(0, std::memcmp(all.data(), file.data() + wte.offset_bytes, wte.nbytes));
}

TEST(CheckpointFixtures, ReadRangeOutsideTheTensorIsRefused) {
  const Checkpoint c = Checkpoint::open(fixture("tiny-f32"));
  const TensorEntry& b = c.at("lm_head.bias");
  std::vector<char> buf(b.nbytes + 8);
  const std::string msg =
      test::error_text<InvalidArgument>([&] { c.read_range(b, 8, b.nbytes, buf.data()); });
  EXPECT_THAT(msg, HasSubstr("lm_head.bias"));
  EXPECT_THAT(msg, HasSubstr("outside its 4000 bytes"));
}

TEST(CheckpointFixtures, FindAndAtOnMissingTensor) {
  const Checkpoint c = Checkpoint::open(fixture("tiny-f32"));
  EXPECT_EQ(c.find("transformer.h.9.ln_1.weight"), nullptr);
  const std::string msg =
      test::error_text<FormatError>([&] { (void)c.at("transformer.h.9.ln_1.weight"); });
  EXPECT_THAT(msg, HasSubstr("tensor 'transformer.h.9.ln_1.weight' is missing from "));
  EXPECT_THAT(msg, HasSubstr("tiny-f32"));
}

TEST(CheckpointFixtures, MoveKeepsTheFilesOpen) {
  Checkpoint a = Checkpoint::open(fixture("tiny-f32"));
  Checkpoint b = std::move(a);
  const TensorEntry& t = b.at("lm_head.bias");
  EXPECT_EQ(read_tensor(b, t).size(), 4000u);
}

}  // namespace
}  // namespace ferry::offload
