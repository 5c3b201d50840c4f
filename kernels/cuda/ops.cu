// The CUDA kernels that are not a matrix product or attention: layer norm and RMSNorm, gelu_new,
// SwiGLU's silu·up, adds, both rotary layouts, dtype conversion and the KV cache store. They are
// memory-bound one-pass loops; each element's math is the shared __host__ __device__ function
// the CPU reference also follows (kernels/common/), so the two backends differ only in the order
// of the norms' sums, the device's libm, and where nvcc fuses a product and a sum into one FMA
// (its default). The norms run one 256-thread block per row (hidden rows are 3584–5120 wide:
// 14–20 floats a thread; Qwen3's per-head norm rows 128) and re-read the row for each pass from
// L1/L2 instead of holding it.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/common/convert.hpp"
#include "kernels/common/kv_paging.hpp"
#include "kernels/common/math.hpp"
#include "kernels/common/nn_math.hpp"
#include "kernels/cuda/detail/reduce.cuh"
#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {

namespace {

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements: enough to fill any GPU, never above the limit.
unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, 65535));
}

__global__ void layer_norm_kernel(const float* __restrict__ x, int64_t n,
                                  const float* __restrict__ gamma, const float* __restrict__ beta,
                                  float eps, void* __restrict__ y, DType ydt) {
  __shared__ float scratch[32];
  const float* row = x + blockIdx.x * n;
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += row[j];
  const float mean = layer_norm_mean(detail::block_sum(s, scratch), n);
  float sq = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sq += (row[j] - mean) * (row[j] - mean);
  const float rstd = layer_norm_rstd(detail::block_sum(sq, scratch), n, eps);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    store_from_f32(y, ydt, blockIdx.x * n + j,
                   layer_norm_apply(row[j], mean, rstd, gamma[j], beta[j]));
}

// No __restrict__ on x and y: they may be the same memory (f32 output, in place). Each element
// is read by the thread that writes it, and every read of the sum pass happens before the
// block_sum's barriers, so no write overtakes a read.
__global__ void rms_norm_kernel(const float* x, int64_t n, const float* __restrict__ gamma,
                                float eps, void* y, DType ydt) {
  __shared__ float scratch[32];
  const float* row = x + blockIdx.x * n;
  float sq = 0.0f;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) sq += row[j] * row[j];
  const float rstd = rms_norm_rstd(detail::block_sum(sq, scratch), n, eps);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
    store_from_f32(y, ydt, blockIdx.x * n + j, rms_norm_apply(row[j], rstd, gamma[j]));
}

__global__ void gelu_kernel(float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    x[i] = kernels::gelu_new(x[i]);
}

__global__ void silu_mul_kernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    gate[i] = kernels::silu_mul(gate[i], up[i]);
}

__global__ void add_kernel(float* __restrict__ y, const float* __restrict__ x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] += x[i];
}

__global__ void add_bias_kernel(float* __restrict__ y, int64_t total, int64_t n,
                                const float* __restrict__ bias) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * blockDim.x)
    y[i] = bias_add(y[i], bias[i % n]);
}

__global__ void residual_kernel(float* __restrict__ x, const float* __restrict__ attn,
                                const float* __restrict__ mlp, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    x[i] = kernels::gptj_residual(x[i], attn[i], mlp[i]);
}

// src and dst may alias (same-size types): each thread reads its element before writing it.
__global__ void convert_kernel(const void* src, DType sdt, void* dst, DType ddt, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    if (sdt == DType::bf16 && ddt == DType::f16) {
      static_cast<uint16_t*>(dst)[i] = bf16_to_f16(static_cast<const uint16_t*>(src)[i]);
    } else {
      store_from_f32(dst, ddt, i, load_as_f32(src, sdt, i));
    }
  }
}

// One thread per (row, head, pair).
__global__ void rotary_kernel(float* __restrict__ x, int64_t m, int64_t row_stride, int64_t n_head,
                              int64_t head_dim, int64_t rotary_dim,
                              const int32_t* __restrict__ positions) {
  const int64_t pairs = rotary_dim / 2;
  const int64_t total = m * n_head * pairs;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = idx % pairs;
    const int64_t h = (idx / pairs) % n_head;
    const int64_t r = idx / (pairs * n_head);
    float* head = x + r * row_stride + h * head_dim;
    const float angle = rotary_angle(positions[r], i, rotary_dim);
    // cosf/sinf, not the __cosf intrinsics: angles reach thousands of radians and need the
    // full range reduction the CPU's libm does.
    rotary_rotate_pair(head[2 * i], head[2 * i + 1], ::cosf(angle), ::sinf(angle));
  }
}

