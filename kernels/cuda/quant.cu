// Products with the packed weights of ferry packs (q8, q4_g64, q4_g128; runtime/core/quant.hpp).
// Every weight is dequantized by the functions of kernels/common/quant_math.hpp, the ones the CPU
// kernels use, so a weight is the same f32 on both backends; the products differ from the CPU's
// only in the order of their f32 sums (packed_gemv) or by one f16 rounding of each input
// (dequantize_rows + cuBLAS).
//
// packed_gemv gives each output row to one warp, each lane adding what packed_row_lane_sums
// (kernels/common/quant_math.hpp, run lane by lane by the CPU tests) assigns it: for q8 a stride
// of the row's int8 values; for q4 the nibble bytes of each group in turn (all 32 of a g64
// group's, 2 each of a g128 group's 64), two weights a byte, the group's scale and minimum read
// once per lane. The m ≤ 8 activation rows stay f32 and are read from L1/L2.
#include <cuda_runtime.h>

#include <algorithm>

#include "kernels/common/quant_math.hpp"
#include "kernels/cuda/ops.hpp"

namespace ferry::kernels::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int kRowsPerBlock = kThreads / kWarp;

__global__ void packed_gemv_kernel(const unsigned char* __restrict__ w, DType t, int64_t n,
                                   int64_t k, const float* __restrict__ x, int64_t m,
                                   float* __restrict__ y, int64_t ldy) {
  constexpr int M = static_cast<int>(kPackedGemvMaxRows);
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const uint64_t row_bytes = packed_row_bytes(t, k);
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  for (int64_t o = first; o < n; o += step) {  // the whole warp takes the same rows
    const unsigned char* row = w + static_cast<uint64_t>(o) * row_bytes;
    float acc[M] = {};
    packed_row_lane_sums(row, t, k, x, m, lane, kWarp, acc);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float s = acc[i];
      for (int off = kWarp / 2; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
      if (lane == 0 && i < m) y[i * ldy + o] = s;
    }
  }
}

// One thread per weight: element j of packed row r, as f32 by the shared math, then rounded to f16.
__global__ void dequantize_kernel(const unsigned char* __restrict__ w, DType t, int64_t k,
                                  int64_t row0, int64_t rows, uint16_t* __restrict__ out) {
  const uint64_t row_bytes = packed_row_bytes(t, k);
  const int64_t total = rows * k;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / k;
    const int64_t j = i - r * k;
    const unsigned char* row = w + static_cast<uint64_t>(row0 + r) * row_bytes;
    out[i] = f32_to_f16(packed_row_weight(row, t, k, j));
  }
}

}  // namespace

cudaError_t packed_gemv(const void* w, DType wdt, int64_t n, int64_t k, const float* x, int64_t m,
                        float* y, int64_t ldy, cudaStream_t stream) {
  if (n <= 0 || m <= 0) return cudaSuccess;
  if (!is_quantized(wdt) || k <= 0 || m > kPackedGemvMaxRows || ldy < n)
    return cudaErrorInvalidValue;
  const int64_t blocks = std::clamp<int64_t>((n + kRowsPerBlock - 1) / kRowsPerBlock, 1, 65535);
  packed_gemv_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const unsigned char*>(w), wdt, n, k, x, m, y, ldy);
  return cudaGetLastError();
}

cudaError_t dequantize_rows(const void* w, DType wdt, int64_t k, int64_t row0, int64_t rows,
                            uint16_t* out, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (!is_quantized(wdt) || k <= 0 || row0 < 0) return cudaErrorInvalidValue;
  const int64_t blocks = std::clamp<int64_t>((rows * k + kThreads - 1) / kThreads, 1, 65535);
  dequantize_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const unsigned char*>(w), wdt, k, row0, rows, out);
  return cudaGetLastError();
}

}  // namespace ferry::kernels::cuda
