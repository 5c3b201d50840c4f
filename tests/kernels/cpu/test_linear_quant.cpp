// Packed (quantized) weights: quantize_row's codes and bounds, and linear on q8 / q4 weights —
// dispatched and portable against the reference and against exact products of the dequantized
// values, on awkward shapes (partial groups, k not a multiple of 8 or of the 256-wide block).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/common/quant_math.hpp"
#include "kernels/cpu/detail/paths.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/packed.hpp"
#include "kernels/cpu/quant.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"
#include "tests/kernels/cpu/kernel_test_util.hpp"

namespace ferry::kernels::cpu {
namespace {

using test::kUnitRoundoff;
using test::pack;
using test::Packed;
using test::random_floats;
using test::shape_name;

constexpr DType kPacked[] = {DType::q8, DType::q4_g64, DType::q4_g128};

// Against exact double products of the dequantized values: the f32 dot product's rounding,
// (k + 3)·u·S as in test_linear.cpp, plus one rounding of each dequantized weight (the fast paths
// form min + scale·q with an FMA, the reference with a product and a sum): 2u·S more. S is
// Σ|x·w| for every path but the fast q4 decode, which sums scale·Σx·q and min·Σx per group: its S
// is Σ|x|·(|scale·q| + |min|), larger where min and scale·q cancel.
::testing::AssertionResult close(const char* what, const std::vector<float>& y,
                                 const std::vector<double>& want, const std::vector<double>& scale,
                                 int64_t k, double factor) {
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double tol = factor * static_cast<double>(k + 5) * kUnitRoundoff * 1.01 * scale[i];
    const double diff = std::fabs(static_cast<double>(y[i]) - want[i]);
    if (!(diff <= tol)) {
      return ::testing::AssertionFailure() << what << ": output " << i << " is " << y[i]
                                           << ", want " << want[i] << " (tol " << tol << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// The fast decode's arithmetic (kernels/cpu/linear_avx2.cpp, m = 1), in double. q4: each whole
// group of x rounded to int8 exactly as the kernel rounds it (dx = max|x|/127 and xq =
// round-half-even(x·(127/max|x|)), both in f32), Σ q·xq exact, scale·dx rounded to f32 as the
// kernel forms it, the minima against exact group sums. q8: each whole 64-column block of x
// rounded to int16 the same way (32767 steps), Σ q·xq exact, the row's scale applied last. Columns
// past the whole groups or blocks in f32. `magnitude` bounds the f32 sums' rounding; `act_bound`
// bounds how far x's rounding moves the result from the exact product (|x − dx·xq| ≤ dx/2, plus a
// few ulps of x).
struct Emulated {
  double value = 0;
  double magnitude = 0;
  double act_bound = 0;
  // One step of one rounded activation: a value of x·(steps/max|x|) within an ulp of a half
  // can round either way between this emulation and the kernel's vector conversion (seen once
  // in ~3000 q8 rows).
  double one_step = 0;
};
Emulated packed_decode(const float* x, int64_t k, const unsigned char* row, DType dt) {
  const bool q8 = dt == DType::q8;
  const int64_t group = q8 ? 64 : dt == DType::q4_g64 ? 64 : 128;
  const float steps = q8 ? 32767.0f : 127.0f;
  const int64_t ng = quant_groups(dt, k);
  const int64_t full = k / group;
  const float row_scale = q8 ? q8_row_scale(row) : 1.0f;
  Emulated e;
  for (int64_t g = 0; g < full; ++g) {
    const float* xg = x + g * group;
    float amax = 0;
    for (int64_t j = 0; j < group; ++j) amax = std::max(amax, std::fabs(xg[j]));
    const float dx = amax / steps;
    const float inv = amax > 0 ? steps / amax : 0.0f;
    const Q4Group q = q8 ? Q4Group{row_scale, 0.0f, nullptr} : q4_group(row, ng, group, g);
    int64_t dot = 0;
    double sum_x = 0;
    double sum_abs_x = 0;
    double act = 0;
    for (int64_t j = 0; j < group; ++j) {
      const float v = xg[j] * inv;
      const auto xq = static_cast<int64_t>(std::clamp(std::nearbyint(v), -steps, steps));
      const int64_t code =
          q8 ? q8_row_values(row)[g * group + j] : static_cast<int64_t>(q4_code(q.bytes, j, group));
      dot += code * xq;
      sum_x += xg[j];
      sum_abs_x += std::fabs(xg[j]);
      act += static_cast<double>(std::abs(code)) *
             (0.5 * 1.001 * dx + 4.0 * kUnitRoundoff * std::fabs(xg[j]));
    }
    // q4: scale·dx rounded to f32 by the kernel; q8: dx alone, the row's scale applied last.
    const double sc = q8 ? static_cast<double>(row_scale) * dx : static_cast<double>(q.scale * dx);
    e.value += sc * static_cast<double>(dot) + q.min * sum_x;
    e.magnitude += std::fabs(sc * static_cast<double>(dot)) + std::fabs(q.min) * sum_abs_x;
    e.act_bound += std::fabs(q.scale) * act;
    for (int64_t j = 0; j < group; ++j) {
      const int64_t code =
          q8 ? q8_row_values(row)[g * group + j] : static_cast<int64_t>(q4_code(q.bytes, j, group));
      e.one_step = std::max(e.one_step, std::fabs(sc) * static_cast<double>(std::abs(code)));
    }
  }
  for (int64_t j = full * group; j < k; ++j) {
    const double p = static_cast<double>(x[j]) * packed_row_weight(row, dt, k, j);
    e.value += p;
    e.magnitude += std::fabs(p);
  }
  return e;
}

TEST(QuantLinearTest, FastAndScalarMatchReferenceAndExact) {
  ThreadPool pool(2);
  std::mt19937 rng(77);
  int combo = 0;
  for (DType dt : kPacked) {
    for (int64_t m : {1, 2, 3, 5}) {
      for (int64_t k : {1, 7, 17, 63, 64, 65, 130, 256, 300, 513}) {
        for (int64_t n : {1, 3, 17, 33}) {
          SCOPED_TRACE(shape_name(dt, m, k, n));
          const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
          const auto w = random_floats(rng, static_cast<std::size_t>(n * k), -0.7f, 1.3f);
          const Packed p = pack(w, n, k, dt);
          const auto bias_values = random_floats(rng, static_cast<std::size_t>(n));
          const float* bias = (combo++ % 2 == 0) ? bias_values.data() : nullptr;
          const auto out = static_cast<std::size_t>(m * n);
          std::vector<double> exact(out);
          std::vector<double> scale(out);
          std::vector<double> scale_factored(out);
          const uint64_t row_bytes = packed_row_bytes(dt, k);
          const int64_t group = dt == DType::q4_g64 ? 64 : dt == DType::q4_g128 ? 128 : 0;
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t o = 0; o < n; ++o) {
              double s = bias ? bias[o] : 0.0;
              double a = bias ? std::fabs(bias[o]) : 0.0;
              double af = a;
              for (int64_t j = 0; j < k; ++j) {
                const double xj = x[static_cast<std::size_t>(i * k + j)];
                const double wj = p.values[static_cast<std::size_t>(o * k + j)];
                s += xj * wj;
                a += std::fabs(xj * wj);
                double min = 0;
                if (group > 0) {
                  min = q4_group(p.bytes.data() + static_cast<uint64_t>(o) * row_bytes,
                                 quant_groups(dt, k), group, j / group)
                            .min;
                }
                af += std::fabs(xj) * (std::fabs(wj - min) + std::fabs(min));
              }
              exact[static_cast<std::size_t>(i * n + o)] = s;
              scale[static_cast<std::size_t>(i * n + o)] = a;
              scale_factored[static_cast<std::size_t>(i * n + o)] = af;
            }
          }
          std::vector<float> y_ref(out, NAN);
          std::vector<float> y_fast(out, NAN);
          std::vector<float> y_scalar(out, NAN);
          ref::linear(x.data(), m, k, p.bytes.data(), dt, n, bias, y_ref.data());
          linear(x.data(), m, k, p.bytes.data(), dt, n, bias, y_fast.data(), pool);
          scalar::linear(x.data(), m, k, p.bytes.data(), dt, n, bias, y_scalar.data(), pool);
          ASSERT_TRUE(close("ref vs exact", y_ref, exact, scale, k, 1.0));
          ASSERT_TRUE(close("scalar vs exact", y_scalar, exact, scale, k, 1.0));
          // Every row, alone or among others, takes the decode's integer paths: against their
          // own arithmetic in double (only the f32 sums' rounding apart), against the exact
          // product within x's rounding, and bit for bit what the row gives alone.
          for (int64_t i = 0; i < m; ++i) {
            std::vector<float> alone(static_cast<std::size_t>(n), NAN);
            linear(x.data() + i * k, 1, k, p.bytes.data(), dt, n, bias, alone.data(), pool);
            for (int64_t o = 0; o < n; ++o) {
              const auto at = static_cast<std::size_t>(i * n + o);
              const Emulated e = packed_decode(
                  x.data() + i * k, k, p.bytes.data() + static_cast<uint64_t>(o) * row_bytes, dt);
              const double b = bias ? bias[o] : 0.0;
              const double got = y_fast[at];
              ASSERT_EQ(std::memcmp(&y_fast[at], &alone[static_cast<std::size_t>(o)], 4), 0)
                  << "row " << i << " output " << o << ": " << y_fast[at] << " among " << m
                  << " rows, " << alone[static_cast<std::size_t>(o)] << " alone";
              ASSERT_LE(
                  std::fabs(got - (e.value + b)),
                  static_cast<double>(k + 16) * kUnitRoundoff * 1.01 * (e.magnitude + std::fabs(b)) +
                      e.one_step)
                  << "fast vs its arithmetic, row " << i << " output " << o;
              ASSERT_LE(std::fabs(got - exact[at]),
                        static_cast<double>(k + 16) * kUnitRoundoff * 1.01 *
                                (scale_factored[at] + e.magnitude) +
                            e.act_bound)
                  << "fast vs exact, row " << i << " output " << o;
            }
          }
        }
      }
    }
  }
}

// Decode-sized rows (GPT-J's k) through many groups and blocks, and a row past 65536 columns
// (more than 1024 groups at g64); thread count changes no bit.
TEST(QuantLinearTest, LongRowsAndThreadCounts) {
  ThreadPool one(1);
  ThreadPool three(3);
  std::mt19937 rng(5);
  for (DType dt : kPacked) {
    for (auto [m, k] :
         {std::pair<int64_t, int64_t>{1, 4096 + 64}, {4, 4096 + 64}, {1, 1025 * 64 + 3}}) {
      const int64_t n = 37;
      SCOPED_TRACE(shape_name(dt, m, k, n));
      const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
      const auto w = random_floats(rng, static_cast<std::size_t>(n * k), -0.05f, 0.05f);
      const Packed p = pack(w, n, k, dt);
      std::vector<float> a(static_cast<std::size_t>(m * n));
      std::vector<float> b(a.size());
      std::vector<float> r(a.size());
      linear(x.data(), m, k, p.bytes.data(), dt, n, nullptr, a.data(), one);
      linear(x.data(), m, k, p.bytes.data(), dt, n, nullptr, b.data(), three);
      ref::linear(x.data(), m, k, p.bytes.data(), dt, n, nullptr, r.data());
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
      for (std::size_t i = 0; i < a.size(); ++i) {
        // Every row of x is rounded to int8 (q4) or int16 (q8) per group.
        const auto row = static_cast<int64_t>(i) / n;
        const auto o = static_cast<int64_t>(i) % n;
        const double act = packed_decode(x.data() + row * k, k,
                                         p.bytes.data() + static_cast<uint64_t>(o) *
                                                              packed_row_bytes(dt, k),
                                         dt)
                               .act_bound;
        EXPECT_NEAR(a[i], r[i], 1e-4 + act) << i;
      }
    }
  }
}

// Every packed-weight implementation this processor can run (the AVX2 kernels, the AVX-512
// ones with VNNI and without), called directly: against the kernels' own arithmetic and the
// reference on odd shapes (k short of or past a group, odd n), for every m from 1 to 20 and 64
// to 70 (past the rows the AVX-512 kernels round at once); a row's bits are the same whatever m
// (alone or among others) and however the outputs are split among threads (slices of 16 rows,
// as ops.cpp splits them); and the AVX-512 builds with and without VNNI agree bit for bit.
using RowsFn = void (*)(const float*, int64_t, int64_t, const void*, DType, int64_t, const float*,
                        float*, int64_t, int64_t);
struct PackedPath {
  const char* name;
  RowsFn rows;
};

std::vector<PackedPath> packed_paths() {
  std::vector<PackedPath> paths;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (std::string(simd_level()) != "avx2") return paths;
  paths.push_back({"avx2", detail::avx2::packed_avx2_rows});
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    paths.push_back({"avx512", detail::avx512::packed_linear_rows});
    if (__builtin_cpu_supports("avx512vnni"))
      paths.push_back({"avx512-vnni", detail::avx512::packed_linear_rows_vnni});
  }
#endif
  return paths;
}

// y = x · wᵀ + bias through one implementation, its output rows in slices of 16 (ops.cpp's).
std::vector<float> run_path(const PackedPath& path, const float* x, int64_t m, int64_t k,
                            const Packed& p, DType dt, int64_t n, const float* bias) {
  std::vector<float> y(static_cast<std::size_t>(m * n), NAN);
  for (int64_t o = 0; o < n; o += 16)
    path.rows(x, m, k, p.bytes.data(), dt, n, bias, y.data(), o, std::min<int64_t>(n, o + 16));
  return y;
}

// linear_level names the kernel each weight dtype is multiplied by: the key the planner's learned
// CPU rates are kept under (a rate learned on one kernel must not plan for another).
TEST(QuantLinearTest, LinearLevelNamesTheKernelOfEachDtype) {
  EXPECT_EQ(linear_level(DType::f16), std::string(float_linear_level()));
  EXPECT_EQ(linear_level(DType::bf16), std::string(float_linear_level()));
  EXPECT_EQ(linear_level(DType::q8), std::string(packed_linear_level()));
  EXPECT_EQ(linear_level(DType::q4_g64), std::string(packed_linear_level()));
  const std::string k4 = linear_level(DType::q4_k);
  EXPECT_TRUE(k4.rfind("ggml-q8 ", 0) == 0 || k4.rfind("exact ", 0) == 0) << k4;
  // q5_1 has no q8-activation kernel: always the exact products.
  EXPECT_EQ(linear_level(DType::q5_1).rfind("exact ", 0), 0u) << linear_level(DType::q5_1);
  EXPECT_NE(linear_level(DType::q4_k), linear_level(DType::q4_g64));
}

TEST(QuantLinearTest, EveryPathMatchesItsArithmeticAndGivesARowTheSameBitsAtEveryM) {
  const auto paths = packed_paths();
  if (paths.empty()) GTEST_SKIP() << "no SIMD packed kernels on this processor";
  std::printf("[packed] paths tested:");
  for (const auto& path : paths) std::printf(" %s", path.name);
  std::printf(" (dispatched: %s)\n", std::string(packed_linear_level()).c_str());
  std::mt19937 rng(23);
  std::vector<int64_t> ms;
  for (int64_t m = 1; m <= 20; ++m) ms.push_back(m);
  ms.push_back(64);
  ms.push_back(70);
  constexpr int64_t kMaxM = 70;
  for (DType dt : kPacked) {
    for (int64_t k : {1, 63, 64, 65, 127, 128, 129, 192, 200, 513, 1000, 2048 + 64 + 5}) {
      for (int64_t n : {1, 5, 19, 33}) {
        SCOPED_TRACE(shape_name(dt, kMaxM, k, n));
        const auto x = random_floats(rng, static_cast<std::size_t>(kMaxM * k));
        const Packed p =
            pack(random_floats(rng, static_cast<std::size_t>(n * k), -0.7f, 1.3f), n, k, dt);
        const auto bias_values = random_floats(rng, static_cast<std::size_t>(n));
        const float* bias = n % 2 == 1 ? bias_values.data() : nullptr;
        const uint64_t row_bytes = packed_row_bytes(dt, k);
        std::vector<float> y_ref(static_cast<std::size_t>(kMaxM * n));
        ref::linear(x.data(), kMaxM, k, p.bytes.data(), dt, n, bias, y_ref.data());
        std::vector<float> first_path_alone;
        for (const auto& path : paths) {
          SCOPED_TRACE(path.name);
          // Each row alone, against the decode's arithmetic and the reference.
          std::vector<float> alone(static_cast<std::size_t>(kMaxM * n));
          for (int64_t i = 0; i < kMaxM; ++i) {
            const auto y = run_path(path, x.data() + i * k, 1, k, p, dt, n, bias);
            std::copy(y.begin(), y.end(), alone.begin() + i * n);
            for (int64_t o = 0; o < n; ++o) {
              const Emulated e =
                  packed_decode(x.data() + i * k, k, p.bytes.data() + o * row_bytes, dt);
              const double b = bias ? bias[o] : 0.0;
              const double got = y[static_cast<std::size_t>(o)];
              ASSERT_LE(std::fabs(got - (e.value + b)), static_cast<double>(k + 16) *
                                                                kUnitRoundoff * 1.01 *
                                                                (e.magnitude + std::fabs(b)) +
                                                            e.one_step)
                  << "vs its arithmetic, row " << i << " output " << o;
              // Σ|x|·(|w − min| + |min|) bounds both f32 sums (see close()).
              double factored = std::fabs(b);
              const int64_t group = quant_group_size(dt);
              for (int64_t j = 0; j < k; ++j) {
                const double min = group == 0 ? 0.0
                                              : q4_group(p.bytes.data() + o * row_bytes,
                                                         quant_groups(dt, k), group, j / group)
                                                    .min;
                const double wj = p.values[static_cast<std::size_t>(o * k + j)];
                factored += std::fabs(x[static_cast<std::size_t>(i * k + j)]) *
                            (std::fabs(wj - min) + std::fabs(min));
              }
              const double want = y_ref[static_cast<std::size_t>(i * n + o)];
              ASSERT_LE(std::fabs(got - want), static_cast<double>(k + 16) * kUnitRoundoff * 1.01 *
                                                       (2.0 * factored + e.magnitude) +
                                                   e.act_bound + e.one_step)
                  << "vs the reference, row " << i << " output " << o;
            }
          }
          for (int64_t m : ms) {
            const auto y = run_path(path, x.data(), m, k, p, dt, n, bias);
            ASSERT_EQ(0, std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)))
                << m << " rows together differ from the rows alone";
          }
          // The AVX-512 builds with VNNI and without: the same integer sums, the same bits.
          if (std::string(path.name) == "avx512") first_path_alone = alone;
          if (std::string(path.name) == "avx512-vnni") {
            ASSERT_EQ(
                0, std::memcmp(first_path_alone.data(), alone.data(), alone.size() * sizeof(float)))
                << "VNNI and plain AVX-512 differ";
          }
        }
      }
    }
  }
}

