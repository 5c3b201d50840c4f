// Products with the packed weights of ferry packs (q8, q4_g64, q4_g128; runtime/core/quant.hpp).
// Every weight is dequantized by the functions of kernels/common/quant_math.hpp, the ones the CPU
// reference kernels use, so a weight is the same f32 on both backends; the products differ from
// the CPU's only in the order of their f32 sums (packed_gemv; the CPU's AVX2 decode also factors
// each q4 group's scale and minimum out of its sum) or by one f16 rounding of each input
// (dequantize_rows + cuBLAS).
//
// packed_gemv gives each output row to W warps (1, 2 or 4: packed_gemv_warps_per_row,
// kernels/cuda/ops.hpp), every thread adding what
// packed_row_lane_sums_t (kernels/common/quant_math.hpp, run lane by lane by the CPU tests) assigns
// it: the row's 4-byte words t, t + 32·W, …, so the row's warps read 128·W consecutive bytes per
// step, coalesced, up to 4 words a thread in flight. Each word is dequantized once (codes to f32
// by a byte permute into 2^23's mantissa, no int → float conversion) and multiplied with every
// row of x (16-byte loads when x is aligned). The threads' sums are added by warp shuffles and,
// for W > 1, across the row's warps through shared memory, in a fixed order. Kernels are
// instantiated per dtype (group sizes are constants) for up to kPackedGemvLimit = 8 rows of x
// (the sums stay in registers).
//
// dequantize_rows gives each row to blockIdx.y and its words to the threads along x: one word
// (4 or 8 weights, packed_word_weights_t) per thread, written as 8-byte stores when the rows allow
// it; the columns of a partial last group one per thread.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/common/quant_math.hpp"
#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kWarps = kThreads / kWarp;

// W warps take each output row; a block holds 8 / W rows at a time.
template <DType T, int M, int W>
__global__ void __launch_bounds__(kThreads)
    packed_gemv_kernel(const unsigned char* __restrict__ w, int64_t n, int64_t k,
                       const float* __restrict__ x, int64_t m, float* __restrict__ y, int64_t ldy) {
  constexpr int kRows = kWarps / W;
  __shared__ float part[W > 1 ? kWarps : 1][M];
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarp;
  const int warp = tid / kWarp;
  const int slot = warp / W;  // which of the block's rows
  const int lane_in_row = tid - slot * W * kWarp;
  const uint64_t row_bytes = packed_row_bytes(T, k);
  const bool x_aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && k % 4 == 0;
  // Every warp of the block goes round the loop as often (W > 1 synchronizes the block).
  for (int64_t b0 = static_cast<int64_t>(blockIdx.x) * kRows; b0 < n;
       b0 += static_cast<int64_t>(gridDim.x) * kRows) {
    const int64_t o = b0 + slot;
    const bool live = o < n;  // the same for the whole warp: shuffles stay converged
    float acc[M] = {};
    if (live)
      packed_row_lane_sums_t<T, M>(w + static_cast<uint64_t>(o) * row_bytes, k, x, m, x_aligned,
                                   lane_in_row, W * kWarp, acc);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      if (i >= m || !live) break;
      float s = acc[i];
      for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if constexpr (W == 1) {
        if (lane == 0) y[i * ldy + o] = s;
      } else {
        if (lane == 0) part[warp][i] = s;
      }
    }
    if constexpr (W > 1) {
      __syncthreads();
      if (live && lane_in_row < m) {
        float s = 0.0f;
        for (int v = 0; v < W; ++v) s += part[slot * W + v][lane_in_row];
        y[lane_in_row * ldy + o] = s;
      }
      __syncthreads();  // part is written again for the next rows
    }
  }
}

// Four f16 as one 8-byte store (p 8-byte aligned).
__device__ void store_f16x4(uint16_t* p, const float* v) {
  uint2 q;
  q.x = static_cast<uint32_t>(f32_to_f16(v[0])) | static_cast<uint32_t>(f32_to_f16(v[1])) << 16;
  q.y = static_cast<uint32_t>(f32_to_f16(v[2])) | static_cast<uint32_t>(f32_to_f16(v[3])) << 16;
  *reinterpret_cast<uint2*>(p) = q;
}

