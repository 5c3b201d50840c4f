#include "kernels/cpu/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"

namespace ferry::kernels::cpu {
namespace {

constexpr float kF16Max = 65504.0f;

void check_finite(const float* src, int64_t cols, const char* what) {
  for (int64_t j = 0; j < cols; ++j) {
    FERRY_EXPECT(std::isfinite(src[j]),
                 "{}: element {} is {}; a weight must be finite to be quantized — the source "
                 "checkpoint is damaged",
                 what, j, src[j]);
  }
}

void quantize_q8(const float* src, int64_t cols, unsigned char* dst) {
  float absmax = 0.0f;
  for (int64_t j = 0; j < cols; ++j) absmax = std::max(absmax, std::fabs(src[j]));
  const float scale = absmax / 127.0f;
  std::memcpy(dst, &scale, sizeof scale);
  auto* q = reinterpret_cast<int8_t*>(dst + 4);
  for (int64_t j = 0; j < cols; ++j) {
    const float v = scale > 0.0f ? std::nearbyint(src[j] / scale) : 0.0f;
    q[j] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
  }
  const uint64_t used = 4 + static_cast<uint64_t>(cols);
  std::memset(dst + used, 0, packed_row_bytes(DType::q8, cols) - used);
}

void quantize_q4(const float* src, int64_t cols, DType dtype, unsigned char* dst,
                 const char* what) {
  const int64_t group = quant_group_size(dtype);
  const int64_t ng = quant_groups(dtype, cols);
  unsigned char* nibbles = dst + q4_nibbles_offset(ng);
  std::memset(nibbles, 0, static_cast<std::size_t>(ng * group / 2));
  for (int64_t g = 0; g < ng; ++g) {
    const int64_t begin = g * group;
    const int64_t end = std::min(cols, begin + group);
    float lo = src[begin];
    float hi = src[begin];
    for (int64_t j = begin; j < end; ++j) {
      lo = std::min(lo, src[j]);
      hi = std::max(hi, src[j]);
    }
    FERRY_EXPECT(std::fabs(lo) <= kF16Max && hi - lo <= 15.0f * kF16Max,
                 "{}: columns {}…{} hold values from {} to {}, beyond what int4's f16 scale and "
                 "minimum can hold (±65504); convert this model with --quant int8",
                 what, begin, end - 1, lo, hi);
    const uint16_t scale_h = f32_to_f16((hi - lo) / 15.0f);
    const uint16_t min_h = f32_to_f16(lo);
    std::memcpy(dst + 2 * g, &scale_h, 2);
    std::memcpy(dst + q4_mins_offset(ng) + 2 * g, &min_h, 2);
    const float scale = f16_to_f32(scale_h);
    const float min = f16_to_f32(min_h);
    unsigned char* bytes = nibbles + g * (group / 2);
    for (int64_t j = begin; j < end; ++j) {
      const float v = scale > 0.0f ? std::nearbyint((src[j] - min) / scale) : 0.0f;
      const auto code = static_cast<unsigned>(std::clamp(v, 0.0f, 15.0f));
      const int64_t i = j - begin;
      if (i < group / 2) {
        bytes[i] = static_cast<unsigned char>(bytes[i] | code);
      } else {
        bytes[i - group / 2] = static_cast<unsigned char>(bytes[i - group / 2] | (code << 4));
      }
    }
  }
}

}  // namespace

void quantize_row(const float* src, int64_t cols, DType dtype, void* dst, const char* what) {
  FERRY_EXPECT(is_quantized(dtype), "quantize_row: {} is not a packed dtype", dtype_name(dtype));
  FERRY_EXPECT(cols > 0, "quantize_row: {} has {} columns", what, cols);
  check_finite(src, cols, what);
  auto* out = static_cast<unsigned char*>(dst);
  if (dtype == DType::q8) {
    quantize_q8(src, cols, out);
  } else {
    quantize_q4(src, cols, dtype, out, what);
  }
}

}  // namespace ferry::kernels::cpu