// The squared error of one q4 group rounded the plain way: min/max range, f16 parameters.
double minmax_sq_error(const float* w, int64_t n) {
  float lo = w[0];
  float hi = w[0];
  for (int64_t j = 0; j < n; ++j) {
    lo = std::min(lo, w[j]);
    hi = std::max(hi, w[j]);
  }
  const float s = f16_to_f32(f32_to_f16((hi - lo) / 15.0f));
  const float m = f16_to_f32(f32_to_f16(lo));
  double e = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float q = s > 0 ? std::clamp(std::nearbyint((w[j] - m) / s), 0.0f, 15.0f) : 0.0f;
    const double d = static_cast<double>(m + s * q) - w[j];
    e += d * d;
  }
  return e;
}

// q8's codes are within half a step of the row's scale. q4's group parameters are fitted: never
// a larger squared error than rounding over the group's min/max range (one of the candidates),
// and no element off by more than one step of that range (outliers are clipped a little at most).
TEST(QuantizeRowTest, ErrorsAreBoundedAndNoWorseThanMinMax) {
  std::mt19937 rng(11);
  for (DType dt : kPacked) {
    for (int64_t k : {1, 5, 64, 100, 128, 1000}) {
      SCOPED_TRACE(shape_name(dt, 1, k, 1));
      const auto w = random_floats(rng, static_cast<std::size_t>(k), -2.0f, 3.0f);
      const Packed p = pack(w, 1, k, dt);
      const int64_t group = dt == DType::q8 ? k : quant_group_size(dt);
      for (int64_t g0 = 0; g0 < k; g0 += group) {
        const int64_t n = std::min(k, g0 + group) - g0;
        float lo = w[static_cast<std::size_t>(g0)];
        float hi = lo;
        float absmax = 0.0f;
        double sq_error = 0;
        for (int64_t j = g0; j < g0 + n; ++j) {
          const auto u = static_cast<std::size_t>(j);
          lo = std::min(lo, w[u]);
          hi = std::max(hi, w[u]);
          absmax = std::max(absmax, std::fabs(w[u]));
          sq_error += (static_cast<double>(p.values[u]) - w[u]) * (p.values[u] - w[u]);
        }
        const double step = dt == DType::q8 ? absmax / 127.0 : (hi - lo) / 15.0;
        const double slack = dt == DType::q8 ? 1e-6 : 2e-3 * (std::fabs(lo) + step);
        const double bound = dt == DType::q8 ? 0.5 * step * 1.002 : step * 1.002;
        for (int64_t j = g0; j < g0 + n; ++j) {
          const auto u = static_cast<std::size_t>(j);
          EXPECT_LE(std::fabs(p.values[u] - w[u]), bound + slack) << j;
        }
        if (dt != DType::q8) {
          EXPECT_LE(sq_error, minmax_sq_error(w.data() + g0, n) * (1 + 1e-12)) << g0;
        }
      }
    }
  }
}

