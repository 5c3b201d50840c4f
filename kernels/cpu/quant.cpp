#include "kernels/cpu/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/common/quant_math.hpp"
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

// Σ v[0, n) in eight interleaved partial sums (which vectorize), added in a fixed order.
float lane_sum(const float* v, int64_t n) {
  float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    a0 += v[j];
    a1 += v[j + 1];
    a2 += v[j + 2];
    a3 += v[j + 3];
    a4 += v[j + 4];
    a5 += v[j + 5];
    a6 += v[j + 6];
    a7 += v[j + 7];
  }
  for (; j < n; ++j) a0 += v[j];
  return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
}

// One q4 group's parameters as stored (f16 scale and minimum) and the squared error of its codes.
struct Q4Params {
  uint16_t scale_h = 0;
  uint16_t min_h = 0;
  double sq_error = 0;
};

// The codes of x[0, n) (n ≤ 128) under (scale, min) rounded to f16 as the pack stores them,
// written to codes, and their squared error as the kernels dequantize them (float sums: the error
// only ranks candidates). Written without library calls so that it vectorizes: round half to even
// by adding and subtracting 1.5 · 2^23, exact for the clamped values in [0, 15].
Q4Params q4_codes(const float* x, int64_t n, float scale, float min, uint8_t* codes) {
  Q4Params p;
  p.scale_h = f32_to_f16(scale);
  p.min_h = f32_to_f16(min);
  const float s = f16_to_f32(p.scale_h);
  const float m = f16_to_f32(p.min_h);
  constexpr float kRound = 12582912.0f;  // 1.5 · 2^23
  float sq[128];
  if (s > 0.0f) {
    for (int64_t j = 0; j < n; ++j) {
      const float t = (std::min(std::max((x[j] - m) / s, 0.0f), 15.0f) + kRound) - kRound;
      codes[j] = static_cast<uint8_t>(static_cast<int>(t));
      const float d = (m + s * t) - x[j];  // kernels::q4_dequant(m, s, codes[j]) − x[j]
      sq[j] = d * d;
    }
  } else {
    for (int64_t j = 0; j < n; ++j) {
      codes[j] = 0;
      sq[j] = (m - x[j]) * (m - x[j]);
    }
  }
  p.sq_error = lane_sum(sq, n);
  return p;
}

// The least-squares (scale, min) for fixed codes: minimizes Σ (min + scale · code − x)². False
// when the codes are all equal or the fit is not a usable f16 step.
bool q4_refit(const float* x, int64_t n, const uint8_t* codes, float& scale, float& min) {
  double sl = 0, sll = 0, sx = 0, slx = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double l = codes[j];
    sl += l;
    sll += l * l;
    sx += x[j];
    slx += l * x[j];
  }
  const auto dn = static_cast<double>(n);
  const double det = dn * sll - sl * sl;
  if (det <= 0) return false;
  const double s = (dn * slx - sl * sx) / det;
  const double m = (sx - s * sl) / dn;
  if (!(s > 0) || s > kF16Max || std::fabs(m) > kF16Max) return false;
  scale = static_cast<float>(s);
  min = static_cast<float>(m);
  return f16_to_f32(f32_to_f16(scale)) > 0.0f;
}

// A group's parameters: the min/max rounding, then least-squares refits of it and of a range
// shrunk by a tenth (outliers clipped), keeping whichever dequantizes x closest. Never worse than
// min/max, and deterministic. On Gaussian weights it lowers the squared error by about 10%
// (k-quants and HQQ-style searches go further with more candidates).
Q4Params fit_q4_group(const float* x, int64_t n, float lo, float hi, uint8_t* codes) {
  uint8_t trial[128];
  Q4Params best = q4_codes(x, n, (hi - lo) / 15.0f, lo, codes);
  const auto consider = [&](float scale, float min) {
    const Q4Params p = q4_codes(x, n, scale, min, trial);
    if (p.sq_error < best.sq_error) {
      best = p;
      std::memcpy(codes, trial, static_cast<std::size_t>(n));
    }
  };
  if (hi > lo) {
    float scale = 0;
    float min = 0;
    if (q4_refit(x, n, codes, scale, min)) consider(scale, min);
    const float shrunk = (hi - lo) / 16.5f;
    consider(shrunk, 0.5f * (lo + hi) - 7.5f * shrunk);  // leaves its codes in trial
    if (q4_refit(x, n, trial, scale, min)) consider(scale, min);
  }
  return best;
}

void quantize_q4(const float* src, int64_t cols, DType dtype, unsigned char* dst,
                 const char* what) {
  const int64_t group = quant_group_size(dtype);
  const int64_t ng = quant_groups(dtype, cols);
  unsigned char* nibbles = dst + q4_nibbles_offset(ng);
  std::memset(nibbles, 0, static_cast<std::size_t>(ng * group / 2));
  uint8_t codes[128];
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
    const Q4Params p = fit_q4_group(src + begin, end - begin, lo, hi, codes);
    std::memcpy(dst + 2 * g, &p.scale_h, 2);
    std::memcpy(dst + q4_mins_offset(ng) + 2 * g, &p.min_h, 2);
    unsigned char* bytes = nibbles + g * (group / 2);
    for (int64_t i = 0; i < end - begin; ++i) {
      const unsigned code = codes[i];
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
  if (is_ggml_block(dtype)) {
    quantize_ggml_row(src, cols, dtype, dst, what);
    return;
  }
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
