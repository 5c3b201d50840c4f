// Every CUDA kernel against its CPU twin (kernels/cpu, reference versions) on random inputs of
// awkward sizes. Tolerances are atol + rtol·|ref| per dtype: element-wise kernels differ from
// the CPU only by the device's libm (tanhf, expf, sinf/cosf: ≤ 2 ulp), sums only by their order
// (bounded by k·u·Σ|terms|), 16-bit product inputs by one rounding of each input (2^-11 for
// f16, 2^-8 for bf16, relative to Σ|x·w|). Skipped without a GPU (label gpu).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/common/kv_paging.hpp"
#include "kernels/common/quant_math.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cuda/ops.hpp"
#include "runtime/core/half.hpp"
#include "tests/kernels/cpu/kernel_test_util.hpp"
#include "tests/kernels/cuda/cuda_test_util.hpp"

namespace ferry::kernels {
namespace {

namespace kc = kernels::cuda;
using cpu::test::random_floats;
using cpu::test::random_weights;
using ferry::cuda::DeviceBuffer;

constexpr double kU = 5.9604644775390625e-08;  // f32 unit roundoff

class CudaKernels : public ferry::cuda::test::GpuTest {};

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double atol,
                  double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    // Infinities and NaNs must come out as they went in (inf - inf is NaN, so no tolerance).
    if (!std::isfinite(want[i]) || !std::isfinite(got[i])) {
      ASSERT_TRUE(std::isnan(want[i]) ? std::isnan(got[i]) : got[i] == want[i])
          << what << " element " << i << ": got " << got[i] << " want " << want[i];
      continue;
    }
    ASSERT_LE(std::fabs(static_cast<double>(got[i]) - want[i]), atol + rtol * std::fabs(want[i]))
        << what << " element " << i << ": got " << got[i] << " want " << want[i];
  }
}

TEST_F(CudaKernels, LayerNormMatchesCpuInEveryOutputType) {
  std::mt19937 rng(1);
  for (int64_t n : {1, 31, 64, 257, 4096}) {
    const int64_t m = 5;
    const auto x = random_floats(rng, static_cast<std::size_t>(m * n), -3.0f, 3.0f);
    const auto g = random_floats(rng, static_cast<std::size_t>(n), 0.5f, 1.5f);
    const auto b = random_floats(rng, static_cast<std::size_t>(n), -0.5f, 0.5f);
    std::vector<float> want(x.size());
    cpu::ref::layer_norm(x.data(), m, n, g.data(), b.data(), 1e-5f, want.data());
    const DeviceBuffer dx = upload(x), dg = upload(g), db = upload(b);
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      DeviceBuffer dy(x.size() * dtype_size(dt));
      FERRY_CUDA_LAUNCH(kc::layer_norm(dx.as<float>(), m, n, dg.as<float>(), db.as<float>(), 1e-5f,
                                       dy.data(), dt, stream().get()));
      std::vector<float> got(x.size());
      if (dt == DType::f32) {
        got = download<float>(dy, x.size());
      } else {
        const auto bits = download<uint16_t>(dy, x.size());
        for (std::size_t i = 0; i < got.size(); ++i)
          got[i] = dt == DType::f16 ? f16_to_f32(bits[i]) : bf16_to_f32(bits[i]);
      }
      // Sums in another order: the mean and variance move by ~n·u; outputs are O(3).
      const double rel = dt == DType::f32 ? 0.0 : (dt == DType::f16 ? 0x1p-11 : 0x1p-8);
      expect_close(got, want, 64.0 * static_cast<double>(n) * kU * 4.0, rel,
                   std::string(dtype_name(dt)) + " n=" + std::to_string(n));
    }
  }
}

// RMSNorm's one sum is of n positive squares: in any order within n·u of exact (relative), so
// rstd within n·u/2 + 3u and each output (two products more) within n·u/2 + 6u on either side:
// (n + 16)·u between them, plus one rounding to f16 / bf16 for a 16-bit output. Rows of the
// widths of Llama 3 / Mistral (4096), Qwen2.5 (3584) and the Qwen3 per-head norm (128).
TEST_F(CudaKernels, RmsNormMatchesCpuInEveryOutputTypeAndInPlace) {
  std::mt19937 rng(13);
  for (int64_t n : {1, 31, 128, 257, 3584, 4096}) {
    const int64_t m = 5;
    const auto x = random_floats(rng, static_cast<std::size_t>(m * n), -3.0f, 3.0f);
    const auto g = random_floats(rng, static_cast<std::size_t>(n), 0.5f, 1.5f);
    std::vector<float> want(x.size());
    cpu::ref::rms_norm(x.data(), m, n, g.data(), 1e-6f, want.data());
    const DeviceBuffer dx = upload(x), dg = upload(g);
    const double sums = static_cast<double>(n + 16) * kU;
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      DeviceBuffer dy(x.size() * dtype_size(dt));
      FERRY_CUDA_LAUNCH(
          kc::rms_norm(dx.as<float>(), m, n, dg.as<float>(), 1e-6f, dy.data(), dt, stream().get()));
      std::vector<float> got(x.size());
      if (dt == DType::f32) {
        got = download<float>(dy, x.size());
      } else {
        const auto bits = download<uint16_t>(dy, x.size());
        for (std::size_t i = 0; i < got.size(); ++i)
          got[i] = dt == DType::f16 ? f16_to_f32(bits[i]) : bf16_to_f32(bits[i]);
      }
      const double rel = dt == DType::f32 ? 0.0 : (dt == DType::f16 ? 0x1p-11 : 0x1p-8);
      // atol: f16 subnormals (below 2^-14) round in steps of 2^-24.
      expect_close(got, want, 1e-7, sums + rel,
                   std::string(dtype_name(dt)) + " n=" + std::to_string(n));
    }
    // In place (y = x, f32), as the engine normalises the residual stream's copy: the same bits.
    DeviceBuffer dxy = upload(x), dy(x.size() * 4);
    FERRY_CUDA_LAUNCH(kc::rms_norm(dxy.as<float>(), m, n, dg.as<float>(), 1e-6f, dy.data(),
                                   DType::f32, stream().get()));
    FERRY_CUDA_LAUNCH(kc::rms_norm(dxy.as<float>(), m, n, dg.as<float>(), 1e-6f, dxy.data(),
                                   DType::f32, stream().get()));
    expect_close(download<float>(dxy, x.size()), download<float>(dy, x.size()), 0, 0,
                 "in place n=" + std::to_string(n));
  }
  // A 16-bit y over x is refused, not raced.
  DeviceBuffer d(64 * sizeof(float));
  EXPECT_EQ(kc::rms_norm(d.as<float>(), 4, 16, d.as<float>(), 1e-6f, d.data(), DType::f16,
                         stream().get()),
            cudaErrorInvalidValue);
}

