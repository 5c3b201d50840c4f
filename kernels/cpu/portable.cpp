// The portable fast CPU kernels: what runs without AVX2 (or with FERRY_SIMD=scalar). Plain C++
// shaped so a compiler can vectorise it for whatever baseline it targets: every reduction keeps
// eight independent partial sums (a fixed order, so results are reproducible), and linear works
// on 16 weight rows × 256 columns at a time (f16 and bf16 converted once to f32 into a 16 KiB
// stack tile) that stay in L1 while every row of x passes over them. Packed and ggml block weights
// are dequantized into the same tile (kernels/common/quant_math.hpp, ggml_quant_math.hpp).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/common/ggml_quant_math.hpp"
#include "kernels/common/math.hpp"
#include "kernels/common/quant_math.hpp"
#include "kernels/cpu/detail/paths.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"

namespace ferry::kernels::cpu::detail::portable {
namespace {

constexpr int kLanes = 8;
constexpr int64_t kKBlock = 256;
constexpr int kRowTile = 4;

// Sum of eight partial sums, pairwise (the same tree as the AVX2 path's horizontal sum).
float sum_lanes(const float (&acc)[kLanes]) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += a[j + l] * b[j + l];
  }
  float sum = sum_lanes(acc);
  for (; j < n; ++j) sum += a[j] * b[j];
  return sum;
}

// y[r] += x · w[r, :] over kc columns for NR weight rows at once (x is read once for all).
template <int NR>
void dot_rows(const float* x, const float* w, int64_t ldw, int64_t kc, float* y) {
  float acc[NR][kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= kc; j += kLanes) {
    for (int r = 0; r < NR; ++r) {
      for (int l = 0; l < kLanes; ++l) acc[r][l] += x[j + l] * w[r * ldw + j + l];
    }
  }
  for (int r = 0; r < NR; ++r) {
    float sum = sum_lanes(acc[r]);
    for (int64_t t = j; t < kc; ++t) sum += x[t] * w[r * ldw + t];
    y[r] += sum;
  }
}

void dot_rows_n(int nr, const float* x, const float* w, int64_t ldw, int64_t kc, float* y) {
  switch (nr) {
    case 4:
      dot_rows<4>(x, w, ldw, kc, y);
      break;
    case 3:
      dot_rows<3>(x, w, ldw, kc, y);
      break;
    case 2:
      dot_rows<2>(x, w, ldw, kc, y);
      break;
    default:
      dot_rows<1>(x, w, ldw, kc, y);
      break;
  }
}

void to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  if (dtype == DType::f32) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
  } else if (dtype == DType::f16) {
    const auto* h = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(h[i]);
  } else {
    const auto* b = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(b[i]);
  }
}

// dst[0:n] = columns j0 … j0 + n − 1 of a packed row of cols columns, dequantized a group at a
// time (the group's scale and minimum read once).
void dequant_slice(const unsigned char* row, DType t, int64_t cols, int64_t j0, int64_t n,
                   float* dst) {
  if (is_ggml_block(t)) {  // j0 is a multiple of kKBlock, n of 32: whole chunks
    ggml_dequantize(row, t, j0, n, dst);
    return;
  }
  if (t == DType::q8) {
    const float scale = q8_row_scale(row);
    const int8_t* q = q8_row_values(row) + j0;
    for (int64_t i = 0; i < n; ++i) dst[i] = scale * static_cast<float>(q[i]);
    return;
  }
  const int64_t group = quant_group_size(t);
  const int64_t ng = quant_groups(t, cols);
  for (int64_t j = j0; j < j0 + n;) {
    const int64_t g = j / group;
    const int64_t end = std::min(j0 + n, (g + 1) * group);
    const Q4Group q = q4_group(row, ng, group, g);
    for (; j < end; ++j)
      dst[j - j0] = q4_dequant(q.min, q.scale, q4_code(q.bytes, j - g * group, group));
  }
}

}  // namespace