// On normally distributed weights the fitted groups lower the squared error by several per cent
// against min/max rounding (about 10% for groups of 64); the logits of the packs follow (KL to
// the f32 model down 10–14% on the fixtures over 1500 positions, `ferry perplexity --reference`).
TEST(QuantizeRowTest, FittedGroupsBeatMinMaxOnGaussianWeights) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (DType dt : {DType::q4_g64, DType::q4_g128}) {
    const int64_t k = 4096;
    std::vector<float> w(static_cast<std::size_t>(64 * k));
    for (auto& v : w) v = normal(rng);
    const Packed p = pack(w, 64, k, dt);
    double fitted = 0;
    double minmax = 0;
    const int64_t group = quant_group_size(dt);
    for (std::size_t i = 0; i < w.size(); ++i)
      fitted += (static_cast<double>(p.values[i]) - w[i]) * (p.values[i] - w[i]);
    for (std::size_t g0 = 0; g0 < w.size(); g0 += static_cast<std::size_t>(group))
      minmax += minmax_sq_error(w.data() + g0, group);
    std::printf("[quant] %s on N(0, 0.02): squared error %.4f of min/max rounding's\n",
                std::string(dtype_name(dt)).c_str(), fitted / minmax);
    EXPECT_LT(fitted, 0.95 * minmax) << dtype_name(dt);
    EXPECT_GT(fitted, 0.7 * minmax) << dtype_name(dt);  // a fit this good would be a bug here
  }
}