// silu(g)·u = g / (1 + expf(-g)) · u: the device's expf is within 2 ulp, the host's within 1,
// and the three operations after it may each round the other way: 16·u relative. Past g ≈ -88,
// expf(-g) overflows to inf on both sides and the result is ±0.
TEST_F(CudaKernels, SiluMulMatchesCpu) {
  std::mt19937 rng(14);
  auto gate = random_floats(rng, 100003, -12.0f, 12.0f);
  for (float v : {-100.0f, -88.0f, -20.0f, -1e-30f, 0.0f, 1e-30f, 20.0f, 88.0f, 100.0f})
    gate.push_back(v);
  const auto up = random_floats(rng, gate.size(), -4.0f, 4.0f);
  const auto n = static_cast<int64_t>(gate.size());
  auto want = gate;
  cpu::ref::silu_mul(want.data(), up.data(), n);
  DeviceBuffer dg = upload(gate);
  const DeviceBuffer du = upload(up);
  FERRY_CUDA_LAUNCH(kc::silu_mul(dg.as<float>(), du.as<float>(), n, stream().get()));
  expect_close(download<float>(dg, gate.size()), want, 1e-37, 16 * kU, "silu_mul");
}

// Llama's rotate_half layout, rotary_dim below head_dim (partial rotary) and equal to it (Llama,
// Mistral, Qwen), Llama 3's rope_theta 500000 frequencies, positions to 32767. The angles are
// the same float products on both sides; sinf/cosf of the device are within 2 ulp over the full
// range, so each rotated value is within a few ulp of 1 (|x| ≤ 1) of the host's. Everything past
// rotary_dim and the row padding must come back bit for bit.
TEST_F(CudaKernels, RotaryHalfMatchesCpu) {
  std::mt19937 rng(15);
  const int64_t m = 11, n_head = 3, head_dim = 128;
  const int64_t stride = n_head * head_dim + 5;  // rows with padding
  const std::vector<int32_t> pos = {0, 1, 2, 17, 255, 511, 1024, 2047, 8191, 20000, 32767};
  for (int64_t rotary_dim : {2, 64, 128}) {
    std::vector<float> inv_freq(static_cast<std::size_t>(rotary_dim / 2));
    for (std::size_t i = 0; i < inv_freq.size(); ++i)
      inv_freq[i] = static_cast<float>(
          1.0 / std::pow(500000.0, static_cast<double>(2 * i) / static_cast<double>(rotary_dim)));
    const auto x = random_floats(rng, static_cast<std::size_t>(m * stride));
    auto want = x;
    cpu::ref::rotary_half(want.data(), m, stride, n_head, head_dim, rotary_dim, inv_freq.data(),
                          pos.data());
    DeviceBuffer dx = upload(x);
    const DeviceBuffer dpos = upload(pos), dfreq = upload(inv_freq);
    FERRY_CUDA_LAUNCH(kc::rotary_half(dx.as<float>(), m, stride, n_head, head_dim, rotary_dim,
                                      dfreq.as<float>(), dpos.as<int32_t>(), stream().get()));
    expect_close(download<float>(dx, x.size()), want, 1e-6, 8 * kU,
                 "rotary_dim " + std::to_string(rotary_dim));
  }
  EXPECT_EQ(kc::rotary_half(nullptr, 1, 8, 1, 8, 3, nullptr, nullptr, stream().get()),
            cudaErrorInvalidValue);
  EXPECT_EQ(kc::rotary_half(nullptr, 1, 8, 1, 8, 10, nullptr, nullptr, stream().get()),
            cudaErrorInvalidValue);
}