// One thread per (row, head, pair): consecutive threads take consecutive i, so the reads of
// x[i] and of x[i + half] are each coalesced. The CPU takes each cos/sin once per (row, pair) for
// every head; here every thread computes its own, the same bits (sinf/cosf are deterministic).
__global__ void rotary_half_kernel(float* __restrict__ x, int64_t m, int64_t row_stride,
                                   int64_t n_head, int64_t head_dim, int64_t rotary_dim,
                                   const float* __restrict__ inv_freq,
                                   const int32_t* __restrict__ positions) {
  const int64_t half = rotary_dim / 2;
  const int64_t total = m * n_head * half;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t h = (idx / half) % n_head;
    const int64_t r = idx / (half * n_head);
    float* head = x + r * row_stride + h * head_dim;
    const float angle = rotary_angle_freq(positions[r], inv_freq[i]);
    // Full-range cosf/sinf, as in rotary_kernel.
    rotary_rotate_half_pair(head[i], head[i + half], ::cosf(angle), ::sinf(angle));
  }
}

// rotary_kernel's pairs with rotary_half_kernel's frequency table.
__global__ void rotary_pairs_kernel(float* __restrict__ x, int64_t m, int64_t row_stride,
                                    int64_t n_head, int64_t head_dim, int64_t rotary_dim,
                                    const float* __restrict__ inv_freq,
                                    const int32_t* __restrict__ positions) {
  const int64_t pairs = rotary_dim / 2;
  const int64_t total = m * n_head * pairs;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = idx % pairs;
    const int64_t h = (idx / pairs) % n_head;
    const int64_t r = idx / (pairs * n_head);
    float* head = x + r * row_stride + h * head_dim;
    const float angle = rotary_angle_freq(positions[r], inv_freq[i]);
    rotary_rotate_pair(head[2 * i], head[2 * i + 1], ::cosf(angle), ::sinf(angle));
  }
}

__global__ void kv_store_kernel(const float* __restrict__ k, const float* __restrict__ v,
                                int64_t src_stride, int64_t n_new, int64_t n_past, int64_t n_head,
                                int64_t head_dim, void* k_cache, void* v_cache,
                                int64_t kv_head_stride, DType kv_dt,
                                const int32_t* __restrict__ block_table, int64_t block_tokens,
                                int64_t block_stride) {
  const int64_t total = n_new * n_head * head_dim;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    const int64_t d = idx % head_dim;
    const int64_t h = (idx / head_dim) % n_head;
    const int64_t t = idx / (head_dim * n_head);
    const int64_t src = t * src_stride + h * head_dim + d;
    const int64_t dst = block_table != nullptr
                            ? kv_paged_offset(block_table, block_tokens, block_stride,
                                              kv_head_stride, head_dim, h, n_past + t, d)
                            : h * kv_head_stride + (n_past + t) * head_dim + d;
    store_from_f32(k_cache, kv_dt, dst, k[src]);
    store_from_f32(v_cache, kv_dt, dst, v[src]);
  }
}

}  // namespace

cudaError_t layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                       float eps, void* y, DType ydt, cudaStream_t stream) {
  if (m <= 0) return cudaSuccess;
  if (m > 2147483647 || !is_float_weight(ydt)) return cudaErrorInvalidValue;
  layer_norm_kernel<<<static_cast<unsigned>(m), kThreads, 0, stream>>>(x, n, gamma, beta, eps, y,
                                                                       ydt);
  return cudaGetLastError();
}

cudaError_t rms_norm(const float* x, int64_t m, int64_t n, const float* gamma, float eps, void* y,
                     DType ydt, cudaStream_t stream) {
  if (m <= 0) return cudaSuccess;
  if (m > 2147483647 || !is_float_weight(ydt)) return cudaErrorInvalidValue;
  // A 16-bit y over x would overwrite rows other blocks have yet to read.
  if (static_cast<const void*>(x) == y && ydt != DType::f32) return cudaErrorInvalidValue;
  rms_norm_kernel<<<static_cast<unsigned>(m), kThreads, 0, stream>>>(x, n, gamma, eps, y, ydt);
  return cudaGetLastError();
}