void linear_rows(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
                 const float* bias, float* y, int64_t o_begin, int64_t o_end) {
  const std::size_t elem = dtype_size(wdt);
  const uint64_t row_bytes = packed_row_bytes(wdt, k);
  float tile[kLinearRowGroup * kKBlock];
  for (int64_t g = o_begin; g < o_end; g += kLinearRowGroup) {
    const int64_t rows = std::min(kLinearRowGroup, o_end - g);
    for (int64_t i = 0; i < m; ++i) std::fill_n(y + i * n + g, rows, 0.0f);
    for (int64_t kb = 0; kb < k; kb += kKBlock) {
      const int64_t kc = std::min(kKBlock, k - kb);
      const float* wb = nullptr;
      int64_t ldw = 0;
      if (wdt == DType::f32) {
        wb = static_cast<const float*>(w) + g * k + kb;
        ldw = k;
      } else if (is_row_packed(wdt)) {
        for (int64_t r = 0; r < rows; ++r) {
          const auto* row =
              static_cast<const unsigned char*>(w) + static_cast<uint64_t>(g + r) * row_bytes;
          dequant_slice(row, wdt, k, kb, kc, tile + r * kKBlock);
        }
        wb = tile;
        ldw = kKBlock;
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          const auto* src = static_cast<const unsigned char*>(w) +
                            static_cast<std::size_t>((g + r) * k + kb) * elem;
          to_f32(src, wdt, kc, tile + r * kKBlock);
        }
        wb = tile;
        ldw = kKBlock;
      }
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < rows; r += kRowTile) {
          const int nr = static_cast<int>(std::min<int64_t>(kRowTile, rows - r));
          dot_rows_n(nr, x + i * k + kb, wb + r * ldw, ldw, kc, y + i * n + g + r);
        }
      }
    }
    if (bias != nullptr) {
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < rows; ++r) y[i * n + g + r] += bias[g + r];
      }
    }
  }
}

// Online (flash-style) softmax over blocks of keys: the running maximum and denominator are
// rescaled when a block raises the maximum, and the output row itself accumulates the weighted
// values, so no scratch beyond one block of scores is needed.
void attention_pairs(const AttentionArgs& a, int64_t p_begin, int64_t p_end) {
  const float divisor = attention_scale_divisor(a.head_dim);
  const int64_t hd = a.head_dim;
  float scores[kAttentionKeyBlock];
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t t = p / a.n_head;
    const int64_t h = p % a.n_head;
    const float* q = a.q + t * a.q_stride + h * hd;
    // The head's keys and values: runs of block_tokens rows, one per block of the table.
    const float* k = a.k + attention_kv_head(a, h) * a.kv_head_stride;
    const float* v = a.v + attention_kv_head(a, h) * a.kv_head_stride;
    float* out = a.out + t * a.out_stride + h * hd;
    const int64_t n_keys = a.n_past + t + 1;
    float running_max = -INFINITY;
    float denom = 0.0f;
    std::fill_n(out, hd, 0.0f);
    for (int64_t j0 = 0; j0 < n_keys; j0 += kAttentionKeyBlock) {
      const int64_t nb = std::min(kAttentionKeyBlock, n_keys - j0);
      // Row j0 + j sits at table[block] · block_stride + r · head_dim: walked, not divided.
      const int64_t block0 = j0 / a.block_tokens;
      const int64_t r0 = j0 % a.block_tokens;
      float block_max = -INFINITY;
      for (int64_t j = 0, b = block0, r = r0; j < nb; ++j, ++r) {
        if (r == a.block_tokens) {
          r = 0;
          ++b;
        }
        scores[j] = dot(q, k + a.block_table[b] * a.block_stride + r * hd, hd) / divisor;
        block_max = fmaxf(block_max, scores[j]);
      }
      if (block_max > running_max) {
        const float correction = ::expf(running_max - block_max);
        denom *= correction;
        for (int64_t d = 0; d < hd; ++d) out[d] *= correction;
        running_max = block_max;
      }
      for (int64_t j = 0, b = block0, r = r0; j < nb; ++j, ++r) {
        if (r == a.block_tokens) {
          r = 0;
          ++b;
        }
        const float weight = ::expf(scores[j] - running_max);
        denom += weight;
        const float* vj = v + a.block_table[b] * a.block_stride + r * hd;
        for (int64_t d = 0; d < hd; ++d) out[d] += weight * vj[d];
      }
    }
    for (int64_t d = 0; d < hd; ++d) out[d] /= denom;
  }
}

void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * n;
    float acc[kLanes] = {};
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) acc[l] += row[j + l];
    }
    float sum = sum_lanes(acc);
    for (; j < n; ++j) sum += row[j];
    const float mean = sum / static_cast<float>(n);
    float sq_acc[kLanes] = {};
    j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const float d = row[j + l] - mean;
        sq_acc[l] += d * d;
      }
    }
    float sq = sum_lanes(sq_acc);
    for (; j < n; ++j) sq += (row[j] - mean) * (row[j] - mean);
    const float rstd = 1.0f / ::sqrtf(sq / static_cast<float>(n) + eps);
    for (j = 0; j < n; ++j) y[i * n + j] = (row[j] - mean) * rstd * gamma[j] + beta[j];
  }
}

void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  if (is_row_packed(dtype)) {
    dequant_slice(static_cast<const unsigned char*>(src), dtype, n, 0, n, dst);
  } else {
    to_f32(src, dtype, n, dst);
  }
}

}  // namespace ferry::kernels::cpu::detail::portable