template <DType T>
__global__ void dequantize_kernel(const unsigned char* __restrict__ w, int64_t k, int64_t row0,
                                  int64_t rows, uint16_t* __restrict__ out) {
  constexpr int64_t kHalf = quant_group_size(T) / 2;
  const uint64_t row_bytes = packed_row_bytes(T, k);
  const int64_t ng = quant_groups(T, k);
  const int64_t words = packed_row_words(T, k);
  const int64_t tail = packed_tail_column(T, k);
  const int64_t units = packed_row_units(T, k);
  const bool vec = k % 4 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const unsigned char* row = w + static_cast<uint64_t>(row0 + r) * row_bytes;
    uint16_t* o = out + r * k;
    for (int64_t u = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < units;
         u += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      if (u >= words) {  // a column past the whole words
        const int64_t j = tail + (u - words);
        o[j] = f32_to_f16(packed_row_weight_t<T>(row, ng, j));
        continue;
      }
      float v[8];
      packed_word_weights_t<T>(row, ng, u, v);
      const int64_t lo = packed_word_column<T>(u);
      constexpr int kParts = T == DType::q8 ? 1 : 2;
#pragma unroll
      for (int h = 0; h < kParts; ++h) {
        uint16_t* p = o + lo + h * kHalf;
        if (vec) {
          store_f16x4(p, v + 4 * h);
        } else {
          for (int t = 0; t < 4; ++t) p[t] = f32_to_f16(v[4 * h + t]);
        }
      }
    }
  }
}

template <DType T>
void launch_packed_gemv(const unsigned char* w, int64_t n, int64_t k, const float* x, int64_t m,
                        float* y, int64_t ldy, cudaStream_t stream, int warps_per_row) {
  const auto launch = [&](auto kernel, int64_t rows_per_block) {
    const auto blocks = static_cast<unsigned>(
        std::clamp<int64_t>((n + rows_per_block - 1) / rows_per_block, 1, 65535));
    kernel<<<blocks, kThreads, 0, stream>>>(w, n, k, x, m, y, ldy);
  };
  switch (warps_per_row) {
    case 2:
      return launch(packed_gemv_kernel<T, 8, 2>, kWarps / 2);
    case 4:
      return launch(packed_gemv_kernel<T, 8, 4>, kWarps / 4);
    default:
      return launch(packed_gemv_kernel<T, 8, 1>, kWarps);
  }
}

}  // namespace

cudaError_t packed_gemv(const void* w, DType wdt, int64_t n, int64_t k, const float* x, int64_t m,
                        float* y, int64_t ldy, cudaStream_t stream, int warps_per_row) {
  if (is_ggml_block(wdt)) return ggml_gemv(w, wdt, n, k, x, m, y, ldy, stream);
  if (n <= 0 || m <= 0) return cudaSuccess;
  if (!is_quantized(wdt) || k <= 0 || m > kPackedGemvLimit || ldy < n) return cudaErrorInvalidValue;
  if (warps_per_row == 0) warps_per_row = packed_gemv_warps_per_row(wdt, m);
  if (warps_per_row != 1 && warps_per_row != 2 && warps_per_row != 4) return cudaErrorInvalidValue;
  const auto* wb = static_cast<const unsigned char*>(w);
  switch (wdt) {
    case DType::q8:
      launch_packed_gemv<DType::q8>(wb, n, k, x, m, y, ldy, stream, warps_per_row);
      break;
    case DType::q4_g64:
      launch_packed_gemv<DType::q4_g64>(wb, n, k, x, m, y, ldy, stream, warps_per_row);
      break;
    default:
      launch_packed_gemv<DType::q4_g128>(wb, n, k, x, m, y, ldy, stream, warps_per_row);
      break;
  }
  return cudaGetLastError();
}

cudaError_t dequantize_rows(const void* w, DType wdt, int64_t k, int64_t row0, int64_t rows,
                            uint16_t* out, cudaStream_t stream) {
  if (is_ggml_block(wdt)) return ggml_dequantize_rows(w, wdt, k, row0, rows, out, stream);
  if (rows <= 0) return cudaSuccess;
  if (!is_quantized(wdt) || k <= 0 || row0 < 0) return cudaErrorInvalidValue;
  const int64_t units = packed_row_units(wdt, k);
  const dim3 grid(
      static_cast<unsigned>(std::clamp<int64_t>((units + kThreads - 1) / kThreads, 1, 65535)),
      static_cast<unsigned>(std::min<int64_t>(rows, 65535)));
  const auto* wb = static_cast<const unsigned char*>(w);
  switch (wdt) {
    case DType::q8:
      dequantize_kernel<DType::q8><<<grid, kThreads, 0, stream>>>(wb, k, row0, rows, out);
      break;
    case DType::q4_g64:
      dequantize_kernel<DType::q4_g64><<<grid, kThreads, 0, stream>>>(wb, k, row0, rows, out);
      break;
    default:
      dequantize_kernel<DType::q4_g128><<<grid, kThreads, 0, stream>>>(wb, k, row0, rows, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace ferry::kernels::cuda