// rotary_pairs (a GGUF llama file's permuted q/k rows): the same angles and products as the CPU
// twin, on adjacent pairs.
TEST_F(CudaKernels, RotaryPairsMatchesCpu) {
  std::mt19937 rng(16);
  const int64_t m = 7, n_head = 4, head_dim = 64;
  const int64_t stride = n_head * head_dim + 3;
  const std::vector<int32_t> pos = {0, 1, 3, 255, 4095, 20000, 32767};
  const int64_t rotary_dim = head_dim;
  std::vector<float> inv_freq(static_cast<std::size_t>(rotary_dim / 2));
  for (std::size_t i = 0; i < inv_freq.size(); ++i)
    inv_freq[i] = static_cast<float>(
        1.0 / std::pow(500000.0, static_cast<double>(2 * i) / static_cast<double>(rotary_dim)));
  const auto x = random_floats(rng, static_cast<std::size_t>(m * stride));
  auto want = x;
  cpu::ref::rotary_pairs(want.data(), m, stride, n_head, head_dim, rotary_dim, inv_freq.data(),
                         pos.data());
  DeviceBuffer dx = upload(x);
  const DeviceBuffer dpos = upload(pos), dfreq = upload(inv_freq);
  FERRY_CUDA_LAUNCH(kc::rotary_pairs(dx.as<float>(), m, stride, n_head, head_dim, rotary_dim,
                                     dfreq.as<float>(), dpos.as<int32_t>(), stream().get()));
  expect_close(download<float>(dx, x.size()), want, 1e-6, 8 * kU, "rotary_pairs");
  EXPECT_EQ(kc::rotary_pairs(nullptr, 1, 8, 1, 8, 3, nullptr, nullptr, stream().get()),
            cudaErrorInvalidValue);
}

TEST_F(CudaKernels, ElementwiseMatchCpu) {
  std::mt19937 rng(2);
  const int64_t m = 7, n = 1023;
  const auto x = random_floats(rng, static_cast<std::size_t>(m * n), -6.0f, 6.0f);
  const auto y0 = random_floats(rng, x.size());
  const auto bias = random_floats(rng, static_cast<std::size_t>(n));
  const auto attn = random_floats(rng, x.size());

  auto want = x;
  cpu::ref::gelu_new(want.data(), m * n);
  DeviceBuffer d = upload(x);
  FERRY_CUDA_LAUNCH(kc::gelu_new(d.as<float>(), m * n, stream().get()));
  expect_close(download<float>(d, x.size()), want, 4 * kU, 8 * kU, "gelu_new");

  want = y0;
  cpu::ref::add(want.data(), x.data(), m * n);
  d = upload(y0);
  DeviceBuffer dx = upload(x);
  FERRY_CUDA_LAUNCH(kc::add(d.as<float>(), dx.as<float>(), m * n, stream().get()));
  expect_close(download<float>(d, x.size()), want, 0, 0, "add");

  want = y0;
  for (std::size_t i = 0; i < want.size(); ++i) want[i] += bias[i % static_cast<std::size_t>(n)];
  d = upload(y0);
  DeviceBuffer dbias = upload(bias);
  FERRY_CUDA_LAUNCH(kc::add_bias(d.as<float>(), m, n, dbias.as<float>(), stream().get()));
  expect_close(download<float>(d, x.size()), want, 0, 0, "add_bias");

  // The engine's two CPU adds: mlp += attn, x += mlp.
  auto mlp = y0;
  want = x;
  cpu::ref::add(mlp.data(), attn.data(), m * n);
  cpu::ref::add(want.data(), mlp.data(), m * n);
  d = upload(x);
  DeviceBuffer dattn = upload(attn), dmlp = upload(y0);
  FERRY_CUDA_LAUNCH(
      kc::gptj_residual(d.as<float>(), dattn.as<float>(), dmlp.as<float>(), m * n, stream().get()));
  expect_close(download<float>(d, x.size()), want, 0, 0, "gptj_residual");
}

TEST_F(CudaKernels, ConvertIsExactBothWaysAndInPlace) {
  std::mt19937 rng(3);
  auto values = random_floats(rng, 5001, -70000.0f, 70000.0f);
  const auto small = random_floats(rng, 999, -1e-5f, 1e-5f);
  values.insert(values.end(), small.begin(), small.end());
  const auto n = static_cast<int64_t>(values.size());
  const DeviceBuffer src = upload(values);
  for (DType dt : {DType::f16, DType::bf16}) {
    DeviceBuffer half(values.size() * 2);
    FERRY_CUDA_LAUNCH(kc::convert(src.data(), DType::f32, half.data(), dt, n, stream().get()));
    const auto bits = download<uint16_t>(half, values.size());
    for (std::size_t i = 0; i < values.size(); ++i)
      ASSERT_EQ(bits[i], dt == DType::f16 ? f32_to_f16(values[i]) : f32_to_bf16(values[i])) << i;
    DeviceBuffer back(values.size() * 4);
    FERRY_CUDA_LAUNCH(kc::convert(half.data(), dt, back.data(), DType::f32, n, stream().get()));
    std::vector<float> want(values.size());
    cpu::ref::convert_to_f32(bits.data(), dt, n, want.data());
    expect_close(download<float>(back, values.size()), want, 0, 0, "to f32");
  }
  // bf16 → f16 in place, as the engine does on sm_75.
  std::vector<uint16_t> b(values.size());
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = f32_to_bf16(values[i] / 2.0f);
  DeviceBuffer db = upload(b);
  FERRY_CUDA_LAUNCH(kc::convert(db.data(), DType::bf16, db.data(), DType::f16, n, stream().get()));
  const auto h = download<uint16_t>(db, b.size());
  for (std::size_t i = 0; i < b.size(); ++i) ASSERT_EQ(h[i], f32_to_f16(bf16_to_f32(b[i]))) << i;
  // Widening in place is refused, not raced.
  EXPECT_EQ(kc::convert(db.data(), DType::f16, db.data(), DType::f32, n, stream().get()),
            cudaErrorInvalidValue);
}

