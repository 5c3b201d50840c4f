// The float-weight products for many rows (kernels/cpu/gemm_avx2.cpp, gemm_avx512.cpp), each
// path called directly on the processors that have it: against the reference over odd shapes
// (k off the 8- and 256-column grids, n off the register tile and the panel, m off the tile), and
// bit for bit against the decode's mat-vec, row by row — the batch invariance speculative
// decoding and continuous batching rely on, across every path the dispatch may pick.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/detail/paths.hpp"
#include "kernels/cpu/ops.hpp"
#include "tests/kernels/cpu/kernel_test_util.hpp"

namespace ferry::kernels::cpu {
namespace {

using test::kUnitRoundoff;
using test::random_floats;
using test::random_weights;
using test::shape_name;
using test::Weights;

using RowsFn = void (*)(const float*, int64_t, int64_t, const void*, DType, int64_t, const float*,
                        float*, int64_t, int64_t);

struct Path {
  std::string name;
  RowsFn rows;
};

// The many-row float products this processor can run.
std::vector<Path> gemm_paths() {
  std::vector<Path> paths;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    paths.push_back({"avx2", detail::avx2::gemm_float});
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    paths.push_back({"avx512", detail::avx512::gemm_float});
  }
#endif
  return paths;
}

// The decode's mat-vec on the AVX2 path (what linear runs for m = 1 there).
bool has_avx2() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// Outputs o_begin … o_end − 1 (o_begin a multiple of 16, as ops.cpp splits them), the rest
// left NaN so a write outside the slice shows.
std::vector<float> run_slice(RowsFn rows, const std::vector<float>& x, int64_t m, int64_t k,
                             const Weights& w, int64_t n, const float* bias, int64_t o_begin,
                             int64_t o_end) {
  std::vector<float> y(static_cast<std::size_t>(m * n), NAN);
  rows(x.data(), m, k, w.data(), w.dtype, n, bias, y.data(), o_begin, o_end);
  return y;
}

// |y − exact| ≤ (k + 3)·u·Σ|x·w| + |bias| for any summation order (see test_linear.cpp), doubled
// against the reference, which has its own rounding.
::testing::AssertionResult near_reference(const std::vector<float>& y,
                                          const std::vector<float>& want,
                                          const std::vector<float>& x, const Weights& w,
                                          const float* bias, int64_t m, int64_t k, int64_t n,
                                          int64_t o_begin, int64_t o_end) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t o = 0; o < n; ++o) {
      const auto at = static_cast<std::size_t>(i * n + o);
      if (o < o_begin || o >= o_end) {
        if (!std::isnan(y[at])) {
          return ::testing::AssertionFailure() << "output " << i << "," << o << " outside the slice";
        }
        continue;
      }
      double scale = bias != nullptr ? std::fabs(bias[o]) : 0.0;
      for (int64_t j = 0; j < k; ++j) {
        scale += std::fabs(static_cast<double>(x[static_cast<std::size_t>(i * k + j)]) *
                           w.values[static_cast<std::size_t>(o * k + j)]);
      }
      const double tol = 2.0 * static_cast<double>(k + 3) * kUnitRoundoff * 1.01 * scale;
      const double diff = std::fabs(static_cast<double>(y[at]) - want[at]);
      if (!(diff <= tol)) {
        return ::testing::AssertionFailure() << "output " << i << "," << o << " is " << y[at]
                                             << ", reference " << want[at] << " (|diff| " << diff
                                             << " > " << tol << ")";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(GemmTest, EveryPathMatchesTheReferenceOnOddShapes) {
  const auto paths = gemm_paths();
  if (paths.empty()) GTEST_SKIP() << "no AVX2 on this processor";
  std::mt19937 rng(2026);
  int combo = 0;
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (int64_t m : {2, 3, 4, 5, 6, 7, 11, 13, 17, 20, 64, 100}) {
      for (int64_t k : {1, 7, 9, 255, 257, 520, 700, 1029}) {
        for (int64_t n : {3, 21, 67, 150}) {
          SCOPED_TRACE(shape_name(dt, m, k, n));
          const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
          const Weights w =
              random_weights(rng, dt, static_cast<std::size_t>(n * k), dt == DType::f16 ? 7 : 0);
          const auto bias_values = random_floats(rng, static_cast<std::size_t>(n));
          const float* bias = (combo++ % 2 == 0) ? bias_values.data() : nullptr;
          std::vector<float> want(static_cast<std::size_t>(m * n));
          ref::linear(x.data(), m, k, w.data(), dt, n, bias, want.data());
          // The whole product, and a slice starting past the first group of 16 outputs.
          const int64_t o_begin = n > 16 ? 16 : 0;
          for (const Path& p : paths) {
            SCOPED_TRACE(p.name);
            ASSERT_TRUE(near_reference(run_slice(p.rows, x, m, k, w, n, bias, 0, n), want, x, w,
                                       bias, m, k, n, 0, n));
            ASSERT_TRUE(near_reference(run_slice(p.rows, x, m, k, w, n, bias, o_begin, n), want,
                                       x, w, bias, m, k, n, o_begin, n));
          }
        }
      }
    }
  }
}

// Every row of every path's product has the bits the decode's mat-vec gives that row alone, so
// a sequence's tokens never depend on the batch, the prompt around it, or which path ran.
TEST(GemmTest, EveryPathGivesEachRowTheDecodesBits) {
  const auto paths = gemm_paths();
  if (paths.empty() || !has_avx2()) GTEST_SKIP() << "no AVX2 on this processor";
  std::mt19937 rng(17);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (int64_t m : {2, 5, 17, 64}) {
      for (int64_t k : {5, 8, 255, 256, 257, 700, 4099}) {
        const int64_t n = 37;
        SCOPED_TRACE(shape_name(dt, m, k, n));
        const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
        const Weights w = random_weights(rng, dt, static_cast<std::size_t>(n * k), 0);
        const auto bias = random_floats(rng, static_cast<std::size_t>(n));
        for (const Path& p : paths) {
          const auto together = run_slice(p.rows, x, m, k, w, n, bias.data(), 0, n);
          for (int64_t i = 0; i < m; ++i) {
            std::vector<float> alone(static_cast<std::size_t>(n), NAN);
            detail::avx2::linear_rows(x.data() + i * k, 1, k, w.data(), dt, n, bias.data(),
                                      alone.data(), 0, n);
            ASSERT_EQ(std::memcmp(alone.data(), together.data() + i * n,
                                  static_cast<std::size_t>(n) * sizeof(float)),
                      0)
                << p.name << " row " << i;
          }
        }
      }
    }
  }
}

// The dispatched product (whichever path runs here, threads splitting the outputs) against the
// decode, for the m that cross from batched decoding to prompts.
TEST(GemmTest, DispatchedRowsGetTheSameBitsAloneOrInAPrompt) {
  ThreadPool pool(2);
  std::mt19937 rng(5);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (int64_t m : {16, 17, 100}) {
      const int64_t k = 777;
      const int64_t n = 300;
      SCOPED_TRACE(shape_name(dt, m, k, n));
      const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
      const Weights w = random_weights(rng, dt, static_cast<std::size_t>(n * k), 0);
      std::vector<float> together(static_cast<std::size_t>(m * n));
      linear(x.data(), m, k, w.data(), dt, n, nullptr, together.data(), pool);
      for (int64_t i = 0; i < m; ++i) {
        std::vector<float> alone(static_cast<std::size_t>(n));
        linear(x.data() + i * k, 1, k, w.data(), dt, n, nullptr, alone.data(), pool);
        ASSERT_EQ(std::memcmp(alone.data(), together.data() + i * n,
                              static_cast<std::size_t>(n) * sizeof(float)),
                  0)
            << "row " << i;
      }
    }
  }
}

}  // namespace
}  // namespace ferry::kernels::cpu
