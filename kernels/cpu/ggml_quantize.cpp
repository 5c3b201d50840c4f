// Quantization of f32 rows into llama.cpp's block formats (runtime/core/ggml_quant.hpp), for
// `ferry convert` and the benchmarks' Llama-shaped Q4_K / Q8_0 matrices.
//
// Not llama-quantize's search (its k-quant fits are iterative): a direct fit per block, in IEEE
// f32 with round-half-even, so a conversion gives the same bytes on every machine. The block's
// f16 scales are rounded first and the codes chosen for the stored values; the sub-block scales
// of the k formats are rounded up (6-bit or int8 steps of the stored f16 super-scale), so a
// sub-block's range is always covered and a weight is off by at most half a step (plus f16's
// rounding of the super-scale where a scale saturates).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/quant.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/ggml_quant.hpp"
#include "runtime/core/half.hpp"

namespace ferry::kernels::cpu {
namespace {

constexpr float kF16Max = 65504.0f;

void put_f16(unsigned char* p, float v) {
  const uint16_t h = f32_to_f16(v);
  p[0] = static_cast<unsigned char>(h & 0xff);
  p[1] = static_cast<unsigned char>(h >> 8);
}

// v rounded to f16 and back.
float f16_round(float v) { return f16_to_f32(f32_to_f16(v)); }

int round_clamp(float v, int lo, int hi) {
  return std::clamp(static_cast<int>(std::nearbyint(v)), lo, hi);
}

// x / d rounded, 0 when d is 0.
float ratio(float x, float d) { return d != 0.0f ? x / d : 0.0f; }

// Symmetric 32-element formats: q8_0 (±127), q4_0 and q5_0 (the weight of largest magnitude maps
// to the code −8 or −16, ggml's choice, so the other side keeps one more level).
void quantize_sym32(const float* x, DType t, unsigned char* b) {
  if (t == DType::q8_0) {
    float amax = 0.0f;
    for (int l = 0; l < 32; ++l) amax = std::max(amax, std::fabs(x[l]));
    const float d = f16_round(amax / 127.0f);
    put_f16(b, d);
    for (int l = 0; l < 32; ++l)
      b[2 + l] = static_cast<unsigned char>(
          static_cast<int8_t>(round_clamp(ratio(x[l], d), -127, 127)));
    return;
  }
  const bool five = t == DType::q5_0;
  const int half_levels = five ? 16 : 8;
  float vmax = 0.0f;
  for (int l = 0; l < 32; ++l)
    if (std::fabs(x[l]) > std::fabs(vmax)) vmax = x[l];
  const float d = f16_round(vmax / static_cast<float>(-half_levels));
  put_f16(b, d);
  unsigned char* qs = b + (five ? 6 : 2);
  std::memset(qs, 0, 16);
  uint32_t qh = 0;
  for (int l = 0; l < 32; ++l) {
    const int q = round_clamp(ratio(x[l], d) + static_cast<float>(half_levels), 0,
                              2 * half_levels - 1);
    qs[l % 16] = static_cast<unsigned char>(qs[l % 16] | ((q & 0xF) << (l < 16 ? 0 : 4)));
    if (five && (q & 16) != 0) qh |= 1u << l;
  }
  if (five) std::memcpy(b + 2, &qh, 4);  // little-endian hosts only (x86-64, aarch64)
}

// Asymmetric 32-element formats: q4_1, q5_1 (w = d·q + m, m the block's minimum).
void quantize_asym32(const float* x, DType t, unsigned char* b) {
  const bool five = t == DType::q5_1;
  const int levels = five ? 31 : 15;
  float lo = x[0];
  float hi = x[0];
  for (int l = 0; l < 32; ++l) {
    lo = std::min(lo, x[l]);
    hi = std::max(hi, x[l]);
  }
  const float d = f16_round((hi - lo) / static_cast<float>(levels));
  const float m = f16_round(lo);
  put_f16(b, d);
  put_f16(b + 2, m);
  unsigned char* qs = b + (five ? 8 : 4);
  std::memset(qs, 0, 16);
  uint32_t qh = 0;
  for (int l = 0; l < 32; ++l) {
    const int q = round_clamp(ratio(x[l] - m, d), 0, levels);
    qs[l % 16] = static_cast<unsigned char>(qs[l % 16] | ((q & 0xF) << (l < 16 ? 0 : 4)));
    if (five && (q & 16) != 0) qh |= 1u << l;
  }
  if (five) std::memcpy(b + 4, &qh, 4);
}

// q4_k and q5_k: 8 sub-blocks of 32, w = (d·sc)·q − (dmin·mn) with 6-bit sc and mn. Each
// sub-block's mn covers its minimum (rounded up), then sc its range above −dmin·mn (rounded up).
void quantize_k45(const float* x, DType t, unsigned char* b) {
  const bool five = t == DType::q5_k;
  const int levels = five ? 31 : 15;
  float lo[8];
  float hi[8];
  float mn_max = 0.0f;
  for (int c = 0; c < 8; ++c) {
    lo[c] = std::min(0.0f, *std::min_element(x + 32 * c, x + 32 * c + 32));
    hi[c] = std::max(0.0f, *std::max_element(x + 32 * c, x + 32 * c + 32));
    mn_max = std::max(mn_max, -lo[c]);
  }
  const float dmin = f16_round(mn_max / 63.0f);
  int mn[8];
  float m1[8];
  float need[8];
  float need_max = 0.0f;
  for (int c = 0; c < 8; ++c) {
    mn[c] = dmin > 0.0f ? std::min(63, static_cast<int>(std::ceil(-lo[c] / dmin))) : 0;
    m1[c] = dmin * static_cast<float>(mn[c]);
    need[c] = (hi[c] + m1[c]) / static_cast<float>(levels);
    need_max = std::max(need_max, need[c]);
  }
  const float d = f16_round(need_max / 63.0f);
  put_f16(b, d);
  put_f16(b + 2, dmin);
  unsigned char* scales = b + 4;
  std::memset(scales, 0, 12);
  unsigned char* qh = b + 16;
  unsigned char* qs = b + (five ? 48 : 16);
  if (five) std::memset(qh, 0, 32);
  std::memset(qs, 0, 128);
  for (int c = 0; c < 8; ++c) {
    const int sc = d > 0.0f ? std::min(63, static_cast<int>(std::ceil(need[c] / d))) : 0;
    const int m = mn[c];
    if (c < 4) {
      scales[c] = static_cast<unsigned char>(sc);
      scales[c + 4] = static_cast<unsigned char>(m);
    } else {
      scales[c + 4] = static_cast<unsigned char>((sc & 0xF) | ((m & 0xF) << 4));
      scales[c - 4] = static_cast<unsigned char>(scales[c - 4] | ((sc >> 4) << 6));
      scales[c] = static_cast<unsigned char>(scales[c] | ((m >> 4) << 6));
    }
    const float d1 = d * static_cast<float>(sc);
    for (int l = 0; l < 32; ++l) {
      const int q = round_clamp(ratio(x[32 * c + l] + m1[c], d1), 0, levels);
      unsigned char& byte = qs[32 * (c / 2) + l];
      byte = static_cast<unsigned char>(byte | ((q & 0xF) << (4 * (c & 1))));
      if (five && (q & 16) != 0) qh[l] = static_cast<unsigned char>(qh[l] | (1u << c));
    }
  }
}

// q6_k: 16 sub-blocks of 16, w = (d·sc)·(q − 32) with int8 sc ≥ 0 covering max|x| / 31
// (rounded up), codes −32 … 31.
void quantize_q6k(const float* x, unsigned char* b) {
  float need[16];
  float need_max = 0.0f;
  for (int s = 0; s < 16; ++s) {
    float amax = 0.0f;
    for (int l = 0; l < 16; ++l) amax = std::max(amax, std::fabs(x[16 * s + l]));
    need[s] = amax / 31.0f;
    need_max = std::max(need_max, need[s]);
  }
  const float d = f16_round(need_max / 127.0f);
  std::memset(b, 0, 210);
  put_f16(b + 208, d);
  for (int i = 0; i < 256; ++i) {
    const int s = i / 16;
    const int sc = d > 0.0f ? std::min(127, static_cast<int>(std::ceil(need[s] / d))) : 0;
    if (i % 16 == 0) b[192 + s] = static_cast<unsigned char>(static_cast<int8_t>(sc));
    const float d1 = d * static_cast<float>(sc);
    const int q = round_clamp(ratio(x[i], d1), -32, 31) + 32;
    const int c = i / 32;
    const int l = i % 32;
    const int h = c / 4;
    const int t = c % 4;
    unsigned char& lo = b[64 * h + l + 32 * (t & 1)];
    lo = static_cast<unsigned char>(lo | ((q & 0xF) << (t >= 2 ? 4 : 0)));
    unsigned char& hi = b[128 + 32 * h + l];
    hi = static_cast<unsigned char>(hi | ((q >> 4) << (2 * t)));
  }
}

}  // namespace

void quantize_ggml_row(const float* src, int64_t cols, DType dtype, void* dst, const char* what) {
  FERRY_EXPECT(is_ggml_block(dtype), "quantize_ggml_row: {} is not a ggml block dtype",
               dtype_name(dtype));
  FERRY_EXPECT(ggml_row_fits(dtype, cols),
               "{}: a {} row holds whole blocks of {} columns, but this row has {}; choose a "
               "32-element format (q8_0, q4_0, …) or keep the tensor unquantized",
               what, dtype_name(dtype), ggml_block_elems(dtype), cols);
  for (int64_t j = 0; j < cols; ++j) {
    FERRY_EXPECT(std::isfinite(src[j]) && std::fabs(src[j]) <= kF16Max,
                 "{}: element {} is {}; {} holds finite weights within f16's range (±65504)", what,
                 j, src[j], dtype_name(dtype));
  }
  const int64_t elems = ggml_block_elems(dtype);
  const uint64_t bytes = ggml_block_bytes(dtype);
  auto* out = static_cast<unsigned char*>(dst);
  for (int64_t blk = 0; blk < cols / elems; ++blk) {
    const float* x = src + blk * elems;
    unsigned char* b = out + static_cast<uint64_t>(blk) * bytes;
    switch (dtype) {
      case DType::q8_0:
      case DType::q4_0:
      case DType::q5_0:
        quantize_sym32(x, dtype, b);
        break;
      case DType::q4_1:
      case DType::q5_1:
        quantize_asym32(x, dtype, b);
        break;
      case DType::q4_k:
      case DType::q5_k:
        quantize_k45(x, dtype, b);
        break;
      default:
        quantize_q6k(x, b);
        break;
    }
  }
}

}  // namespace ferry::kernels::cpu
