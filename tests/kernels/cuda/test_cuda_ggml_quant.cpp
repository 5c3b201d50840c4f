// The CUDA kernels on llama.cpp's block formats (q8_0 … q6_k) against their CPU twins: the
// decoding bit for bit (f32) and rounded once to f16, and the fused product within the f32 sums'
// rounding of both sides. Skipped without a GPU (label gpu).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/ggml_quant_math.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cuda/ops.hpp"
#include "runtime/core/ggml_quant.hpp"
#include "runtime/core/half.hpp"
#include "tests/kernels/cuda/cuda_test_util.hpp"

namespace ferry::kernels {
namespace {

namespace kc = kernels::cuda;
using ferry::cuda::DeviceBuffer;

constexpr double kU = 5.9604644775390625e-08;  // f32 unit roundoff
constexpr DType kAll[] = {DType::q8_0, DType::q4_0, DType::q4_1, DType::q5_0,
                          DType::q5_1, DType::q4_k, DType::q5_k, DType::q6_k};

class CudaGgmlQuant : public ferry::cuda::test::GpuTest {};

// rows × k of random blocks whose f16 scales are finite and small (|d| ≤ 2, subnormals too).
std::vector<unsigned char> random_blocks(std::mt19937& rng, DType t, int64_t rows, int64_t k) {
  std::vector<unsigned char> b(static_cast<std::size_t>(rows) * ggml_row_bytes(t, k));
  for (auto& v : b) v = static_cast<unsigned char>(rng());
  const auto bs = ggml_block_bytes(t);
  const bool two = t == DType::q4_1 || t == DType::q5_1 || t == DType::q4_k || t == DType::q5_k;
  const std::size_t first = t == DType::q6_k ? 208 : 0;
  for (std::size_t off = 0; off < b.size(); off += bs) {
    for (std::size_t f = first; f < first + (two ? 4 : 2); f += 2) {
      const auto h = static_cast<uint16_t>((rng() & 0x8000) | (rng() % 0x4000));
      b[off + f] = static_cast<unsigned char>(h & 0xff);
      b[off + f + 1] = static_cast<unsigned char>(h >> 8);
    }
  }
  return b;
}

// Rows of odd byte lengths (q4_0 at k = 96 is 54 bytes, q6_k 210 per block) starting anywhere.
TEST_F(CudaGgmlQuant, DequantizeIsGgmlsDecodingBitForBit) {
  std::mt19937 rng(3);
  for (DType t : kAll) {
    const int64_t k = ggml_block_elems(t) == 32 ? 96 : 768;
    const int64_t n = 11;
    const auto w = random_blocks(rng, t, n, k);
    const DeviceBuffer dw = upload(w);
    const int64_t row0 = 3;
    const int64_t rows = 7;
    DeviceBuffer out32(static_cast<std::size_t>(rows * k) * 4);
    DeviceBuffer out16(static_cast<std::size_t>(rows * k) * 2);
    FERRY_CUDA_LAUNCH(kc::ggml_dequantize_rows_f32(dw.data(), t, k, row0, rows,
                                                   out32.as<float>(), stream().get()));
    FERRY_CUDA_LAUNCH(kc::dequantize_rows(dw.data(), t, k, row0, rows, out16.as<uint16_t>(),
                                          stream().get()));
    const auto got32 = download<float>(out32, static_cast<std::size_t>(rows * k));
    const auto got16 = download<uint16_t>(out16, static_cast<std::size_t>(rows * k));
    std::vector<float> want(static_cast<std::size_t>(k));
    for (int64_t r = 0; r < rows; ++r) {
      cpu::ref::convert_to_f32(w.data() + (row0 + r) * ggml_row_bytes(t, k), t, k, want.data());
      for (int64_t j = 0; j < k; ++j) {
        const auto i = static_cast<std::size_t>(r * k + j);
        ASSERT_EQ(f32_bits(got32[i]), f32_bits(want[static_cast<std::size_t>(j)]))
            << dtype_name(t) << " row " << row0 + r << " col " << j;
        ASSERT_EQ(got16[i], f32_to_f16(want[static_cast<std::size_t>(j)]))
            << dtype_name(t) << " row " << row0 + r << " col " << j;
      }
    }
  }
  EXPECT_EQ(kc::ggml_dequantize_rows_f32(nullptr, DType::q4_k, 100, 0, 1, nullptr,
                                         stream().get()),
            cudaErrorInvalidValue);
}

// The fused product (through packed_gemv, as CudaBackend calls it) against the CPU reference:
// both are f32 sums of the same exact products, so they differ by at most 2·(k + 2)·u·Σ|x·w|.
TEST_F(CudaGgmlQuant, GemvMatchesTheCpu) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (DType t : kAll) {
    for (int64_t m : {1, 3, 8}) {
      const int64_t k = ggml_block_elems(t) == 32 ? 32 * 37 : 256 * 5;
      const int64_t n = 45;
      const auto w = random_blocks(rng, t, n, k);
      std::vector<float> x(static_cast<std::size_t>(m * k));
      for (auto& v : x) v = dist(rng);
      const DeviceBuffer dw = upload(w);
      const DeviceBuffer dx = upload(x);
      DeviceBuffer dy(static_cast<std::size_t>(m * n) * 4);
      FERRY_CUDA_LAUNCH(kc::packed_gemv(dw.data(), t, n, k, dx.as<float>(), m, dy.as<float>(), n,
                                        stream().get()));
      const auto got = download<float>(dy, static_cast<std::size_t>(m * n));
      std::vector<float> want(static_cast<std::size_t>(m * n));
      cpu::ref::linear(x.data(), m, k, w.data(), t, n, nullptr, want.data());
      std::vector<float> wr(static_cast<std::size_t>(k));
      for (int64_t o = 0; o < n; ++o) {
        cpu::ref::convert_to_f32(w.data() + o * ggml_row_bytes(t, k), t, k, wr.data());
        for (int64_t i = 0; i < m; ++i) {
          double mag = 0;
          for (int64_t j = 0; j < k; ++j)
            mag += std::fabs(static_cast<double>(x[i * k + j]) * wr[static_cast<std::size_t>(j)]);
          const auto idx = static_cast<std::size_t>(i * n + o);
          ASSERT_LE(std::fabs(static_cast<double>(got[idx]) - want[idx]),
                    2.0 * static_cast<double>(k + 2) * kU * mag)
              << dtype_name(t) << " m=" << m << " row " << o << " x row " << i;
        }
      }
    }
  }
  EXPECT_EQ(kc::ggml_gemv(nullptr, DType::q8_0, 4, 33, nullptr, 1, nullptr, 4, stream().get()),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace ferry::kernels
