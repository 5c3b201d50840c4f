// attention, layer_norm, add and convert_to_f32 with AVX2 + FMA + F16C.
//
// attention: one (token, head) pair at a time, an online (flash-style) softmax over blocks of 64
// keys. The scores of a block live on the stack; when a block raises the running maximum the
// denominator and the partial output are rescaled, and the output row itself accumulates the
// weighted values, so the kernel needs no scratch however long the context. Decode attention
// reads every cached key and value once, so it is bound by memory, not by these FMAs.
//
// layer_norm: two passes in f32 like torch (mean, then the mean of squared deviations), each
// over eight lanes summed in the same tree as the portable path.
#include <cmath>

#include "kernels/cpu/detail/avx2_simd.hpp"
#include "kernels/cpu/detail/paths.hpp"

namespace ferry::kernels::cpu::detail::avx2 {
namespace {

float dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps();
  __m256 acc3 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 16), _mm256_loadu_ps(b + j + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 24), _mm256_loadu_ps(b + j + 24), acc3);
  }
  for (; j + 8 <= n; j += 8) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc0);
  }
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; j < n; ++j) sum += a[j] * b[j];
  return sum;
}

// y[d] = y[d] · scale + weight · v[d].
void scale_add(float* y, float scale, float weight, const float* v, int64_t n) {
  const __m256 s = _mm256_set1_ps(scale);
  const __m256 wv = _mm256_set1_ps(weight);
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(y + d), s);
    _mm256_storeu_ps(y + d, _mm256_fmadd_ps(wv, _mm256_loadu_ps(v + d), scaled));
  }
  for (; d < n; ++d) y[d] = y[d] * scale + weight * v[d];
}

void fill_zero(float* y, int64_t n) {
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) _mm256_storeu_ps(y + d, _mm256_setzero_ps());
  for (; d < n; ++d) y[d] = 0.0f;
}

void divide(float* y, float divisor, int64_t n) {
  const __m256 f = _mm256_set1_ps(divisor);
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) _mm256_storeu_ps(y + d, _mm256_div_ps(_mm256_loadu_ps(y + d), f));
  for (; d < n; ++d) y[d] /= divisor;
}

float sum8(const float* x, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + j));
  float sum = hsum(acc);
  for (; j < n; ++j) sum += x[j];
  return sum;
}

float sum_sq_dev8(const float* x, float mean, int64_t n) {
  const __m256 mv = _mm256_set1_ps(mean);
  __m256 acc = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + j), mv);
    acc = _mm256_fmadd_ps(d, d, acc);
  }
  float sum = hsum(acc);
  for (; j < n; ++j) sum += (x[j] - mean) * (x[j] - mean);
  return sum;
}

}  // namespace

void attention_pairs(const AttentionArgs& a, int64_t p_begin, int64_t p_end) {
  // HF divides the scores by sqrt(head_dim) computed in float32 (attention_scale_divisor in
  // kernels/common/math.hpp; not called here so that no AVX2 copy of it exists).
  const float divisor = ::sqrtf(static_cast<float>(a.head_dim));
  const int64_t hd = a.head_dim;
  float scores[kAttentionKeyBlock];
  for (int64_t p = p_begin; p < p_end; ++p) {
    const int64_t t = p / a.n_head;
    const int64_t h = p % a.n_head;
    const float* q = a.q + t * a.q_stride + h * hd;
    const float* k = a.k + attention_kv_head(a, h) * a.kv_head_stride;
    const float* v = a.v + attention_kv_head(a, h) * a.kv_head_stride;
    float* out = a.out + t * a.out_stride + h * hd;
    const int64_t n_keys = a.n_past + t + 1;
    float running_max = -INFINITY;
    float denom = 0.0f;
    // Stored zeros, not a multiply by 0: out may hold anything (NaN included) on entry.
    fill_zero(out, hd);
    for (int64_t j0 = 0; j0 < n_keys; j0 += kAttentionKeyBlock) {
      const int64_t nb = min_i64(kAttentionKeyBlock, n_keys - j0);
      // Row j0 + j of the paged cache sits at table[block] · block_stride + r · head_dim, walked
      // key by key (kernels/common/kv_paging.hpp's kv_paged_offset, not called here so that no
      // AVX2 copy of it exists).
      const int64_t block0 = j0 / a.block_tokens;
      const int64_t r0 = j0 % a.block_tokens;
      float block_max = -INFINITY;
      for (int64_t j = 0, b = block0, r = r0; j < nb; ++j, ++r) {
        if (r == a.block_tokens) {
          r = 0;
          ++b;
        }
        scores[j] = dot(q, k + a.block_table[b] * a.block_stride + r * hd, hd) / divisor;
        block_max = block_max < scores[j] ? scores[j] : block_max;
      }
      float correction = 1.0f;
      if (block_max > running_max) {
        correction = ::expf(running_max - block_max);
        denom *= correction;
        running_max = block_max;
      }
      for (int64_t j = 0, b = block0, r = r0; j < nb; ++j, ++r) {
        if (r == a.block_tokens) {
          r = 0;
          ++b;
        }
        const float weight = ::expf(scores[j] - running_max);
        denom += weight;
        // The first key of the block also applies the block's rescale, in the same pass.
        scale_add(out, j == 0 ? correction : 1.0f, weight,
                  v + a.block_table[b] * a.block_stride + r * hd, hd);
      }
    }
    divide(out, denom, hd);
  }
}

void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    const float* row = x + i * n;
    float* out = y + i * n;
    const float mean = sum8(row, n) / static_cast<float>(n);
    const float rstd = 1.0f / ::sqrtf(sum_sq_dev8(row, mean, n) / static_cast<float>(n) + eps);
    const __m256 mv = _mm256_set1_ps(mean);
    const __m256 rv = _mm256_set1_ps(rstd);
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const __m256 normed = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(row + j), mv), rv);
      _mm256_storeu_ps(out + j, _mm256_add_ps(_mm256_mul_ps(normed, _mm256_loadu_ps(gamma + j)),
                                              _mm256_loadu_ps(beta + j)));
    }
    for (; j < n; ++j) out[j] = (row[j] - mean) * rstd * gamma[j] + beta[j];
  }
}

void add(float* y, const float* x, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  if (dtype == DType::f32) {
    std::memcpy(dst, src, static_cast<std::size_t>(n) * sizeof(float));
    return;
  }
  const auto* s = static_cast<const uint16_t*>(src);
  int64_t i = 0;
  if (dtype == DType::f16) {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, F16Weights::load8(s + i));
    for (; i < n; ++i) dst[i] = F16Weights::load1(s + i);
  } else {
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, BF16Weights::load8(s + i));
    for (; i < n; ++i) dst[i] = BF16Weights::load1(s + i);
  }
}

}  // namespace ferry::kernels::cpu::detail::avx2
