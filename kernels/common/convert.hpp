// Element conversions between the float storage types, shared by the CPU kernels and the CUDA
// conversion kernels: reading any float weight as f32, writing f32 to any float type with
// round-to-nearest-even, and bf16 → f16 for GPUs without bf16 arithmetic (sm_75), which goes
// through f32 exactly (every bf16 is an f32) and rounds once.
#pragma once

#include <cstdint>

#include "runtime/core/dtype.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/host_device.hpp"

namespace ferry::kernels {

// Element i of a float array of dtype t (f32, f16 or bf16; any other reads as 0).
FERRY_HD float load_as_f32(const void* p, DType t, int64_t i) {
  if (t == DType::f32) return static_cast<const float*>(p)[i];
  if (t == DType::f16) return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
  if (t == DType::bf16) return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
  return 0.0f;
}

// Writes v to element i of a float array of dtype t (f32, f16 or bf16), rounding to nearest even.
FERRY_HD void store_from_f32(void* p, DType t, int64_t i, float v) {
  if (t == DType::f32) {
    static_cast<float*>(p)[i] = v;
  } else if (t == DType::f16) {
    static_cast<uint16_t*>(p)[i] = f32_to_f16(v);
  } else if (t == DType::bf16) {
    static_cast<uint16_t*>(p)[i] = f32_to_bf16(v);
  }
}

// bf16 → f16: exact through f32, one rounding; values beyond f16's range become ±inf and bf16
// values below f16's subnormals become ±0 (GPT-J's weights are far inside both).
FERRY_HD uint16_t bf16_to_f16(uint16_t b) { return f32_to_f16(bf16_to_f32(b)); }

}  // namespace ferry::kernels
