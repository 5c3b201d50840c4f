// Reference CPU kernels: the plainest loops that compute each operation in float32, one thread,
// summing in index order. They are the yardstick the fast kernels (and the CUDA ones) are tested
// against, so they favour obviousness over speed; attention even recomputes every score three
// times rather than keep any scratch, following softmax's definition step by step.
#include <cmath>
#include <cstring>

#include "kernels/common/ggml_quant_math.hpp"
#include "kernels/common/kv_paging.hpp"
#include "kernels/common/math.hpp"
#include "kernels/common/nn_math.hpp"
#include "kernels/common/quant_math.hpp"
#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"

namespace ferry::kernels::cpu::ref {
namespace {

// Element j of a float weight array of the given dtype, converted exactly.
float weight_at(const void* w, DType wdt, int64_t j) {
  switch (wdt) {
    case DType::f32:
      return static_cast<const float*>(w)[j];
    case DType::f16:
      return f16_to_f32(static_cast<const uint16_t*>(w)[j]);
    case DType::bf16:
      return bf16_to_f32(static_cast<const uint16_t*>(w)[j]);
    default:
      break;
  }
  FERRY_EXPECT(false, "ref kernels read f32, f16 or bf16 weights, not {}", dtype_name(wdt));
  return 0.0f;
}

// Element (o, j) of a [n, k] weight matrix of any weight dtype, packed ones included.
float matrix_weight_at(const void* w, DType wdt, int64_t k, int64_t o, int64_t j) {
  if (!is_row_packed(wdt)) return weight_at(w, wdt, o * k + j);
  const auto* row =
      static_cast<const unsigned char*>(w) + static_cast<uint64_t>(o) * packed_row_bytes(wdt, k);
  return is_ggml_block(wdt) ? ggml_row_weight(row, wdt, j) : packed_row_weight(row, wdt, k, j);
}

}  // namespace

void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y) {
  FERRY_EXPECT(is_matrix_weight(wdt),
               "linear: weights must be f32, f16, bf16, q8, q4g64, q4g128 or a ggml block type "
               "(q8_0 … q6_k), got {}",
               dtype_name(wdt));
  FERRY_EXPECT(!is_ggml_block(wdt) || ggml_row_fits(wdt, k),
               "linear: a {} row holds whole blocks of {} columns, but k = {}", dtype_name(wdt),
               ggml_block_elems(wdt), k);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t o = 0; o < n; ++o) {
      float sum = 0.0f;
      for (int64_t j = 0; j < k; ++j) sum += x[i * k + j] * matrix_weight_at(w, wdt, k, o, j);
      y[i * n + o] = bias != nullptr ? sum + bias[o] : sum;
    }
  }
}

void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * n;
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += row[j];
    const float mean = sum / static_cast<float>(n);
    float sq = 0.0f;
    for (int64_t j = 0; j < n; ++j) sq += (row[j] - mean) * (row[j] - mean);
    const float var = sq / static_cast<float>(n);
    const float rstd = 1.0f / ::sqrtf(var + eps);
    for (int64_t j = 0; j < n; ++j) y[i * n + j] = (row[j] - mean) * rstd * gamma[j] + beta[j];
  }
}

void gelu_new(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = kernels::gelu_new(x[i]);
}

void add(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void rotary_interleaved(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                        int64_t rotary_dim, const int32_t* positions) {
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t h = 0; h < n_head; ++h) {
      float* head = x + r * row_stride + h * head_dim;
      for (int64_t i = 0; i < rotary_dim / 2; ++i) {
        const float angle = rotary_angle(positions[r], i, rotary_dim);
        rotary_rotate_pair(head[2 * i], head[2 * i + 1], ::cosf(angle), ::sinf(angle));
      }
    }
  }
}

void rotary_pairs(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                  int64_t rotary_dim, const float* inv_freq, const int32_t* positions) {
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t h = 0; h < n_head; ++h) {
      float* head = x + r * row_stride + h * head_dim;
      for (int64_t i = 0; i < rotary_dim / 2; ++i) {
        const float angle = rotary_angle_freq(positions[r], inv_freq[i]);
        rotary_rotate_pair(head[2 * i], head[2 * i + 1], ::cosf(angle), ::sinf(angle));
      }
    }
  }
}

