// Products with llama.cpp's block-quantized weights (q8_0 … q6_k; runtime/core/ggml_quant.hpp).
// Every weight is decoded by ggml_decode_chunk_t (kernels/common/ggml_quant_math.hpp), the
// decoder the CPU kernels and tests use, whose products and sums are __fmul_rn / __fadd_rn on the
// device: a weight is the same f32 on both backends and the same as ggml's own.
//
// ggml_gemv (decode, m ≤ kPackedGemvLimit rows of x): one warp per output row, 8 rows per block.
// Lane t of a row's warp takes the row's 32-weight chunks t, t + 32, …: a warp's step is 32
// consecutive chunks (576 bytes of q4_0, 576 of q4_k, 840 of q6_k), which the warp first copies to
// shared memory with coalesced byte loads (blocks sit at any alignment, so no wider loads), then
// each lane decodes its chunk from there into 32 registers and multiplies it with every row of x
// (float4 loads when x is 16-byte aligned: k is a multiple of 32, so every chunk of x is). Sums
// stay f32: per lane in column order, then across the warp by shuffles, in a fixed order.
//
// ggml_dequantize_rows (m larger): a thread block stages 256 chunks' blocks in shared memory the
// same way, then one thread per chunk writes its 32 weights as four 16-byte stores of f16 (or eight
// of f32) when the output allows, for a cuBLAS product.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/common/ggml_quant_math.hpp"
#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = kThreads / kWarp;

// The bytes of 32 consecutive chunks: 32 blocks of a 32-element format, 4 of a 256-element one.
template <DType T>
constexpr int kStageBytes = static_cast<int>(kWarp / ggml_block_chunks(T) * ggml_block_bytes(T));

template <DType T, int M>
__global__ void __launch_bounds__(kThreads)
    ggml_gemv_kernel(const unsigned char* __restrict__ w, int64_t n, int64_t k,
                     const float* __restrict__ x, int64_t m, float* __restrict__ y, int64_t ldy) {
  constexpr int kChunks = ggml_block_chunks(T);
  constexpr auto kBlockBytes = static_cast<int>(ggml_block_bytes(T));
  __shared__ unsigned char stage[kRowsPerBlock][kStageBytes<T>];
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int slot = static_cast<int>(threadIdx.x) / kWarp;
  const uint64_t row_bytes = ggml_row_bytes(T, k);
  const int64_t chunks = k / kGgmlChunk;
  const bool x_aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0;
  // The loops are the same for every lane of a warp (its own row o), so __syncwarp is safe.
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + slot; o < n;
       o += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const unsigned char* row = w + static_cast<uint64_t>(o) * row_bytes;
    float acc[M] = {};
    for (int64_t ch0 = 0; ch0 < chunks; ch0 += kWarp) {
      // The warp's next 32 chunks (whole blocks: a row is whole blocks) copied to shared memory
      // with byte loads the warp makes together (32 consecutive bytes per load), then decoded
      // from there: blocks sit at any alignment, and a lane reading its own block byte by byte
      // would scatter every load over the warp's whole span.
      const int nchunks = static_cast<int>(chunks - ch0 < kWarp ? chunks - ch0 : kWarp);
      const int nbytes = nchunks / kChunks * kBlockBytes;
      const unsigned char* src = row + static_cast<uint64_t>(ch0 / kChunks) * kBlockBytes;
      __syncwarp();  // the previous chunks are decoded
      for (int i = lane; i < nbytes; i += kWarp) stage[slot][i] = src[i];
      __syncwarp();
      if (lane < nchunks) {
        const int c = lane % kChunks;
        float wv[kGgmlChunk];
        ggml_decode_chunk_t<T>(&stage[slot][lane / kChunks * kBlockBytes], c, wv);
        const int64_t ch = ch0 + lane;
#pragma unroll
        for (int i = 0; i < M; ++i) {
          if (i >= m) break;
          const float* xc = x + i * k + ch * kGgmlChunk;
          float s = acc[i];
          if (x_aligned) {
#pragma unroll
            for (int q = 0; q < kGgmlChunk / 4; ++q) {
              const float4 v = reinterpret_cast<const float4*>(xc)[q];
              s = fmaf(wv[4 * q], v.x, s);
              s = fmaf(wv[4 * q + 1], v.y, s);
              s = fmaf(wv[4 * q + 2], v.z, s);
              s = fmaf(wv[4 * q + 3], v.w, s);
            }
          } else {
#pragma unroll
            for (int l = 0; l < kGgmlChunk; ++l) s = fmaf(wv[l], xc[l], s);
          }
          acc[i] = s;
        }
      }
    }
#pragma unroll
    for (int i = 0; i < M; ++i) {
      if (i >= m) break;
      float s = acc[i];
      for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) y[i * ldy + o] = s;
    }
  }
}

