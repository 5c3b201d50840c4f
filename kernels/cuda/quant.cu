// Products with the packed weights of ferry packs (q8, q4_g64, q4_g128; runtime/core/quant.hpp).
// Every weight is dequantized by the functions of kernels/common/quant_math.hpp, the ones the CPU
// reference kernels use, so a weight is the same f32 on both backends; the products differ from
// the CPU's only in the order of their f32 sums (packed_gemv; the CPU's AVX2 decode also factors
// each q4 group's scale and minimum out of its sum) or by one f16 rounding of each input
// (dequantize_rows + cuBLAS).
//
// packed_gemv gives each output row to one warp, each lane adding what packed_row_lane_sums_t
// (kernels/common/quant_math.hpp, run lane by lane by the CPU tests) assigns it: the row's 4-byte
// words lane, lane + 32, …, so a warp reads 128 consecutive bytes a step with four steps in
// flight, each q4 word with its group's scale and minimum. The m ≤ 32 activation rows stay f32
// and are read from L1/L2. The kernels are instantiated per dtype (so group sizes are
// constants) and for up to 8 or up to 32 rows (the sums stay in registers).
//
// dequantize_rows gives each row to blockIdx.y and its columns to the threads along x: one f16
// out per thread, by packed_row_weight_t, coalesced writes.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/common/quant_math.hpp"
#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = kThreads / kWarp;

template <DType T, int M>
__global__ void packed_gemv_kernel(const unsigned char* __restrict__ w, int64_t n, int64_t k,
                                   const float* __restrict__ x, int64_t m, float* __restrict__ y,
                                   int64_t ldy) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const uint64_t row_bytes = packed_row_bytes(T, k);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t o = first; o < n; o += step) {  // the whole warp takes the same rows
    const unsigned char* row = w + static_cast<uint64_t>(o) * row_bytes;
    float acc[M] = {};
    packed_row_lane_sums_t<T>(row, k, x, m, lane, kWarp, acc);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      if (i >= m) break;  // m is the same for the whole warp: the shuffles stay converged
      float s = acc[i];
      for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0) y[i * ldy + o] = s;
    }
  }
}

template <DType T>
__global__ void dequantize_kernel(const unsigned char* __restrict__ w, int64_t k, int64_t row0,
                                  int64_t rows, uint16_t* __restrict__ out) {
  const uint64_t row_bytes = packed_row_bytes(T, k);
  const int64_t ng = quant_groups(T, k);
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const unsigned char* row = w + static_cast<uint64_t>(row0 + r) * row_bytes;
    uint16_t* o = out + r * k;
    for (int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; j < k;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x)
      o[j] = f32_to_f16(packed_row_weight_t<T>(row, ng, j));
  }
}

}  // namespace

cudaError_t packed_gemv(const void* w, DType wdt, int64_t n, int64_t k, const float* x, int64_t m,
                        float* y, int64_t ldy, cudaStream_t stream) {
  if (n <= 0 || m <= 0) return cudaSuccess;
  if (!is_quantized(wdt) || k <= 0 || m > kPackedGemvLimit || ldy < n) return cudaErrorInvalidValue;
  const auto blocks =
      static_cast<unsigned>(std::clamp<int64_t>((n + kRowsPerBlock - 1) / kRowsPerBlock, 1, 65535));
  const auto* wb = static_cast<const unsigned char*>(w);
  const auto launch = [&](auto kernel) {
    kernel<<<blocks, kThreads, 0, stream>>>(wb, n, k, x, m, y, ldy);
  };
  const bool few = m <= 8;
  switch (wdt) {
    case DType::q8:
      few ? launch(packed_gemv_kernel<DType::q8, 8>) : launch(packed_gemv_kernel<DType::q8, 32>);
      break;
    case DType::q4_g64:
      few ? launch(packed_gemv_kernel<DType::q4_g64, 8>)
          : launch(packed_gemv_kernel<DType::q4_g64, 32>);
      break;
    default:
      few ? launch(packed_gemv_kernel<DType::q4_g128, 8>)
          : launch(packed_gemv_kernel<DType::q4_g128, 32>);
      break;
  }
  return cudaGetLastError();
}

cudaError_t dequantize_rows(const void* w, DType wdt, int64_t k, int64_t row0, int64_t rows,
                            uint16_t* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (!is_quantized(wdt) || k <= 0 || row0 < 0) return cudaErrorInvalidValue;
  const dim3 grid(
      static_cast<unsigned>(std::clamp<int64_t>((k + kThreads - 1) / kThreads, 1, 65535)),
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