TEST_F(CudaKernels, RotaryMatchesCpu) {
  std::mt19937 rng(4);
  for (int64_t rotary_dim : {2, 8, 64}) {
    const int64_t m = 9, n_head = 3, head_dim = 64 + 2;
    const int64_t stride = n_head * head_dim + 5;  // rows with padding
    auto x = random_floats(rng, static_cast<std::size_t>(m * stride));
    std::vector<int32_t> pos = {0, 1, 2, 17, 255, 511, 1024, 1999, 2047};
    auto want = x;
    cpu::ref::rotary_interleaved(want.data(), m, stride, n_head, head_dim, rotary_dim, pos.data());
    DeviceBuffer dx = upload(x), dpos = upload(pos);
    FERRY_CUDA_LAUNCH(kc::rotary_interleaved(dx.as<float>(), m, stride, n_head, head_dim,
                                             rotary_dim, dpos.as<int32_t>(), stream().get()));
    // Same angle bits; device sinf/cosf within 2 ulp of the host's at angles up to ~2000 rad.
    expect_close(download<float>(dx, x.size()), want, 1e-6, 8 * kU,
                 "rotary_dim " + std::to_string(rotary_dim));
  }
}

TEST_F(CudaKernels, KvStoreScattersRows) {
  std::mt19937 rng(5);
  const int64_t n_new = 3, n_past = 4, n_head = 2, head_dim = 5, cap = 10, stride = 13;
  const auto k = random_floats(rng, static_cast<std::size_t>(n_new * stride));
  const auto v = random_floats(rng, k.size());
  const DeviceBuffer dk = upload(k), dv = upload(v);
  for (DType dt : {DType::f32, DType::f16}) {
    const std::size_t elems = static_cast<std::size_t>(n_head * cap * head_dim);
    std::vector<uint8_t> zeros(elems * dtype_size(dt), 0);
    DeviceBuffer ck = upload(zeros), cv = upload(zeros);
    FERRY_CUDA_LAUNCH(kc::kv_store(dk.as<float>(), dv.as<float>(), stride, n_new, n_past, n_head,
                                   head_dim, ck.data(), cv.data(), cap * head_dim, dt,
                                   stream().get()));
    const auto gk = download<uint8_t>(ck, zeros.size());
    const auto gv = download<uint8_t>(cv, zeros.size());
    for (int64_t t = 0; t < n_new; ++t)
      for (int64_t h = 0; h < n_head; ++h)
        for (int64_t d = 0; d < head_dim; ++d) {
          const auto dst =
              static_cast<std::size_t>(h * cap * head_dim + (n_past + t) * head_dim + d);
          const auto src = static_cast<std::size_t>(t * stride + h * head_dim + d);
          float kk, vv;
          if (dt == DType::f32) {
            std::memcpy(&kk, gk.data() + dst * 4, 4);
            std::memcpy(&vv, gv.data() + dst * 4, 4);
            ASSERT_EQ(kk, k[src]);
            ASSERT_EQ(vv, v[src]);
          } else {
            uint16_t hk, hv;
            std::memcpy(&hk, gk.data() + dst * 2, 2);
            std::memcpy(&hv, gv.data() + dst * 2, 2);
            ASSERT_EQ(hk, f32_to_f16(k[src]));
            ASSERT_EQ(hv, f32_to_f16(v[src]));
          }
        }
  }
}