__device__ void store_chunk(float* p, const float* v, bool vec) {
  if (vec) {
#pragma unroll
    for (int q = 0; q < kGgmlChunk / 4; ++q)
      reinterpret_cast<float4*>(p)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2],
                                                    v[4 * q + 3]);
  } else {
    for (int l = 0; l < kGgmlChunk; ++l) p[l] = v[l];
  }
}

__device__ void store_chunk(uint16_t* p, const float* v, bool vec) {
  if (vec) {
#pragma unroll
    for (int q = 0; q < kGgmlChunk / 8; ++q) {
      uint4 u;
      u.x = static_cast<uint32_t>(f32_to_f16(v[8 * q])) |
            static_cast<uint32_t>(f32_to_f16(v[8 * q + 1])) << 16;
      u.y = static_cast<uint32_t>(f32_to_f16(v[8 * q + 2])) |
            static_cast<uint32_t>(f32_to_f16(v[8 * q + 3])) << 16;
      u.z = static_cast<uint32_t>(f32_to_f16(v[8 * q + 4])) |
            static_cast<uint32_t>(f32_to_f16(v[8 * q + 5])) << 16;
      u.w = static_cast<uint32_t>(f32_to_f16(v[8 * q + 6])) |
            static_cast<uint32_t>(f32_to_f16(v[8 * q + 7])) << 16;
      reinterpret_cast<uint4*>(p)[q] = u;
    }
  } else {
    for (int l = 0; l < kGgmlChunk; ++l) p[l] = f32_to_f16(v[l]);
  }
}

// A thread block takes kThreads consecutive chunks of a row (whole blocks), copies their bytes to
// shared memory with coalesced byte loads, and each thread decodes one chunk from there.
template <DType T, class Out>
__global__ void __launch_bounds__(kThreads)
    ggml_dequantize_kernel(const unsigned char* __restrict__ w, int64_t k, int64_t row0,
                           int64_t rows, Out* __restrict__ out) {
  constexpr int kChunks = ggml_block_chunks(T);
  constexpr auto kBlockBytes = static_cast<int>(ggml_block_bytes(T));
  __shared__ unsigned char stage[kThreads / kChunks * kBlockBytes];
  const int tid = static_cast<int>(threadIdx.x);
  const uint64_t row_bytes = ggml_row_bytes(T, k);
  const int64_t chunks = k / kGgmlChunk;
  const bool vec = reinterpret_cast<uintptr_t>(out) % 16 == 0;
  // Both loops depend on the block's indices only, so every thread meets every __syncthreads.
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const unsigned char* row = w + static_cast<uint64_t>(row0 + r) * row_bytes;
    for (int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads; base < chunks;
         base += static_cast<int64_t>(gridDim.x) * kThreads) {
      const int nchunks = static_cast<int>(chunks - base < kThreads ? chunks - base : kThreads);
      const int nbytes = nchunks / kChunks * kBlockBytes;
      const unsigned char* src = row + static_cast<uint64_t>(base / kChunks) * kBlockBytes;
      __syncthreads();  // the previous chunks are decoded
      for (int i = tid; i < nbytes; i += kThreads) stage[i] = src[i];
      __syncthreads();
      if (tid < nchunks) {
        float v[kGgmlChunk];
        ggml_decode_chunk_t<T>(&stage[tid / kChunks * kBlockBytes], tid % kChunks, v);
        store_chunk(out + r * k + (base + tid) * kGgmlChunk, v, vec);
      }
    }
  }
}