TEST(QuantizeRowTest, ZerosAndConstantsAreExact) {
  for (DType dt : kPacked) {
    const std::vector<float> zeros(70, 0.0f);
    const Packed z = pack(zeros, 1, 70, dt);
    for (float v : z.values) EXPECT_EQ(v, 0.0f);
  }
  const std::vector<float> halves(70, 0.5f);  // exactly representable min, zero step
  const Packed h = pack(halves, 1, 70, DType::q4_g64);
  for (float v : h.values) EXPECT_EQ(v, 0.5f);
}

// The layout is the documented one: q8 scale then codes; q4 scales, minima, then nibbles with
// element i low and element G/2 + i high.
TEST(QuantizeRowTest, LayoutIsTheDocumentedOne) {
  std::vector<float> w(64);
  for (int j = 0; j < 64; ++j) w[static_cast<std::size_t>(j)] = static_cast<float>(j % 16);
  std::vector<unsigned char> row(packed_row_bytes(DType::q4_g64, 64));
  ASSERT_EQ(row.size(), 2u + 2u + 32u);
  quantize_row(w.data(), 64, DType::q4_g64, row.data(), "t");
  uint16_t scale;
  uint16_t min;
  std::memcpy(&scale, row.data(), 2);
  std::memcpy(&min, row.data() + 2, 2);
  EXPECT_EQ(f16_to_f32(scale), 1.0f);
  EXPECT_EQ(f16_to_f32(min), 0.0f);
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(row[4 + static_cast<std::size_t>(i)] & 0x0f, i % 16) << i;
    EXPECT_EQ(row[4 + static_cast<std::size_t>(i)] >> 4, (32 + i) % 16) << i;
  }
  std::vector<float> v = {-1.27f, 0.5f, 1.0f};
  std::vector<unsigned char> q8(packed_row_bytes(DType::q8, 3));
  ASSERT_EQ(q8.size(), 8u);
  quantize_row(v.data(), 3, DType::q8, q8.data(), "t");
  float s;
  std::memcpy(&s, q8.data(), 4);
  EXPECT_FLOAT_EQ(s, 0.01f);
  EXPECT_EQ(static_cast<int8_t>(q8[4]), -127);
  EXPECT_EQ(static_cast<int8_t>(q8[5]), 50);
  EXPECT_EQ(static_cast<int8_t>(q8[6]), 100);
  EXPECT_EQ(q8[7], 0);  // padding
}