// A paged cache (the engine's): kv_store puts each new row at kv_paged_offset through a block
// table in device memory, and attention over that table gives the bits it gives over the same
// rows stored contiguously (the same numbers read in the same order), for blocks of 16 and 5
// tokens in shuffled pool order, grouped KV heads, prompt and decode, f32 and f16.
TEST_F(CudaKernels, PagedCacheEqualsContiguous) {
  std::mt19937 rng(8);
  struct Shape {
    int64_t n_new, n_past, n_head, n_kv_head, head_dim, block_tokens;
  };
  for (const Shape s :
       {Shape{1, 150, 4, 2, 128, 16}, Shape{20, 0, 2, 2, 64, 16}, Shape{9, 37, 3, 1, 20, 5}}) {
    const int64_t n_keys = s.n_past + s.n_new;
    const int64_t bt = s.block_tokens;
    const int64_t n_blocks = (n_keys + bt - 1) / bt;
    const int64_t pool_blocks = 2 * n_blocks + 1;
    const int64_t hs = bt * s.head_dim;
    const int64_t bs = 2 * s.n_kv_head * hs;  // k and v of a block together, as the engine's
    std::vector<int32_t> ids(static_cast<std::size_t>(pool_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    const std::vector<int32_t> table(ids.begin(), ids.begin() + n_blocks);
    const int64_t kvd = s.n_kv_head * s.head_dim;
    const int64_t qd = s.n_head * s.head_dim;
    // Every token's k and v rows ([token][kv head][head_dim]), stored in two passes (the past,
    // then the new tokens) as the engine does.
    const auto k = random_floats(rng, static_cast<std::size_t>(n_keys * kvd));
    const auto v = random_floats(rng, k.size());
    const auto q = random_floats(rng, static_cast<std::size_t>(s.n_new * qd), -1.0f, 1.0f);
    for (DType kv : {DType::f32, DType::f16}) {
      const std::size_t elt = dtype_size(kv);
      const DeviceBuffer dk = upload(k), dv = upload(v), dq = upload(q), dtable = upload(table);
      std::vector<uint8_t> zeros(static_cast<std::size_t>(pool_blocks * bs) * elt, 0);
      DeviceBuffer pool = upload(zeros);
      auto* kbase = static_cast<uint8_t*>(pool.data());
      auto* vbase = kbase + static_cast<std::size_t>(s.n_kv_head * hs) * elt;
      std::vector<uint8_t> czeros(static_cast<std::size_t>(n_keys * kvd) * elt, 0);
      DeviceBuffer ck = upload(czeros), cv = upload(czeros);
      for (const auto& [from, n] :
           {std::pair{int64_t{0}, s.n_past}, std::pair{s.n_past, s.n_new}}) {
        if (n == 0) continue;
        FERRY_CUDA_LAUNCH(kc::kv_store(dk.as<float>() + from * kvd, dv.as<float>() + from * kvd,
                                       kvd, n, from, s.n_kv_head, s.head_dim, kbase, vbase, hs, kv,
                                       stream().get(), dtable.as<int32_t>(), bt, bs));
        FERRY_CUDA_LAUNCH(kc::kv_store(dk.as<float>() + from * kvd, dv.as<float>() + from * kvd,
                                       kvd, n, from, s.n_kv_head, s.head_dim, ck.data(), cv.data(),
                                       n_keys * s.head_dim, kv, stream().get()));
      }
      // Every row where kv_paged_offset says.
      const auto got = download<uint8_t>(pool, zeros.size());
      const auto flat = download<uint8_t>(ck, czeros.size());
      for (int64_t h = 0; h < s.n_kv_head; ++h)
        for (int64_t j = 0; j < n_keys; ++j) {
          const auto at = static_cast<std::size_t>(
              kv_paged_offset(table.data(), bt, bs, hs, s.head_dim, h, j, 0));
          const auto want = static_cast<std::size_t>(h * n_keys * s.head_dim + j * s.head_dim);
          ASSERT_EQ(0, std::memcmp(got.data() + at * elt, flat.data() + want * elt,
                                   static_cast<std::size_t>(s.head_dim) * elt))
              << "head " << h << " token " << j;
        }
      DeviceBuffer out_paged(q.size() * 4), out_flat(q.size() * 4);
      kc::AttentionArgs g;
      g.q = dq.as<float>();
      g.q_stride = qd;
      g.kv_dtype = kv;
      g.out_stride = qd;
      g.n_new = s.n_new;
      g.n_past = s.n_past;
      g.n_head = s.n_head;
      g.n_kv_head = s.n_kv_head;
      g.head_dim = s.head_dim;
      kc::AttentionArgs flat_args = g;
      flat_args.k = ck.data();
      flat_args.v = cv.data();
      flat_args.kv_head_stride = n_keys * s.head_dim;
      flat_args.out = out_flat.as<float>();
      g.k = kbase;
      g.v = vbase;
      g.kv_head_stride = hs;
      g.block_table = dtable.as<int32_t>();
      g.block_tokens = bt;
      g.block_stride = bs;
      g.out = out_paged.as<float>();
      FERRY_CUDA_LAUNCH(kc::attention(flat_args, stream().get()));
      FERRY_CUDA_LAUNCH(kc::attention(g, stream().get()));
      const auto a = download<float>(out_paged, q.size());
      const auto b = download<float>(out_flat, q.size());
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)))
          << dtype_name(kv) << " n_new=" << s.n_new << " n_past=" << s.n_past;
    }
  }
}

// A KV cache as the GPU stores it (kv: f32, or f16 bits) and as the CPU twin must read it (the
// f16 values widened back), so the twin sees exactly the GPU's inputs.
struct StoredKv {
  std::vector<float> k, v;
  std::vector<uint8_t> k_bytes, v_bytes;
};

StoredKv store_kv(const std::vector<float>& k, const std::vector<float>& v, DType kv) {
  StoredKv c{k, v, std::vector<uint8_t>(k.size() * dtype_size(kv)),
             std::vector<uint8_t>(v.size() * dtype_size(kv))};
  const auto store = [&](std::vector<float>& x, std::vector<uint8_t>& bytes) {
    if (kv == DType::f32) {
      std::memcpy(bytes.data(), x.data(), bytes.size());
      return;
    }
    for (std::size_t i = 0; i < x.size(); ++i) {
      const uint16_t h = f32_to_f16(x[i]);
      std::memcpy(bytes.data() + 2 * i, &h, 2);
      x[i] = f16_to_f32(h);
    }
  };
  store(c.k, c.k_bytes);
  store(c.v, c.v_bytes);
  return c;
}

