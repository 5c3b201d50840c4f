// WeightFormat: the names `ferry convert --quant` takes and the bytes the planner counts.
#include <gtest/gtest.h>

#include "runtime/core/error.hpp"
#include "runtime/model/weight_format.hpp"

namespace ferry::model {
namespace {

TEST(WeightFormat, ParsesAndNames) {
  EXPECT_EQ(WeightFormat::parse("f16").dtype, DType::f16);
  EXPECT_EQ(WeightFormat::parse("bf16").dtype, DType::bf16);
  EXPECT_EQ(WeightFormat::parse("f32").dtype, DType::f32);
  EXPECT_EQ(WeightFormat::parse("int8").dtype, DType::q8);
  EXPECT_EQ(WeightFormat::parse("int4").dtype, DType::q4_g64);
  EXPECT_EQ(WeightFormat::parse("int4", 128).dtype, DType::q4_g128);
  EXPECT_EQ(WeightFormat::parse("int4-g128").dtype, DType::q4_g128);
  for (const WeightFormat f : WeightFormat::all()) EXPECT_EQ(WeightFormat::parse(f.name()), f);
  EXPECT_THROW(WeightFormat::parse("int2"), InvalidArgument);
  EXPECT_THROW(WeightFormat::parse("int4", 96), InvalidArgument);
  EXPECT_THROW(WeightFormat::parse("i32"), InvalidArgument);
}

// GPT-J-6B's numbers: a block is 201,326,592 matrix weights.
TEST(WeightFormat, BytesOfGptj6b) {
  const ModelConfig c = preset_config("gptj-6b");
  EXPECT_EQ(packed_matrix_bytes(4096, 4096, WeightFormat::parse("f16")), 4096ull * 4096 * 2);
  EXPECT_EQ(packed_matrix_bytes(4096, 4096, WeightFormat::parse("int8")), 4096ull * (4096 + 4));
  EXPECT_EQ(packed_matrix_bytes(4096, 4096, WeightFormat::parse("int4")), 4096ull * 64 * 36);
  EXPECT_EQ(packed_matrix_bytes(4096, 4096, WeightFormat::parse("int4", 128)), 4096ull * 32 * 68);
  EXPECT_EQ(packed_block_bytes(c, WeightFormat::parse("f16")), 402653184u);  // 384 MiB
  const uint64_t int8 = packed_block_bytes(c, WeightFormat::parse("int8"));
  const uint64_t int4 = packed_block_bytes(c, WeightFormat::parse("int4"));
  EXPECT_NEAR(static_cast<double>(int8) / 402653184.0, 0.5, 0.002);
  EXPECT_NEAR(static_cast<double>(int4) / 402653184.0, 4.5 / 16, 0.002);
  EXPECT_EQ(int8 % 4096, 0u);
  EXPECT_EQ(packed_head_bytes(c, WeightFormat::parse("f16")), 50400ull * 4096 * 2);
}

}  // namespace
}  // namespace ferry::model
