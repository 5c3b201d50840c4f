// Where a paged KV cache keeps a token (runtime/engine/kv_cache.hpp): shared by the CPU
// kernels and the CUDA kernels, so that both backends and the CPU tests of this arithmetic
// agree on every index.
//
// A sequence's tokens sit in blocks of block_tokens tokens; its block table lists the pool's
// blocks in order (table[i] holds tokens i·block_tokens … (i+1)·block_tokens − 1). Within one
// layer's keys (or values), block b starts block_stride elements after block b − 1, and a
// block holds each KV head's run of block_tokens · head_dim elements head_stride apart.
#pragma once

#include <cstdint>

#include "runtime/core/host_device.hpp"

namespace ferry::kernels {

// The element offset of feature d of token j of KV head h, from the layer's k (or v) base.
FERRY_HD int64_t kv_paged_offset(const int32_t* table, int64_t block_tokens, int64_t block_stride,
                                 int64_t head_stride, int64_t head_dim, int64_t h, int64_t j,
                                 int64_t d) {
  return static_cast<int64_t>(table[j / block_tokens]) * block_stride + h * head_stride +
         (j % block_tokens) * head_dim + d;
}

}  // namespace ferry::kernels