TEST_F(CudaKernels, AttentionMatchesCpuForPromptAndDecode) {
  std::mt19937 rng(6);
  struct Shape {
    int64_t n_new, n_past, n_head, head_dim;
  };
  for (const Shape s : {Shape{1, 0, 1, 1}, Shape{7, 0, 3, 33}, Shape{1, 1500, 2, 256},
                        Shape{5, 40, 4, 64}, Shape{33, 0, 2, 256}}) {
    const int64_t cap = s.n_past + s.n_new + 3;
    const int64_t stride = s.n_head * s.head_dim;
    const auto q = random_floats(rng, static_cast<std::size_t>(s.n_new * stride), -1.0f, 1.0f);
    const auto k = random_floats(rng, static_cast<std::size_t>(s.n_head * cap * s.head_dim));
    const auto v = random_floats(rng, k.size());
    for (DType kv : {DType::f32, DType::f16}) {
      // The CPU twin reads the cache as the GPU sees it (f16-rounded for an f16 cache).
      const StoredKv c = store_kv(k, v, kv);
      std::vector<float> want(q.size());
      cpu::AttentionArgs a;
      a.q = q.data();
      a.q_stride = stride;
      a.k = c.k.data();
      a.v = c.v.data();
      a.kv_head_stride = cap * s.head_dim;
      a.out = want.data();
      a.out_stride = stride;
      a.n_new = s.n_new;
      a.n_past = s.n_past;
      a.n_head = s.n_head;
      a.head_dim = s.head_dim;
      cpu::ref::attention(a);

      const DeviceBuffer dq = upload(q);
      const DeviceBuffer dk = upload(c.k_bytes), dv = upload(c.v_bytes);
      DeviceBuffer dout(q.size() * 4);
      kc::AttentionArgs g;
      g.q = dq.as<float>();
      g.q_stride = stride;
      g.k = dk.data();
      g.v = dv.data();
      g.kv_dtype = kv;
      g.kv_head_stride = cap * s.head_dim;
      g.out = dout.as<float>();
      g.out_stride = stride;
      g.n_new = s.n_new;
      g.n_past = s.n_past;
      g.n_head = s.n_head;
      g.head_dim = s.head_dim;
      FERRY_CUDA_LAUNCH(kc::attention(g, stream().get()));
      // Scores: dots of head_dim terms in another order (|q·k| ≤ head_dim), expf within 2 ulp;
      // outputs are convex combinations of |v| ≤ 1.
      const double atol = 8.0 * static_cast<double>(s.head_dim + s.n_past + s.n_new) * kU;
      expect_close(download<float>(dout, q.size()), want, atol, 16 * kU,
                   std::string(dtype_name(kv)) + " n_new=" + std::to_string(s.n_new) + " n_past=" +
                       std::to_string(s.n_past) + " head_dim=" + std::to_string(s.head_dim));
    }
  }
  // Beyond the shared-memory limit: refused with an error, not launched.
  kc::AttentionArgs too_long;
  too_long.n_new = 1;
  too_long.n_head = 1;
  too_long.head_dim = 64;
  too_long.n_past = kc::attention_max_keys();
  EXPECT_EQ(kc::attention(too_long, stream().get()), cudaErrorInvalidValue);
}

// Grouped-query attention (GQA 2:1 and 4:1 as Llama 3 / Mistral, 7:1 as Qwen2.5-7B, and MQA,
// one KV head) against the CPU reference over a cache of n_kv_head heads, with the tolerance of
// the ungrouped test; and against the same kernel over that cache with every KV head repeated for
// its query heads (HF's repeat_kv, n_kv_head 0): the same reads, so the same bits.
TEST_F(CudaKernels, AttentionWithGroupedKvHeadsMatchesCpuAndRepeatedHeads) {
  std::mt19937 rng(16);
  struct Shape {
    int64_t n_new, n_past, n_head, n_kv_head, head_dim;
  };
  for (const Shape s : {Shape{7, 0, 4, 2, 64}, Shape{1, 1500, 8, 2, 128}, Shape{5, 40, 7, 1, 128},
                        Shape{33, 0, 8, 1, 64}, Shape{3, 20, 28, 4, 128}}) {
    const int64_t cap = s.n_past + s.n_new + 3;
    const int64_t stride = s.n_head * s.head_dim;
    const int64_t group = s.n_head / s.n_kv_head;
    const int64_t head_elems = cap * s.head_dim;
    const auto q = random_floats(rng, static_cast<std::size_t>(s.n_new * stride), -1.0f, 1.0f);
    const auto k = random_floats(rng, static_cast<std::size_t>(s.n_kv_head * head_elems));
    const auto v = random_floats(rng, k.size());
    const std::string name =
        "n_head=" + std::to_string(s.n_head) + " n_kv_head=" + std::to_string(s.n_kv_head) +
        " n_new=" + std::to_string(s.n_new) + " n_past=" + std::to_string(s.n_past);
    for (DType kv : {DType::f32, DType::f16}) {
      const StoredKv c = store_kv(k, v, kv);
      std::vector<float> want(q.size());
      cpu::AttentionArgs a;
      a.q = q.data();
      a.q_stride = stride;
      a.k = c.k.data();
      a.v = c.v.data();
      a.kv_head_stride = head_elems;
      a.out = want.data();
      a.out_stride = stride;
      a.n_new = s.n_new;
      a.n_past = s.n_past;
      a.n_head = s.n_head;
      a.head_dim = s.head_dim;
      a.n_kv_head = s.n_kv_head;
      cpu::ref::attention(a);

      // The cache as the GPU stores it, and that cache with each KV head repeated group times.
      const std::size_t elem = dtype_size(kv);
      const std::vector<uint8_t>& kb = c.k_bytes;
      const std::vector<uint8_t>& vb = c.v_bytes;
      const std::size_t head_bytes = static_cast<std::size_t>(head_elems) * elem;
      std::vector<uint8_t> kb_rep(static_cast<std::size_t>(s.n_head) * head_bytes);
      std::vector<uint8_t> vb_rep(kb_rep.size());
      for (int64_t h = 0; h < s.n_head; ++h) {
        const std::size_t from = static_cast<std::size_t>(h / group) * head_bytes;
        const std::size_t to = static_cast<std::size_t>(h) * head_bytes;
        std::memcpy(kb_rep.data() + to, kb.data() + from, head_bytes);
        std::memcpy(vb_rep.data() + to, vb.data() + from, head_bytes);
      }

      const DeviceBuffer dq = upload(q);
      const DeviceBuffer dk = upload(kb), dv = upload(vb);
      const DeviceBuffer dk_rep = upload(kb_rep), dv_rep = upload(vb_rep);
      DeviceBuffer dout(q.size() * 4), dout_rep(q.size() * 4);
      kc::AttentionArgs g;
      g.q = dq.as<float>();
      g.q_stride = stride;
      g.k = dk.data();
      g.v = dv.data();
      g.kv_dtype = kv;
      g.kv_head_stride = head_elems;
      g.out = dout.as<float>();
      g.out_stride = stride;
      g.n_new = s.n_new;
      g.n_past = s.n_past;
      g.n_head = s.n_head;
      g.head_dim = s.head_dim;
      g.n_kv_head = s.n_kv_head;
      FERRY_CUDA_LAUNCH(kc::attention(g, stream().get()));
      kc::AttentionArgs r = g;
      r.k = dk_rep.data();
      r.v = dv_rep.data();
      r.out = dout_rep.as<float>();
      r.n_kv_head = 0;
      FERRY_CUDA_LAUNCH(kc::attention(r, stream().get()));

      const auto got = download<float>(dout, q.size());
      const double atol = 8.0 * static_cast<double>(s.head_dim + s.n_past + s.n_new) * kU;
      expect_close(got, want, atol, 16 * kU, std::string(dtype_name(kv)) + " " + name);
      expect_close(got, download<float>(dout_rep, q.size()), 0, 0,
                   std::string(dtype_name(kv)) + " repeated heads " + name);
    }
  }
  // Query heads that cannot share the KV heads evenly: refused, not launched.
  kc::AttentionArgs uneven;
  uneven.n_new = 1;
  uneven.n_head = 6;
  uneven.n_kv_head = 4;
  uneven.head_dim = 64;
  EXPECT_EQ(kc::attention(uneven, stream().get()), cudaErrorInvalidValue);
}