// Calls f(std::integral_constant<DType, T>{}) for the block dtype t.
template <class F>
void with_block_type(DType t, F f) {
  switch (t) {
    case DType::q8_0:
      return f(std::integral_constant<DType, DType::q8_0>{});
    case DType::q4_0:
      return f(std::integral_constant<DType, DType::q4_0>{});
    case DType::q4_1:
      return f(std::integral_constant<DType, DType::q4_1>{});
    case DType::q5_0:
      return f(std::integral_constant<DType, DType::q5_0>{});
    case DType::q5_1:
      return f(std::integral_constant<DType, DType::q5_1>{});
    case DType::q4_k:
      return f(std::integral_constant<DType, DType::q4_k>{});
    case DType::q5_k:
      return f(std::integral_constant<DType, DType::q5_k>{});
    default:
      return f(std::integral_constant<DType, DType::q6_k>{});
  }
}

template <class Out>
cudaError_t dequantize_any(const void* w, DType wdt, int64_t k, int64_t row0, int64_t rows,
                           Out* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (!is_ggml_block(wdt) || !ggml_row_fits(wdt, k) || row0 < 0) return cudaErrorInvalidValue;
  const int64_t chunks = k / kGgmlChunk;
  const dim3 grid(
      static_cast<unsigned>(std::clamp<int64_t>((chunks + kThreads - 1) / kThreads, 1, 65535)),
      static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  const auto* wb = static_cast<const unsigned char*>(w);
  with_block_type(wdt, [&](auto c) {
    ggml_dequantize_kernel<decltype(c)::value, Out>
        <<<grid, kThreads, 0, stream>>>(wb, k, row0, rows, out);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t ggml_gemv(const void* w, DType wdt, int64_t n, int64_t k, const float* x, int64_t m,
                      float* y, int64_t ldy, cudaStream_t stream) {
  if (n <= 0 || m <= 0) return cudaSuccess;
  if (!is_ggml_block(wdt) || !ggml_row_fits(wdt, k) || m > kPackedGemvLimit || ldy < n)
    return cudaErrorInvalidValue;
  const auto blocks = static_cast<unsigned>(
      std::clamp<int64_t>((n + kRowsPerBlock - 1) / kRowsPerBlock, 1, 65535));
  const auto* wb = static_cast<const unsigned char*>(w);
  with_block_type(wdt, [&](auto c) {
    constexpr DType kT = decltype(c)::value;
    if (m == 1) {
      ggml_gemv_kernel<kT, 1><<<blocks, kThreads, 0, stream>>>(wb, n, k, x, m, y, ldy);
    } else {
      ggml_gemv_kernel<kT, kPackedGemvLimit><<<blocks, kThreads, 0, stream>>>(wb, n, k, x, m, y,
                                                                              ldy);
    }
  });
  return cudaGetLastError();
}

cudaError_t ggml_dequantize_rows(const void* w, DType wdt, int64_t k, int64_t row0, int64_t rows,
                                 uint16_t* out, cudaStream_t stream) {
  return dequantize_any(w, wdt, k, row0, rows, out, stream);
}

cudaError_t ggml_dequantize_rows_f32(const void* w, DType wdt, int64_t k, int64_t row0,
                                     int64_t rows, float* out, cudaStream_t stream) {
  return dequantize_any(w, wdt, k, row0, rows, out, stream);
}

}  // namespace ferry::kernels::cuda
