// WeightFormat: how a model's weight matrices are stored — f32, f16, bf16, or quantized as in
// ferry packs (int8 per output channel, int4 in groups of 64 or 128) — with the bytes each costs,
// for `ferry convert` and for the planner (which streams, per token, the bytes computed here).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/core/dtype.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::model {

struct WeightFormat {
  DType dtype = DType::f16;  // the matrices' dtype: f32, f16, bf16, q8, q4_g64 or q4_g128

  // "f32", "f16", "bf16", "int8", "int4" (group 64) or "int4-g128".
  std::string name() const;
  // Parses a --quant value: f32 | f16 | bf16 | int8 | int4, with group 64 or 128 for int4 (also
  // accepted inline: "int4-g128"). Throws InvalidArgument naming the choices.
  static WeightFormat parse(std::string_view quant, int group = 64);
  // Every format, least compressed first: f32, bf16, f16, int8, int4-g128, int4 (g64).
  static std::vector<WeightFormat> all();
  bool operator==(const WeightFormat&) const = default;
};

// Bytes of a [rows, cols] matrix in the format (packed rows included: scales, minima, padding).
uint64_t packed_matrix_bytes(int64_t rows, int64_t cols, WeightFormat format);

// Bytes of one block's streamed unit (its matrices, model::block_group's order) in a ferry pack:
// the blob that is read for every use, 4 KiB aligned. For GPT-J-6B: f16 384 MiB, int8 192 MiB, int4
// 108 MiB (group 64) or 102 MiB (group 128).
uint64_t packed_block_bytes(const ModelConfig& config, WeightFormat format);
// Bytes of the head's streamed unit (lm_head) in a ferry pack, 4 KiB aligned.
uint64_t packed_head_bytes(const ModelConfig& config, WeightFormat format);

}  // namespace ferry::model
