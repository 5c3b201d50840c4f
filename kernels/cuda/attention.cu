// Causal attention over the KV cache, for prompt processing and decoding alike: one 256-thread
// block per (query token, head). The query sits in shared memory; each warp takes keys in turn
// and its 32 lanes read one key row together (coalesced), so the cache is read once per block;
// the f32 scores of every key stay in shared memory for the softmax; then each thread owns
// output features and sums p·v over the keys, again reading cache rows whole. Decoding (one
// token, thousands of keys) is bound by reading K and V once, which this does; the prompt pass
// re-reads the cache per token, fine at GPT-J's 2048-token context. Scores, softmax and sums are
// f32 whatever the cache's dtype, with the steps of kernels/common/nn_math.hpp. A paged cache
// (the engine's) is read through its block table, with kernels/common/kv_paging.hpp's offsets:
// rows stay whole and each block's rows of a head contiguous, so the reads stay coalesced.
// Grouped-query attention (Llama 3, Mistral, Qwen) only changes which cache head a block reads:
// the query heads of one group read the same K/V rows. In a decode step (n_new = 1) a group's
// blocks are neighbours in the grid and run together, so most of the repeated reads should hit
// L2 (not measured yet; a block per (token, KV head) would read the rows once for sure).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/common/kv_paging.hpp"
#include "kernels/common/math.hpp"
#include "kernels/common/nn_math.hpp"
#include "kernels/cuda/detail/reduce.cuh"
#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxKeys = 8192;
constexpr int64_t kMaxHeadDim = 1024;

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const uint16_t* p, int64_t i) {
  return __half2float(__ushort_as_half(p[i]));  // exact, like f16_to_f32
}

// block_table null: a contiguous cache, read as one block of block_tokens (≥ every n_keys) keys.
template <class KV>
__global__ void attention_kernel(const float* __restrict__ q_all, int64_t q_stride,
                                 const KV* __restrict__ k_all, const KV* __restrict__ v_all,
                                 int64_t kv_head_stride, const int32_t* __restrict__ block_table,
                                 int64_t block_tokens, int64_t block_stride,
                                 float* __restrict__ out_all, int64_t out_stride, int64_t n_past,
                                 int64_t head_dim, int64_t group, float divisor) {
  extern __shared__ float shared[];
  __shared__ float scratch[32];
  float* q = shared;                  // [head_dim]
  float* scores = shared + head_dim;  // [n_keys]
  const int64_t t = blockIdx.x;
  const int64_t h = blockIdx.y;
  const int64_t n_keys = n_past + t + 1;
  const float* q_src = q_all + t * q_stride + h * head_dim;
  const int64_t kv_h = h / group;  // HF's repeat_kv: each KV head serves `group` query heads
  // Row j of the head's keys (values): kv_paged_offset in a paged cache.
  auto row = [&](const KV* base, int64_t j) {
    return block_table != nullptr ? base + kv_paged_offset(block_table, block_tokens, block_stride,
                                                           kv_head_stride, head_dim, kv_h, j, 0)
                                  : base + kv_h * kv_head_stride + j * head_dim;
  };
  float* out = out_all + t * out_stride + h * head_dim;

  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) q[d] = q_src[d];
  __syncthreads();

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int n_warps = blockDim.x >> 5;
  for (int64_t j = warp; j < n_keys; j += n_warps) {
    const KV* kj = row(k_all, j);
    float dot = 0.0f;
    for (int64_t d = lane; d < head_dim; d += 32) dot += q[d] * load(kj, d);
    dot = detail::warp_sum(dot);
    if (lane == 0) scores[j] = attention_score(dot, divisor);
  }
  __syncthreads();

  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n_keys; j += blockDim.x) m = fmaxf(m, scores[j]);
  const float max_score = detail::block_max(m, scratch);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < n_keys; j += blockDim.x) {
    const float e = softmax_exp(scores[j], max_score);
    scores[j] = e;
    s += e;
  }
  const float denom = detail::block_sum(s, scratch);  // its __syncthreads publish the e's

  // Keys in order, a block's run of rows at a time (one table look-up per block).
  for (int64_t d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int64_t j0 = 0; j0 < n_keys; j0 += block_tokens) {
      const KV* vb = row(v_all, j0);
      const int64_t nb = n_keys - j0 < block_tokens ? n_keys - j0 : block_tokens;
      for (int64_t r = 0; r < nb; ++r)
        acc += softmax_prob(scores[j0 + r], denom) * load(vb + r * head_dim, d);
    }
    out[d] = acc;
  }
}

}  // namespace

int64_t attention_max_keys() { return kMaxKeys; }

cudaError_t attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.n_new <= 0 || a.n_head <= 0) return cudaSuccess;
  const int64_t n_keys = a.n_past + a.n_new;
  if (n_keys > kMaxKeys || a.head_dim > kMaxHeadDim || a.head_dim <= 0 || a.n_new > 2147483647 ||
      a.n_head > 65535 || a.n_kv_head < 0 || (a.n_kv_head > 0 && a.n_head % a.n_kv_head != 0))
    return cudaErrorInvalidValue;
  if (a.block_table != nullptr && (a.block_tokens <= 0 || a.block_stride < 0))
    return cudaErrorInvalidValue;
  const int64_t group = a.n_kv_head > 0 ? a.n_head / a.n_kv_head : 1;
  // A contiguous cache is one block holding every key.
  const int64_t block_tokens = a.block_table != nullptr ? a.block_tokens : n_keys;
  const dim3 grid(static_cast<unsigned>(a.n_new), static_cast<unsigned>(a.n_head));
  const std::size_t shmem = static_cast<std::size_t>(a.head_dim + n_keys) * sizeof(float);
  const float divisor = attention_scale_divisor(a.head_dim);
  if (a.kv_dtype == DType::f32) {
    attention_kernel<float><<<grid, kThreads, shmem, stream>>>(
        a.q, a.q_stride, static_cast<const float*>(a.k), static_cast<const float*>(a.v),
        a.kv_head_stride, a.block_table, block_tokens, a.block_stride, a.out, a.out_stride,
        a.n_past, a.head_dim, group, divisor);
  } else if (a.kv_dtype == DType::f16) {
    attention_kernel<uint16_t><<<grid, kThreads, shmem, stream>>>(
        a.q, a.q_stride, static_cast<const uint16_t*>(a.k), static_cast<const uint16_t*>(a.v),
        a.kv_head_stride, a.block_table, block_tokens, a.block_stride, a.out, a.out_stride,
        a.n_past, a.head_dim, group, divisor);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace ferry::kernels::cuda
