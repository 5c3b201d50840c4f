// The CUDA kernels: every operation of the GPT-J and Llama-family forward passes on device
// pointers, each the twin of a kernels/cpu function with the same arguments plus a stream (never
// the default stream). Activations are f32; a matrix product's input may be converted to the
// weights' f16 / bf16 first (cuBLAS multiplies like types), and every product and score
// accumulates in f32. Launchers return cudaGetLastError() after their launch (or the cuBLAS
// status) and never throw; the runtime turns errors into exceptions (runtime/cuda/cuda_check.hpp).
// Only kernels/cuda and runtime/cuda include this header.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "runtime/core/dtype.hpp"

namespace ferry::kernels::cuda {

// y[i, :] = (x[i, :] - mean) / sqrt(var + eps) · gamma + beta for i < m, written as ydt (f32 for
// the residual path, f16 / bf16 when y feeds a product with such weights). One block per row.
cudaError_t layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                       float eps, void* y, DType ydt, cudaStream_t stream);

// y[i, :] = gamma · (x[i, :] · 1/sqrt(mean(x[i, :]²) + eps)) for i < m: RMSNorm (Llama,
// Mistral, Qwen), written as ydt like layer_norm's output. One block per row. y may be x when ydt
// is f32 (each element is read before it is written); a 16-bit y must not overlap x.
cudaError_t rms_norm(const float* x, int64_t m, int64_t n, const float* gamma, float eps, void* y,
                     DType ydt, cudaStream_t stream);

// x = gelu_new(x), in place.
cudaError_t gelu_new(float* x, int64_t n, cudaStream_t stream);

// gate[i] = silu(gate[i]) · up[i]: SwiGLU's elementwise step, in place in gate.
cudaError_t silu_mul(float* gate, const float* up, int64_t n, cudaStream_t stream);

// y += x.
cudaError_t add(float* y, const float* x, int64_t n, cudaStream_t stream);

// y[i, o] += bias[o] for a row-major [m, n] y.
cudaError_t add_bias(float* y, int64_t m, int64_t n, const float* bias, cudaStream_t stream);

// GPT-J's parallel residual: x = x + (mlp + attn), all [n].
cudaError_t gptj_residual(float* x, const float* attn, const float* mlp, int64_t n,
                          cudaStream_t stream);

// dst[i] = src[i] converted (f32, f16, bf16 either side, round to nearest even). src and dst may
// be the same memory when both types have the same size (bf16 → f16 in place, for sm_75).
cudaError_t convert(const void* src, DType sdt, void* dst, DType ddt, int64_t n,
                    cudaStream_t stream);

// The CPU twin's rotary_interleaved; positions is a device array of m positions.
cudaError_t rotary_interleaved(float* x, int64_t m, int64_t row_stride, int64_t n_head,
                               int64_t head_dim, int64_t rotary_dim, const int32_t* positions,
                               cudaStream_t stream);

// The CPU twin's rotary_half (Llama's rotate_half layout): feature i of the first rotary_dim of
// every head pairs with i + rotary_dim/2, both turned by positions[row] · inv_freq[i]. inv_freq
// (rotary_dim/2 entries, from the model description) and positions (m) are device arrays.
// rotary_dim must be even and at most head_dim.
cudaError_t rotary_half(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                        int64_t rotary_dim, const float* inv_freq, const int32_t* positions,
                        cudaStream_t stream);

// The CPU twin's rotary_pairs: adjacent pairs (2i, 2i+1) turned by positions[row] · inv_freq[i]
// (llama.cpp's rotary on the q/k rows of a GGUF `llama` file). Device arrays as rotary_half.
cudaError_t rotary_pairs(float* x, int64_t m, int64_t row_stride, int64_t n_head,
                         int64_t head_dim, int64_t rotary_dim, const float* inv_freq,
                         const int32_t* positions, cudaStream_t stream);

// Writes n_new rows of keys and values ([t * src_stride + h * head_dim + d], f32) into a
// head-major cache ([h * kv_head_stride + (n_past + t) * head_dim + d]) of dtype kv_dt (f32 or
// f16), or, given a block table (device memory), into a paged one at kernels/common/
// kv_paging.hpp's kv_paged_offset(block_table, block_tokens, block_stride, kv_head_stride,
// head_dim, h, n_past + t, d) from k_cache (v_cache). n_head is the number of KV heads
// (AttentionArgs::n_kv_head under grouped-query attention), the heads the k and v projections
// produce.
cudaError_t kv_store(const float* k, const float* v, int64_t src_stride, int64_t n_new,
                     int64_t n_past, int64_t n_head, int64_t head_dim, void* k_cache, void* v_cache,
                     int64_t kv_head_stride, DType kv_dt, cudaStream_t stream,
                     const int32_t* block_table = nullptr, int64_t block_tokens = 0,
                     int64_t block_stride = 0);

// kernels/cpu's AttentionArgs with the cache in f32 or f16 (scores always f32).
struct AttentionArgs {
  const float* q = nullptr;  // q[t * q_stride + h * head_dim + d]
  int64_t q_stride = 0;
  // k[kv_h * kv_head_stride + j * head_dim + d], j < n_past + n_new, kv_h the KV head of query
  // head h (below); or paged, as the CPU's: k[kv_paged_offset(block_table, block_tokens,
  // block_stride, kv_head_stride, head_dim, kv_h, j, d)] with the table in device memory.
  const void* k = nullptr;
  const void* v = nullptr;
  DType kv_dtype = DType::f32;
  int64_t kv_head_stride = 0;
  const int32_t* block_table = nullptr;  // device memory; null: contiguous
  int64_t block_tokens = 0;
  int64_t block_stride = 0;  // elements between consecutive blocks of k (and of v)
  float* out = nullptr;  // out[t * out_stride + h * head_dim + d]
  int64_t out_stride = 0;
  int64_t n_new = 0;
  int64_t n_past = 0;
  int64_t n_head = 0;
  int64_t head_dim = 0;
  // Grouped-query attention, as the CPU's: query head h reads KV head h / (n_head / n_kv_head);
  // 0 means n_head (no grouping). n_head must be a multiple of it.
  int64_t n_kv_head = 0;
};

