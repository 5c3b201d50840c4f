// Per-element steps of layer norm, attention's softmax and GPT-J's residual sum, shared by the
// CPU reference kernels' definition and the CUDA kernels. Each step is one or two f32 operations
// in the order kernels/cpu/ref.cpp performs them, so the two backends differ only in the order
// of their sums (a GPU sums a row in a tree, the reference left to right), never in the steps.
#pragma once

#include <cmath>  // ::sqrtf, ::expf: C functions, callable on host and device

#include <cstdint>

#include "runtime/core/host_device.hpp"

namespace ferry::kernels {

// mean = Σx / n, the division in f32.
FERRY_HD float layer_norm_mean(float sum, int64_t n) { return sum / static_cast<float>(n); }

// 1 / sqrt(Σ(x - mean)² / n + eps): the biased variance, as torch's layer_norm uses.
FERRY_HD float layer_norm_rstd(float sq_sum, int64_t n, float eps) {
  const float var = sq_sum / static_cast<float>(n);
  return 1.0f / ::sqrtf(var + eps);
}

// One output element: (x - mean) · rstd · gamma + beta, left to right.
FERRY_HD float layer_norm_apply(float x, float mean, float rstd, float gamma, float beta) {
  return (x - mean) * rstd * gamma + beta;
}

// RMSNorm (Llama, Mistral, Qwen): 1 / sqrt(Σx² / n + eps) in f32, as HF's LlamaRMSNorm computes
// torch.rsqrt(variance + eps).
FERRY_HD float rms_norm_rstd(float sq_sum, int64_t n, float eps) {
  const float var = sq_sum / static_cast<float>(n);
  return 1.0f / ::sqrtf(var + eps);
}

// One RMSNorm output element: weight · (x · rstd), the product inside first as HF writes it.
FERRY_HD float rms_norm_apply(float x, float rstd, float gamma) { return gamma * (x * rstd); }

// A scaled attention score: q·k divided (not multiplied by a reciprocal) by sqrt(head_dim), as
// Hugging Face's GPT-J does; divisor is attention_scale_divisor(head_dim) from math.hpp.
FERRY_HD float attention_score(float dot, float divisor) { return dot / divisor; }

// Softmax, stabilised by the row's largest score: e = exp(s - max), then p = e / Σe.
FERRY_HD float softmax_exp(float score, float max_score) { return ::expf(score - max_score); }
FERRY_HD float softmax_prob(float e, float denom) { return e / denom; }

// A product's bias: sum + bias, as nn.Linear adds it after the dot product.
FERRY_HD float bias_add(float sum, float bias) { return sum + bias; }

// GPT-J's parallel residual: x + (mlp + attn), mlp's bias already in mlp. The engine sums the
// two branches first, then adds them to the stream (HF: attn + feed_forward + residual).
FERRY_HD float gptj_residual(float x, float attn, float mlp) { return x + (mlp + attn); }

}  // namespace ferry::kernels