cudaError_t gelu_new(float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  gelu_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n);
  return cudaGetLastError();
}

cudaError_t silu_mul(float* gate, const float* up, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  silu_mul_kernel<<<grid_for(n), kThreads, 0, stream>>>(gate, up, n);
  return cudaGetLastError();
}

cudaError_t add(float* y, const float* x, int64_t n, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  add_kernel<<<grid_for(n), kThreads, 0, stream>>>(y, x, n);
  return cudaGetLastError();
}

cudaError_t add_bias(float* y, int64_t m, int64_t n, const float* bias, cudaStream_t stream) {
  if (m * n <= 0) return cudaSuccess;
  add_bias_kernel<<<grid_for(m * n), kThreads, 0, stream>>>(y, m * n, n, bias);
  return cudaGetLastError();
}

cudaError_t gptj_residual(float* x, const float* attn, const float* mlp, int64_t n,
                          cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  residual_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, attn, mlp, n);
  return cudaGetLastError();
}

cudaError_t convert(const void* src, DType sdt, void* dst, DType ddt, int64_t n,
                    cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (!is_float_weight(sdt) || !is_float_weight(ddt)) return cudaErrorInvalidValue;
  // In place only between types of one size: a wider write would overtake unread elements.
  if (src == dst && dtype_size(sdt) != dtype_size(ddt)) return cudaErrorInvalidValue;
  convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, sdt, dst, ddt, n);
  return cudaGetLastError();
}

cudaError_t rotary_interleaved(float* x, int64_t m, int64_t row_stride, int64_t n_head,
                               int64_t head_dim, int64_t rotary_dim, const int32_t* positions,
                               cudaStream_t stream) {
  const int64_t total = m * n_head * (rotary_dim / 2);
  if (total <= 0) return cudaSuccess;
  rotary_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, m, row_stride, n_head, head_dim,
                                                          rotary_dim, positions);
  return cudaGetLastError();
}

cudaError_t rotary_half(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                        int64_t rotary_dim, const float* inv_freq, const int32_t* positions,
                        cudaStream_t stream) {
  if (rotary_dim < 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim) return cudaErrorInvalidValue;
  const int64_t total = m * n_head * (rotary_dim / 2);
  if (total <= 0) return cudaSuccess;
  rotary_half_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, m, row_stride, n_head, head_dim,
                                                               rotary_dim, inv_freq, positions);
  return cudaGetLastError();
}

cudaError_t rotary_pairs(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                         int64_t rotary_dim, const float* inv_freq, const int32_t* positions,
                         cudaStream_t stream) {
  if (rotary_dim < 0 || rotary_dim % 2 != 0 || rotary_dim > head_dim) return cudaErrorInvalidValue;
  const int64_t total = m * n_head * (rotary_dim / 2);
  if (total <= 0) return cudaSuccess;
  rotary_pairs_kernel<<<grid_for(total), kThreads, 0, stream>>>(x, m, row_stride, n_head, head_dim,
                                                                rotary_dim, inv_freq, positions);
  return cudaGetLastError();
}

cudaError_t kv_store(const float* k, const float* v, int64_t src_stride, int64_t n_new,
                     int64_t n_past, int64_t n_head, int64_t head_dim, void* k_cache, void* v_cache,
                     int64_t kv_head_stride, DType kv_dt, cudaStream_t stream,
                     const int32_t* block_table, int64_t block_tokens, int64_t block_stride) {
  const int64_t total = n_new * n_head * head_dim;
  if (total <= 0) return cudaSuccess;
  if (kv_dt != DType::f32 && kv_dt != DType::f16) return cudaErrorInvalidValue;
  if (block_table != nullptr && (block_tokens <= 0 || block_stride < 0))
    return cudaErrorInvalidValue;
  kv_store_kernel<<<grid_for(total), kThreads, 0, stream>>>(
      k, v, src_stride, n_new, n_past, n_head, head_dim, k_cache, v_cache, kv_head_stride, kv_dt,
      block_table, block_tokens, block_stride);
  return cudaGetLastError();
}

}  // namespace ferry::kernels::cuda
