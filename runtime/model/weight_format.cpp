#include "runtime/model/weight_format.hpp"

#include "runtime/core/error.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/model/layout.hpp"

namespace ferry::model {

namespace {
constexpr uint64_t kBlobAlignment = 4096;  // a ferry pack's blob alignment
constexpr uint64_t kTensorAlignment = 64;  // and its tensors' inside a blob

uint64_t align_up(uint64_t n, uint64_t a) { return (n + a - 1) / a * a; }
}  // namespace

std::string WeightFormat::name() const {
  switch (dtype) {
    case DType::q8:
      return "int8";
    case DType::q4_g64:
      return "int4";
    case DType::q4_g128:
      return "int4-g128";
    default:
      return std::string(dtype_name(dtype));
  }
}

WeightFormat WeightFormat::parse(std::string_view quant, int group) {
  if (quant == "int4-g64") quant = "int4";
  if (quant == "int4-g128") {
    quant = "int4";
    group = 128;
  }
  if (quant == "int8" || quant == "q8") return {DType::q8};
  if (quant == "int4" || quant == "q4") {
    FERRY_EXPECT(group == 64 || group == 128,
                 "--group {} is not an int4 group size; use 64 (more accurate) or 128 (smaller)",
                 group);
    return {group == 64 ? DType::q4_g64 : DType::q4_g128};
  }
  const auto dt = parse_dtype(quant);
  FERRY_EXPECT(dt && (is_float_weight(*dt) || is_ggml_block(*dt)),
               "--quant {} is not a weight format; use f32, f16, bf16, int8 or int4 (with "
               "--group 64|128), or one of llama.cpp's block types (q8_0, q4_0, q4_1, q5_0, "
               "q5_1, q4_k, q5_k, q6_k)",
               quant);
  return {*dt};
}

std::vector<WeightFormat> WeightFormat::all() {
  return {{DType::f32}, {DType::bf16},    {DType::f16},
          {DType::q8},  {DType::q4_g128}, {DType::q4_g64}};
}

uint64_t packed_matrix_bytes(int64_t rows, int64_t cols, WeightFormat format) {
  return ferry::packed_matrix_bytes(format.dtype, rows, cols);
}

uint64_t packed_block_bytes(const ModelConfig& c, WeightFormat format) {
  uint64_t at = 0;
  const auto add = [&](int64_t rows, int64_t cols) {
    at = align_up(at, kTensorAlignment) + packed_matrix_bytes(rows, cols, format);
  };
  for (const auto& w : block_group(c, 0).matrices()) add(w.shape[0], w.shape[1]);
  return align_up(at, kBlobAlignment);
}

uint64_t packed_head_bytes(const ModelConfig& c, WeightFormat format) {
  return align_up(packed_matrix_bytes(c.vocab_size, c.n_embd, format), kBlobAlignment);
}

}  // namespace ferry::model
