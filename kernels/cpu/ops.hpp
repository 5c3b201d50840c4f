// The CPU kernels: every operation of the GPT-J forward pass, on raw pointers. Each has a
// plain reference version (namespace ref) and a fast version chosen at run time (AVX2 + FMA +
// F16C when the processor has them, a portable scalar path otherwise). Kernels never allocate
// and never touch files; activations are f32, weight matrices f32, f16 or bf16, and every
// product accumulates in f32.
#pragma once

#include <cstdint>
#include <string_view>

#include "runtime/core/dtype.hpp"
#include "runtime/core/thread_pool.hpp"

namespace ferry::kernels::cpu {

// Arguments of causal attention over a KV cache, for n_new query tokens that sit at positions
// n_past … n_past + n_new - 1 of one sequence. Token t attends to cache rows 0 … n_past + t.
// Scores are f32, scaled by 1/sqrt(head_dim) (division, as the reference does), softmax in f32.
// The cache is contiguous per head (block_table null) or paged (kernels/common/kv_paging.hpp).
struct AttentionArgs {
  const float* q = nullptr;  // q[t * q_stride + h * head_dim + d]
  int64_t q_stride = 0;
  // Contiguous: k[h * kv_head_stride + j * head_dim + d], j < n_past + n_new. Paged:
  // k[kv_paged_offset(block_table, block_tokens, block_stride, kv_head_stride, head_dim, h, j,
  // d)], runs of block_tokens keys per head.
  const float* k = nullptr;
  const float* v = nullptr;  // same layout as k
  int64_t kv_head_stride = 0;
  const int32_t* block_table = nullptr;  // the sequence's blocks, in token order; null: contiguous
  int64_t block_tokens = 0;
  int64_t block_stride = 0;  // elements between consecutive blocks of k (and of v)
  float* out = nullptr;  // out[t * out_stride + h * head_dim + d]
  int64_t out_stride = 0;
  int64_t n_new = 0;
  int64_t n_past = 0;
  int64_t n_head = 0;
  int64_t head_dim = 0;
  // Grouped-query attention: query head h reads KV head h / (n_head / n_kv_head) (HF's
  // repeat_kv gives each KV head to consecutive query heads). 0 means n_head (no grouping).
  int64_t n_kv_head = 0;
};

// The KV head a query head reads.
inline int64_t attention_kv_head(const AttentionArgs& a, int64_t h) {
  return a.n_kv_head > 0 ? h / (a.n_head / a.n_kv_head) : h;
}

// Which implementation the dispatched kernels use: "avx2" or "scalar". FERRY_SIMD=scalar in the
// environment forces the portable path. Under "avx2", linear on llama.cpp's block formats runs
// AVX-512 code where the processor has AVX-512 F/BW/VL, unless FERRY_SIMD=avx2.
std::string_view simd_level();
// Which implementation multiplies f32, f16 and bf16 weights: simd_level(), or "avx512" where
// the AVX2 path runs with AVX-512 F/BW/VL present (unless FERRY_SIMD=avx2).
std::string_view float_linear_level();
// How llama.cpp's block formats (GGUF tensors) are multiplied: its own q8-activation arithmetic
// (the default, where AVX2 runs) or exact f32 products, for `ferry info`.
std::string_view gguf_linear_level();
// Which kernel multiplies weights of dtype wdt, short ("avx512" for f16, "avx512-vnni" for q4_g64,
// "ggml-q8 avx512-vnni" for q4_k, "exact avx2" for q5_1, ...): with kKernelsRevision, the key the
// planner's learned CPU rates are kept under, so a rate measured with one kernel is not used to
// plan for another.
std::string linear_level(DType wdt);
// Bumped when a CPU kernel's speed changes enough that rates learned with the old one would
// mislead the planner (stop 27: 512-bit GGUF K-format products, 16-lane GEMM panels, packed q4
// scale prefetch; the stale samples of stop 26's kernels predicted Q4_K_M decode 20% slow;
// stop 28: GGUF q4_0/q5_0 products on unsigned codes, 15–20% faster from RAM, and the GEMM's
// block sums; stop 29: GGUF q4_0, q8_0 and q4_k in panels of 16 rows, prompts 2–3× faster).
inline constexpr int kKernelsRevision = 4;

// y[i, o] = sum_j x[i, j] · w[o, j] + bias[o], for i < m, o < n, j < k. w is row-major
// [n, k] (PyTorch's nn.Linear layout) in dtype wdt (f32, f16 or bf16), or packed (q8, q4_g64,
// q4_g128: n rows of packed_row_bytes(wdt, k), runtime/core/quant.hpp), dequantized in the
// product's inner loop, or in one of llama.cpp's block formats (q8_0 … q6_k,
// runtime/core/ggml_quant.hpp; k a whole number of blocks): each weight decoded exactly as ggml
// decodes it and multiplied with x in f32 (x is never rounded, unlike llama.cpp's products);
// bias may be null.
// m = 1 is the matrix–vector product of decoding; m > 1 (prompt processing) reuses each block
// of w across all rows of x. Runs on every thread of pool.
void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y, ThreadPool& pool);