// Most keys one query may attend to: the scores of a (token, head) live in shared memory.
int64_t attention_max_keys();

// out = softmax(q·kᵀ / sqrt(head_dim), causal) · v, one block per (token, query head). Prompt
// and decode are the same kernel: a decode step is n_new = 1.
cudaError_t attention(const AttentionArgs& args, cudaStream_t stream);

// y[i, o] = Σ_j x[i, j] · w[o, j] for i < m, o < n, j < k: w row-major [n, k] in wdt (f32, f16
// or bf16), x row-major [m, k] in the same dtype, y f32. cublasGemmEx with f32 accumulation
// (pedantic f32 for f32 weights, so no TF32 creeps in). The handle's stream is the stream.
// cuBLAS is loaded on first use (cublas_loader.cpp); empty once it loaded, else why it did not.
std::string cublas_load_error();

// ldy: the row stride of y when it is wider than n (a product of some of the weight rows into
// columns of a wider output, as the chunked packed products below do); 0 means n.
cublasStatus_t linear(cublasHandle_t handle, const void* x, int64_t m, int64_t k, const void* w,
                      DType wdt, int64_t n, float* y, int64_t ldy = 0);

// Packed weights (ferry packs: q8, q4_g64, q4_g128, runtime/core/quant.hpp), two ways, both
// dequantizing through kernels/common/quant_math.hpp exactly as the CPU does:
//
// packed_gemv: y[i, o] = Σ_j x[i, j] · w[o, j] for i < m ≤ kPackedGemvLimit, o < n, j < k, with
// the dequantization fused into the product: 1, 2 or 4 warps take each output row
// (packed_gemv_warps_per_row below) and read its packed bytes once (k/2 + a little for q4: a
// quarter of f16's); x stays f32 and the sums f32. For decoding, where a product is a pass over
// the weights, this reads the fewest bytes.
//
// dequantize_rows: rows [row0, row0 + rows) of a packed [*, k] matrix into f16 [rows, k], for a
// cuBLAS product (`linear` with DType::f16) when m is larger and the product is worth tensor
// cores: the caller chunks the rows to fit its staging buffer.
//
// kPackedGemvLimit is the most rows packed_gemv takes (a 32-row kernel, one warp a row, was 4–6×
// slower than dequantize + cuBLAS at 16 and 32 rows on an H100, and is gone);
// kPackedGemvMaxRows is where CudaEngine switches to dequantize + cuBLAS, set from
// bench_cuda_packed's `choose` lines (docs/cuda.md: on an H100 fused wins for q4 up to 8 rows,
// for q8 up to 4, and is within 2% at 8).
constexpr int kPackedGemvLimit = 8;
constexpr int64_t kPackedGemvMaxRows = 8;
static_assert(kPackedGemvMaxRows <= kPackedGemvLimit);
// How many warps packed_gemv gives each output row (1, 2 or 4), measured by
// bench_cuda_packed on an H100 (docs/cuda.md, summed over a GPT-J layer's shapes): for q4 one
// warp while m ≤ 2, for q8 two at m = 1; beyond, four. (Giving a warp several output rows, to
// read x once for all of them, was slower everywhere.)
constexpr int packed_gemv_warps_per_row(DType t, int64_t m) {
  if (m > 2) return 4;
  if (t == DType::q8) return m == 1 ? 2 : 4;
  return 1;
}
// warps_per_row: 0 for packed_gemv_warps_per_row, else 1, 2 or 4 (the benchmark times each).
// Both also take llama.cpp's block formats (q8_0 … q6_k), handing them to ggml_gemv and
// ggml_dequantize_rows below (warps_per_row is then ignored).
cudaError_t packed_gemv(const void* w, DType wdt, int64_t n, int64_t k, const float* x, int64_t m,
                        float* y, int64_t ldy, cudaStream_t stream, int warps_per_row = 0);
cudaError_t dequantize_rows(const void* w, DType wdt, int64_t k, int64_t row0, int64_t rows,
                            uint16_t* out, cudaStream_t stream);

// llama.cpp's block formats (q8_0 … q6_k; runtime/core/ggml_quant.hpp), decoded through
// kernels/common/ggml_quant_math.hpp bit for bit as ggml and the CPU kernels decode them
// (kernels/cuda/ggml_quant.cu). k must be a whole number of blocks; rows start at any alignment.
// ggml_gemv: y[i, o] = Σ_j x[i, j] · w[o, j] for i < m ≤ kPackedGemvLimit, one warp per output
// row, x and the sums f32. ggml_dequantize_rows(_f32): rows [row0, row0 + rows) of w into
// [rows, k] f16 (for cuBLAS, one f16 rounding of each weight) or f32 (exact).
cudaError_t ggml_gemv(const void* w, DType wdt, int64_t n, int64_t k, const float* x, int64_t m,
                      float* y, int64_t ldy, cudaStream_t stream);
cudaError_t ggml_dequantize_rows(const void* w, DType wdt, int64_t k, int64_t row0, int64_t rows,
                                 uint16_t* out, cudaStream_t stream);
cudaError_t ggml_dequantize_rows_f32(const void* w, DType wdt, int64_t k, int64_t row0,
                                     int64_t rows, float* out, cudaStream_t stream);

}  // namespace ferry::kernels::cuda