void rms_norm(const float* x, int64_t m, int64_t n, const float* gamma, float eps, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * n;
    float sq = 0.0f;
    for (int64_t j = 0; j < n; ++j) sq += row[j] * row[j];
    const float rstd = rms_norm_rstd(sq, n, eps);
    for (int64_t j = 0; j < n; ++j) y[i * n + j] = rms_norm_apply(row[j], rstd, gamma[j]);
  }
}

void silu_mul(float* gate, const float* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) gate[i] = kernels::silu_mul(gate[i], up[i]);
}

void rotary_half(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                 int64_t rotary_dim, const float* inv_freq, const int32_t* positions) {
  const int64_t half = rotary_dim / 2;
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t h = 0; h < n_head; ++h) {
      float* head = x + r * row_stride + h * head_dim;
      for (int64_t i = 0; i < half; ++i) {
        const float angle = rotary_angle_freq(positions[r], inv_freq[i]);
        rotary_rotate_half_pair(head[i], head[i + half], ::cosf(angle), ::sinf(angle));
      }
    }
  }
}

void attention(const AttentionArgs& a) {
  const float divisor = attention_scale_divisor(a.head_dim);
  for (int64_t t = 0; t < a.n_new; ++t) {
    const int64_t n_keys = a.n_past + t + 1;
    for (int64_t h = 0; h < a.n_head; ++h) {
      const float* q = a.q + t * a.q_stride + h * a.head_dim;
      const int64_t kvh = attention_kv_head(a, h);
      // Row j of the head's keys or values, in a contiguous or a paged cache.
      auto row = [&](const float* base, int64_t j) {
        return a.block_table ? base + kv_paged_offset(a.block_table, a.block_tokens, a.block_stride,
                                                      a.kv_head_stride, a.head_dim, kvh, j, 0)
                             : base + kvh * a.kv_head_stride + j * a.head_dim;
      };
      float* out = a.out + t * a.out_stride + h * a.head_dim;
      auto score = [&](int64_t j) {
        const float* kj = row(a.k, j);
        float dot = 0.0f;
        for (int64_t d = 0; d < a.head_dim; ++d) dot += q[d] * kj[d];
        return dot / divisor;
      };
      float max_score = -INFINITY;
      for (int64_t j = 0; j < n_keys; ++j) max_score = fmaxf(max_score, score(j));
      float denom = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) denom += ::expf(score(j) - max_score);
      for (int64_t d = 0; d < a.head_dim; ++d) out[d] = 0.0f;
      for (int64_t j = 0; j < n_keys; ++j) {
        const float p = ::expf(score(j) - max_score) / denom;
        const float* vj = row(a.v, j);
        for (int64_t d = 0; d < a.head_dim; ++d) out[d] += p * vj[d];
      }
    }
  }
}

void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  FERRY_EXPECT(is_matrix_weight(dtype),
               "convert_to_f32: source must be f32, f16, bf16 or a packed row, got {}",
               dtype_name(dtype));
  FERRY_EXPECT(!is_ggml_block(dtype) || ggml_row_fits(dtype, n),
               "convert_to_f32: a {} row holds whole blocks of {} columns, but n = {}",
               dtype_name(dtype), ggml_block_elems(dtype), n);
  for (int64_t i = 0; i < n; ++i) dst[i] = matrix_weight_at(src, dtype, n, 0, i);
}

}  // namespace ferry::kernels::cpu::ref

namespace ferry::kernels::cpu {

// On the bits: magnitude (sign cleared) at least 0x4780 (65536) and exponent not all ones
// (inf / NaN stay what they are). A branch-free sum, so the compiler vectorizes it.
int64_t bf16_count_beyond_f16(const uint16_t* x, int64_t n) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t mag = x[i] & 0x7fffu;
    count += (mag >= 0x4780u) & (mag < 0x7f80u);
  }
  return count;
}

}  // namespace ferry::kernels::cpu