TEST_F(CudaKernels, LinearMatchesCpuForEveryWeightType) {
  std::mt19937 rng(7);
  ferry::cuda::CublasHandle cublas(stream(), 32u << 20);
  struct Shape {
    int64_t m, k, n;
  };
  for (const Shape s : {Shape{1, 1, 1}, Shape{1, 33, 50}, Shape{3, 256, 17}, Shape{17, 1000, 129},
                        Shape{1, 4096, 300}}) {
    const auto x = random_floats(rng, static_cast<std::size_t>(s.m * s.k));
    for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
      const auto w = random_weights(rng, dt, static_cast<std::size_t>(s.n * s.k));
      // The GPU multiplies x rounded to the weights' type: so does the reference here.
      std::vector<float> xr = x;
      std::vector<uint16_t> xh(x.size());
      for (std::size_t i = 0; i < x.size() && dt != DType::f32; ++i) {
        xh[i] = dt == DType::f16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
        xr[i] = dt == DType::f16 ? f16_to_f32(xh[i]) : bf16_to_f32(xh[i]);
      }
      std::vector<float> want(static_cast<std::size_t>(s.m * s.n));
      cpu::ref::linear(xr.data(), s.m, s.k, w.data(), dt, s.n, nullptr, want.data());
      const DeviceBuffer dx = dt == DType::f32 ? upload(x) : upload(xh);
      const DeviceBuffer dw = dt == DType::f32 ? upload(w.values) : upload(w.bits);
      DeviceBuffer dy(want.size() * 4);
      FERRY_CUBLAS_TRY(
          kc::linear(cublas.get(), dx.data(), s.m, s.k, dw.data(), dt, s.n, dy.as<float>()));
      // Same products (exact in f32 for 16-bit inputs), summed in another order (cuBLAS
      // blocks the sum): rounding errors of random sign grow like sqrt(k)·u·Σ|x·w|; 4× that.
      const auto got = download<float>(dy, want.size());
      for (int64_t i = 0; i < s.m; ++i)
        for (int64_t o = 0; o < s.n; ++o) {
          double mag = 0;
          for (int64_t j = 0; j < s.k; ++j)
            mag += std::fabs(static_cast<double>(xr[static_cast<std::size_t>(i * s.k + j)]) *
                             w.values[static_cast<std::size_t>(o * s.k + j)]);
          const double tol = 4.0 * std::sqrt(static_cast<double>(s.k)) * kU * mag + 1e-30;
          const auto at = static_cast<std::size_t>(i * s.n + o);
          ASSERT_LE(std::fabs(static_cast<double>(got[at]) - want[at]), tol)
              << cpu::test::shape_name(dt, s.m, s.k, s.n) << " at " << i << "," << o;
        }
    }
  }
}

// Every weight the same f16 the host's reading of the shared math rounds to, for rows starting
// anywhere (the chunks of the lm_head) and row widths that leave a q4 group part-filled.
TEST_F(CudaKernels, DequantizeRowsIsTheSharedMathRoundedToF16) {
  std::mt19937 rng(11);
  for (DType t : {DType::q8, DType::q4_g64, DType::q4_g128}) {
    for (const int64_t k :
         {int64_t{64}, int64_t{200}, int64_t{1000}, int64_t{130}, int64_t{1001}}) {
      const int64_t n = 13;
      const auto w =
          cpu::test::pack(random_floats(rng, static_cast<std::size_t>(n * k)), n, k, t).bytes;
      const DeviceBuffer dw = upload(w);
      const int64_t row0 = 3, rows = 9;
      DeviceBuffer out(static_cast<std::size_t>(rows * k) * 2);
      FERRY_CUDA_LAUNCH(
          kc::dequantize_rows(dw.data(), t, k, row0, rows, out.as<uint16_t>(), stream().get()));
      const auto got = download<uint16_t>(out, static_cast<std::size_t>(rows * k));
      const auto row_bytes = packed_row_bytes(t, k);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < k; ++j) {
          const float want = packed_row_weight(w.data() + (row0 + r) * row_bytes, t, k, j);
          ASSERT_EQ(got[static_cast<std::size_t>(r * k + j)], f32_to_f16(want))
              << dtype_name(t) << " k=" << k << " row " << row0 + r << " col " << j;
        }
    }
  }
  EXPECT_EQ(kc::dequantize_rows(nullptr, DType::f16, 8, 0, 1, nullptr, stream().get()),
            cudaErrorInvalidValue);
}