TEST(QuantizeRowTest, RefusesWhatCannotBeQuantized) {
  std::vector<unsigned char> out(packed_row_bytes(DType::q4_g64, 4));
  std::vector<float> nan = {1.0f, NAN, 0.0f, 2.0f};
  try {
    quantize_row(nan.data(), 4, DType::q8, out.data(), "tensor 'x'");
    ADD_FAILURE() << "NaN accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'x': element 1"), std::string::npos) << e.what();
  }
  std::vector<float> huge = {1e6f, 0.0f, 0.0f, 0.0f};
  try {
    quantize_row(huge.data(), 4, DType::q4_g64, out.data(), "tensor 'y'");
    ADD_FAILURE() << "a value beyond f16 accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("--quant int8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(quantize_row(huge.data(), 4, DType::f16, out.data(), "z"), InvalidArgument);
}

TEST(QuantLinearTest, ConvertToF32ReadsOnePackedRow) {
  std::mt19937 rng(2);
  for (DType dt : kPacked) {
    const auto w = random_floats(rng, 200);
    const Packed p = pack(w, 1, 200, dt);
    std::vector<float> fast(200);
    convert_to_f32(p.bytes.data(), dt, 200, fast.data());
    EXPECT_EQ(fast, p.values);
  }
}

// The CUDA packed product's split of a row among its warps' lanes (packed_row_lane_sums, which
// the kernel calls with 32, 64 or 128 lanes), run here lane by lane: every column is counted
// exactly once, with its weight, for every m up to the kernel's 8 rows; so the lanes' sums added
// up are the product, within f32 summation order of the reference. Also with lane counts that
// take several words each (3) or leave lanes idle (256).
TEST(QuantLinearTest, GpuLaneSplitCoversEveryColumnOnce) {
  constexpr int M = 8;
  std::mt19937 rng(9);
  for (DType dt : kPacked) {
    for (const int64_t k : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{200}, int64_t{1000}}) {
      const int64_t n = 5;
      const Packed p = pack(random_floats(rng, static_cast<std::size_t>(n * k)), n, k, dt);
      const auto row_bytes = packed_row_bytes(dt, k);
      for (const int64_t m : {int64_t{1}, int64_t{3}, int64_t{8}}) {
        const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
        std::vector<float> want(static_cast<std::size_t>(m * n));
        ref::linear(x.data(), m, k, p.bytes.data(), dt, n, nullptr, want.data());
        for (const int lanes : {32, 64, 128, 256, 3}) {
          for (int64_t o = 0; o < n; ++o) {
            double sum[M] = {};
            double mag[M] = {};
            for (int lane = 0; lane < lanes; ++lane) {
              float acc[M] = {};
              packed_row_lane_sums(p.bytes.data() + o * row_bytes, dt, k, x.data(), m, lane, lanes,
                                   acc);
              for (int i = 0; i < M; ++i) sum[i] += acc[i];
            }
            for (int64_t i = 0; i < m; ++i)
              for (int64_t j = 0; j < k; ++j)
                mag[i] += std::fabs(static_cast<double>(x[static_cast<std::size_t>(i * k + j)]) *
                                    p.values[static_cast<std::size_t>(o * k + j)]);
            for (int64_t i = m; i < M; ++i) EXPECT_EQ(sum[i], 0.0) << "row beyond m";
            for (int64_t i = 0; i < m; ++i)
              ASSERT_NEAR(sum[i], want[static_cast<std::size_t>(i * n + o)],
                          2.0 * static_cast<double>(k) * kUnitRoundoff * mag[i] + 1e-30)
                  << shape_name(dt, m, k, n) << " lanes " << lanes << " row " << o;
          }
        }
      }
    }
  }
}