// y[i, :] = (x[i, :] - mean) / sqrt(var + eps) · gamma + beta, per row of n features.
void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y);

// y[i, :] = gamma · (x[i, :] · 1/sqrt(mean(x[i, :]²) + eps)): RMSNorm (Llama, Mistral, Qwen),
// per row of n features; y may be x.
void rms_norm(const float* x, int64_t m, int64_t n, const float* gamma, float eps, float* y);

// gate[i] = silu(gate[i]) · up[i]: SwiGLU's elementwise step, in place in gate.
void silu_mul(float* gate, const float* up, int64_t n);

// Llama's rotary embedding (rotate_half), in place, on the first rotary_dim features of every
// head of every row: feature i pairs with i + rotary_dim/2, both rotated by positions[row] ·
// inv_freq[i] (inv_freq has rotary_dim/2 entries, computed by the model description).
void rotary_half(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                 int64_t rotary_dim, const float* inv_freq, const int32_t* positions);

// Rotary on adjacent pairs (2i, 2i+1) with a frequency table, in place: llama.cpp's rotary
// ("norm" mode) over q/k rows as its converter stores them (permuted per head), the same
// computation as rotary_half on Hugging Face's row order. Pair i rotates by positions[row] ·
// inv_freq[i] (rotary_dim/2 entries).
void rotary_pairs(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                  int64_t rotary_dim, const float* inv_freq, const int32_t* positions);

// x = gelu_new(x) = 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³))), in place.
void gelu_new(float* x, int64_t n);

// y += x.
void add(float* y, const float* x, int64_t n);

// GPT-J rotary embedding, in place, on the first rotary_dim features of every head of every
// row: pairs (2i, 2i+1) rotate by angle pos · 10000^(-2i/rotary_dim), pos = positions[row].
// x[row * row_stride + h * head_dim + d].
void rotary_interleaved(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                        int64_t rotary_dim, const int32_t* positions);

// out = softmax(q·kᵀ / sqrt(head_dim), causal) · v for every head and query token.
void attention(const AttentionArgs& args, ThreadPool& pool);

// How many of n bf16 values are finite but beyond f16's range, so that converting them to f16
// (round to nearest even) gives ±inf: |x| ≥ 65536 (bf16 has no value between 65280 and 65536;
// f16's largest is 65504). The CUDA backend checks bf16 weights with it before it multiplies
// them as f16 on GPUs without bf16 products.
int64_t bf16_count_beyond_f16(const uint16_t* x, int64_t n);

// dst[i] = float(src[i]) for an f32, f16 or bf16 source; for a packed dtype, src is one packed
// row of n columns (an embedding row of a ferry pack, or of a GGUF file's block-quantized
// token_embd) and dst its dequantized values.
void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst);

// The portable fast path, what the kernels above run when the processor lacks AVX2 or
// FERRY_SIMD=scalar: blocked and multi-threaded like the AVX2 path but plain C++. Exposed so that
// tests check it on every machine. gelu_new and rotary_interleaved have a single implementation
// (scalar per-element math from kernels/common/math.hpp) and so no entry here.
namespace scalar {
void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y, ThreadPool& pool);
void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y);
void add(float* y, const float* x, int64_t n);
void attention(const AttentionArgs& args, ThreadPool& pool);
void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst);
}  // namespace scalar

namespace ref {
// Straightforward single-threaded versions, the yardstick for the fast ones.
void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y);
void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y);
void gelu_new(float* x, int64_t n);
void add(float* y, const float* x, int64_t n);
void rotary_interleaved(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                        int64_t rotary_dim, const int32_t* positions);
void rms_norm(const float* x, int64_t m, int64_t n, const float* gamma, float eps, float* y);
void silu_mul(float* gate, const float* up, int64_t n);
void rotary_half(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                 int64_t rotary_dim, const float* inv_freq, const int32_t* positions);
void rotary_pairs(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                  int64_t rotary_dim, const float* inv_freq, const int32_t* positions);
void attention(const AttentionArgs& args);
void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst);
}  // namespace ref

}  // namespace ferry::kernels::cpu