// Packed products against the CPU's (which dequantizes through the same functions, so each weight
// is the same f32), both ways for every shape: fused (m ≤ kPackedGemvLimit: the 8-row kernel with
// 1, 2 and 4 warps a row; k = 130 and 1001 read x one column at a time, the others 4 at a time),
// where only the order of the f32 sums differs (bounded as for f32 products, 4·sqrt(k)·u·Σ|x·w|);
// and dequantized to f16 in chunks for cuBLAS, where x and w are each rounded to f16 once more
// (2·2^-11·Σ|x·w|, plus the sums). The chunk size here is 5 rows, so n = 37 takes 8 chunks, the
// last part-filled.
TEST_F(CudaKernels, PackedProductsMatchCpuFusedAndThroughCublas) {
  std::mt19937 rng(12);
  ferry::cuda::CublasHandle cublas(stream(), 32u << 20);
  struct Shape {
    int64_t m, k, n;
  };
  for (DType t : {DType::q8, DType::q4_g64, DType::q4_g128}) {
    for (const Shape s : {Shape{1, 64, 1}, Shape{1, 200, 37}, Shape{3, 1000, 37}, Shape{8, 256, 64},
                          Shape{9, 200, 37}, Shape{17, 1000, 37}, Shape{32, 130, 9},
                          Shape{40, 64, 5}, Shape{2, 130, 37}, Shape{5, 1001, 9}}) {
      const auto w =
          cpu::test::pack(random_floats(rng, static_cast<std::size_t>(s.n * s.k)), s.n, s.k, t)
              .bytes;
      const auto x = random_floats(rng, static_cast<std::size_t>(s.m * s.k));
      std::vector<float> want(static_cast<std::size_t>(s.m * s.n));
      cpu::ref::linear(x.data(), s.m, s.k, w.data(), t, s.n, nullptr, want.data());
      const DeviceBuffer dw = upload(w);
      const DeviceBuffer dx = upload(x);
      const auto row_bytes = packed_row_bytes(t, s.k);
      // Fused with 1, 2 and 4 warps a row (up to kPackedGemvLimit rows of x), then cuBLAS.
      for (const int way : {1, 2, 4, 0}) {
        const bool fused = way != 0;
        if (fused && s.m > kc::kPackedGemvLimit) continue;
        DeviceBuffer dy(want.size() * 4);
        if (fused) {
          FERRY_CUDA_LAUNCH(kc::packed_gemv(dw.data(), t, s.n, s.k, dx.as<float>(), s.m,
                                            dy.as<float>(), s.n, stream().get(), way));
        } else {
          std::vector<uint16_t> xh(x.size());
          for (std::size_t i = 0; i < x.size(); ++i) xh[i] = f32_to_f16(x[i]);
          const DeviceBuffer dxh = upload(xh);
          const int64_t chunk = 5;
          DeviceBuffer deq(static_cast<std::size_t>(chunk * s.k) * 2);
          for (int64_t r0 = 0; r0 < s.n; r0 += chunk) {
            const int64_t nr = std::min(chunk, s.n - r0);
            FERRY_CUDA_LAUNCH(
                kc::dequantize_rows(dw.data(), t, s.k, r0, nr, deq.as<uint16_t>(), stream().get()));
            FERRY_CUBLAS_TRY(kc::linear(cublas.get(), dxh.data(), s.m, s.k, deq.data(), DType::f16,
                                        nr, dy.as<float>() + r0, s.n));
          }
        }
        const auto got = download<float>(dy, want.size());
        for (int64_t i = 0; i < s.m; ++i)
          for (int64_t o = 0; o < s.n; ++o) {
            double mag = 0;
            for (int64_t j = 0; j < s.k; ++j)
              mag += std::fabs(static_cast<double>(x[static_cast<std::size_t>(i * s.k + j)]) *
                               packed_row_weight(w.data() + o * row_bytes, t, s.k, j));
            const double sums = 4.0 * std::sqrt(static_cast<double>(s.k)) * kU * mag;
            const double tol = fused ? sums + 1e-30 : sums + 2.0 * 4.8828125e-4 * mag;
            const auto at = static_cast<std::size_t>(i * s.n + o);
            ASSERT_LE(std::fabs(static_cast<double>(got[at]) - want[at]), tol)
                << cpu::test::shape_name(t, s.m, s.k, s.n)
                << (fused ? fmt::format(" fused, {} warps a row", way) : std::string(" cuBLAS"))
                << " at " << i << "," << o;
          }
      }
    }
  }
  EXPECT_EQ(kc::packed_gemv(nullptr, DType::q8, 4, 4, nullptr, kc::kPackedGemvLimit + 1, nullptr, 4,
                            stream().get()),
            cudaErrorInvalidValue);
  EXPECT_EQ(kc::packed_gemv(nullptr, DType::q8, 4, 4, nullptr, 1, nullptr, 4, stream().get(), 3),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace ferry::kernels