// The CUDA dequantization kernel's per-dtype element (packed_row_weight_t) is the shared one.
TEST(QuantLinearTest, TypedElementIsTheSharedElement) {
  std::mt19937 rng(10);
  for (DType dt : kPacked) {
    for (const int64_t k : {int64_t{1}, int64_t{63}, int64_t{64}, int64_t{200}, int64_t{1000}}) {
      const Packed p = pack(random_floats(rng, static_cast<std::size_t>(3 * k)), 3, k, dt);
      const auto row_bytes = packed_row_bytes(dt, k);
      const int64_t ng = quant_groups(dt, k);
      for (int64_t r = 0; r < 3; ++r) {
        const unsigned char* row = p.bytes.data() + r * row_bytes;
        for (int64_t j = 0; j < k; ++j) {
          const float want = packed_row_weight(row, dt, k, j);
          const float got = dt == DType::q8       ? packed_row_weight_t<DType::q8>(row, ng, j)
                            : dt == DType::q4_g64 ? packed_row_weight_t<DType::q4_g64>(row, ng, j)
                                                  : packed_row_weight_t<DType::q4_g128>(row, ng, j);
          ASSERT_EQ(want, got) << shape_name(dt, 1, k, 3) << " row " << r << " column " << j;
          ASSERT_EQ(want, p.values[static_cast<std::size_t>(r * k + j)]);
        }
        // The CUDA kernels' words (packed_word_weights_t) hold the same f32 at their columns, and
        // the words and the tail columns cover the row once.
        std::vector<int> seen(static_cast<std::size_t>(k));
        const auto check_words = [&](auto tag) {
          constexpr DType T = decltype(tag)::value;
          constexpr int64_t half = quant_group_size(T) / 2;
          int64_t units = 0;
          for (int64_t u = 0; u < packed_row_words(T, k); ++u, ++units) {
            float w[8];
            packed_word_weights_t<T>(row, ng, u, w);
            const int64_t lo = packed_word_column<T>(u);
            for (int t = 0; t < (T == DType::q8 ? 4 : 8); ++t) {
              const int64_t j = lo + (t < 4 ? t : half + t - 4);
              ASSERT_LT(j, k);
              ++seen[static_cast<std::size_t>(j)];
              ASSERT_EQ(w[t], packed_row_weight(row, dt, k, j))
                  << shape_name(dt, 1, k, 3) << " word " << u << " column " << j;
            }
          }
          for (int64_t j = packed_tail_column(T, k); j < k; ++j, ++units)
            ++seen[static_cast<std::size_t>(j)];
          EXPECT_EQ(units, packed_row_units(T, k));
        };
        if (dt == DType::q8) check_words(std::integral_constant<DType, DType::q8>{});
        if (dt == DType::q4_g64) check_words(std::integral_constant<DType, DType::q4_g64>{});
        if (dt == DType::q4_g128) check_words(std::integral_constant<DType, DType::q4_g128>{});
        for (int64_t j = 0; j < k; ++j) ASSERT_EQ(seen[static_cast<std::size_t>(j)], 1) << j;
      }
    }
  }
}

}  // namespace
}  // namespace ferry::kernels::cpu
