// linear: the fast (dispatched) and portable kernels against the reference and against exact
// double-precision dot products, for every weight dtype and awkward shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"
#include "tests/kernels/cpu/kernel_test_util.hpp"

namespace ferry::kernels::cpu {
namespace {

using test::kUnitRoundoff;
using test::random_floats;
using test::random_weights;
using test::shape_name;
using test::Weights;

// Tolerance. Weights reach the kernels' f32 arithmetic exactly (ElementwiseTest.Convert* checks
// every f16 and bf16 bit pattern), so f32, f16 and bf16 weights need the same bound: the only
// error is f32 rounding inside the dot product, and the dtype changes only the storage. Any
// summation order of k rounded products, with or without FMA, blocked or not, stays within
// γ_{k+1}·Σ|x_j·w_j| of the exact sum (Higham, "Accuracy and Stability of Numerical Algorithms",
// §3.1; γ_n = n·u / (1 - n·u), u = 2^-24), and the bias adds one more rounding. So against the
// exact double result each implementation is within (k + 3)·u·S, S = Σ|x_j·w_j| + |bias|, and two
// implementations within twice that. The scale is S, not |y|: a sum that cancels keeps the
// absolute error of its terms. The bound is rigorous, so the test cannot flake, and still tight:
// a dropped, doubled or misconverted term (size ~S/k) exceeds it for every k tested.
double exact_tolerance(int64_t k, double scale) {
  return static_cast<double>(k + 3) * kUnitRoundoff * 1.01 * scale;
}

struct Exact {
  std::vector<double> y;      // exact result in double (the products are exact in double)
  std::vector<double> scale;  // S per output
};

Exact exact_linear(const std::vector<float>& x, int64_t m, int64_t k, const Weights& w, int64_t n,
                   const float* bias) {
  Exact e;
  e.y.resize(static_cast<std::size_t>(m * n));
  e.scale.resize(e.y.size());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t o = 0; o < n; ++o) {
      double sum = 0.0;
      double abs_sum = 0.0;
      for (int64_t j = 0; j < k; ++j) {
        const auto p = static_cast<double>(x[static_cast<std::size_t>(i * k + j)]) *
                       static_cast<double>(w.values[static_cast<std::size_t>(o * k + j)]);
        sum += p;
        abs_sum += std::fabs(p);
      }
      if (bias != nullptr) {
        sum += bias[o];
        abs_sum += std::fabs(bias[o]);
      }
      e.y[static_cast<std::size_t>(i * n + o)] = sum;
      e.scale[static_cast<std::size_t>(i * n + o)] = abs_sum;
    }
  }
  return e;
}

// Every y within factor · exact_tolerance of want (the exact result or another implementation).
template <class Want>
::testing::AssertionResult all_within(const char* what, const std::vector<float>& y,
                                      const Want& want, const Exact& exact, int64_t k,
                                      double factor) {
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double tol = factor * exact_tolerance(k, exact.scale[i]);
    const double diff = std::fabs(static_cast<double>(y[i]) - static_cast<double>(want[i]));
    if (!(diff <= tol)) {
      return ::testing::AssertionFailure()
             << what << ": output " << i << " is " << y[i] << ", want " << want[i] << " (|diff| "
             << diff << " > tol " << tol << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(LinearTest, FastAndScalarMatchReferenceAndExactForEveryDtype) {
  ThreadPool pool(2);
  std::mt19937 rng(20240611);
  int combo = 0;
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (int64_t m : {1, 2, 3, 7, 33}) {
      for (int64_t k : {1, 7, 9, 63, 64, 65, 129, 1000}) {
        for (int64_t n : {1, 3, 5, 17, 100}) {
          SCOPED_TRACE(shape_name(dt, m, k, n));
          const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
          // f16 weights carry a subnormal every 7th element; half the shapes have a bias.
          const Weights w =
              random_weights(rng, dt, static_cast<std::size_t>(n * k), dt == DType::f16 ? 7 : 0);
          const auto bias_values = random_floats(rng, static_cast<std::size_t>(n));
          const float* bias = (combo++ % 2 == 0) ? bias_values.data() : nullptr;
          const auto out = static_cast<std::size_t>(m * n);
          std::vector<float> y_ref(out, NAN);
          std::vector<float> y_fast(out, NAN);
          std::vector<float> y_scalar(out, NAN);
          ref::linear(x.data(), m, k, w.data(), dt, n, bias, y_ref.data());
          linear(x.data(), m, k, w.data(), dt, n, bias, y_fast.data(), pool);
          scalar::linear(x.data(), m, k, w.data(), dt, n, bias, y_scalar.data(), pool);
          const Exact exact = exact_linear(x, m, k, w, n, bias);
          ASSERT_TRUE(all_within("ref vs exact", y_ref, exact.y, exact, k, 1.0));
          ASSERT_TRUE(all_within("fast vs exact", y_fast, exact.y, exact, k, 1.0));
          ASSERT_TRUE(all_within("scalar vs exact", y_scalar, exact.y, exact, k, 1.0));
          ASSERT_TRUE(all_within("fast vs ref", y_fast, y_ref, exact, k, 2.0));
          ASSERT_TRUE(all_within("scalar vs ref", y_scalar, y_ref, exact, k, 2.0));
        }
      }
    }
  }
}

// Batched decoding and verifying drafts put one sequence's row beside others: its result must
// not depend on them, or a batch could change a sequence's tokens. Every row of a many-row
// product equals, bit for bit, the same row multiplied alone (the decode's mat-vec), on the
// dispatched and the portable paths, including k past one 256-column block and odd tails.
TEST(LinearTest, ARowGetsTheSameBitsAloneOrAmongOthers) {
  ThreadPool pool(2);
  std::mt19937 rng(99);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (int64_t m : {2, 3, 4, 9}) {
      for (int64_t k : {5, 8, 255, 256, 257, 700, 4096}) {
        const int64_t n = 37;
        SCOPED_TRACE(shape_name(dt, m, k, n));
        const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
        const Weights w = random_weights(rng, dt, static_cast<std::size_t>(n * k), 0);
        const auto bias = random_floats(rng, static_cast<std::size_t>(n));
        for (const bool portable : {false, true}) {
          const auto run = [&](const float* xs, int64_t rows, float* y) {
            if (portable) {
              scalar::linear(xs, rows, k, w.data(), dt, n, bias.data(), y, pool);
            } else {
              linear(xs, rows, k, w.data(), dt, n, bias.data(), y, pool);
            }
          };
          std::vector<float> together(static_cast<std::size_t>(m * n), NAN);
          run(x.data(), m, together.data());
          for (int64_t i = 0; i < m; ++i) {
            std::vector<float> alone(static_cast<std::size_t>(n), NAN);
            run(x.data() + i * k, 1, alone.data());
            ASSERT_EQ(std::memcmp(alone.data(), together.data() + i * n,
                                  static_cast<std::size_t>(n) * sizeof(float)),
                      0)
                << (portable ? "portable" : "dispatched") << " row " << i;
          }
        }
      }
    }
  }
}

// Weights made only of f16 subnormals: flushing them to zero would leave y ≈ 0 (or the bias),
// far outside the tolerance, which here is scaled by the tiny subnormal products themselves.
TEST(LinearTest, F16SubnormalWeightsAreNotFlushed) {
  ThreadPool pool(2);
  std::mt19937 rng(7);
  for (int64_t m : {1, 4}) {
    for (int64_t k : {9, 64, 1000}) {
      const int64_t n = 6;
      SCOPED_TRACE(shape_name(DType::f16, m, k, n));
      const auto x = random_floats(rng, static_cast<std::size_t>(m * k), 0.5f, 1.0f);
      const Weights w = random_weights(rng, DType::f16, static_cast<std::size_t>(n * k), 1);
      for (float v : w.values) ASSERT_LT(std::fabs(v), 6.2e-5f);  // all subnormal
      std::vector<float> y_fast(static_cast<std::size_t>(m * n));
      std::vector<float> y_scalar(y_fast.size());
      std::vector<float> y_ref(y_fast.size());
      linear(x.data(), m, k, w.data(), DType::f16, n, nullptr, y_fast.data(), pool);
      scalar::linear(x.data(), m, k, w.data(), DType::f16, n, nullptr, y_scalar.data(), pool);
      ref::linear(x.data(), m, k, w.data(), DType::f16, n, nullptr, y_ref.data());
      const Exact exact = exact_linear(x, m, k, w, n, nullptr);
      EXPECT_TRUE(all_within("fast vs exact", y_fast, exact.y, exact, k, 1.0));
      EXPECT_TRUE(all_within("scalar vs exact", y_scalar, exact.y, exact, k, 1.0));
      EXPECT_TRUE(all_within("ref vs exact", y_ref, exact.y, exact, k, 1.0));
    }
  }
}

// A decode-sized product: long rows cross many 256-wide blocks and the 16-wide main loop.
TEST(LinearTest, LongRowsMatchExact) {
  ThreadPool pool(2);
  std::mt19937 rng(99);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (int64_t m : {1, 5}) {
      const int64_t k = 4096 + 3;
      const int64_t n = 37;
      SCOPED_TRACE(shape_name(dt, m, k, n));
      const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
      const Weights w = random_weights(rng, dt, static_cast<std::size_t>(n * k));
      const auto bias = random_floats(rng, static_cast<std::size_t>(n));
      std::vector<float> y(static_cast<std::size_t>(m * n));
      linear(x.data(), m, k, w.data(), dt, n, bias.data(), y.data(), pool);
      const Exact exact = exact_linear(x, m, k, w, n, bias.data());
      EXPECT_TRUE(all_within("fast vs exact", y, exact.y, exact, k, 1.0));
    }
  }
}

// Each output is computed by one thread in an order fixed by the shape, so the thread count
// cannot change a single bit.
TEST(LinearTest, ThreadCountDoesNotChangeResults) {
  ThreadPool one(1);
  ThreadPool three(3);
  std::mt19937 rng(3);
  for (DType dt : {DType::f32, DType::f16, DType::bf16}) {
    for (int64_t m : {1, 2, 33}) {
      const int64_t k = 1000;
      const int64_t n = 1000;
      SCOPED_TRACE(shape_name(dt, m, k, n));
      const auto x = random_floats(rng, static_cast<std::size_t>(m * k));
      const Weights w = random_weights(rng, dt, static_cast<std::size_t>(n * k));
      const auto bias = random_floats(rng, static_cast<std::size_t>(n));
      const auto out = static_cast<std::size_t>(m * n);
      std::vector<float> a(out);
      std::vector<float> b(out);
      linear(x.data(), m, k, w.data(), dt, n, bias.data(), a.data(), one);
      linear(x.data(), m, k, w.data(), dt, n, bias.data(), b.data(), three);
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), out * sizeof(float)));
      scalar::linear(x.data(), m, k, w.data(), dt, n, bias.data(), a.data(), one);
      scalar::linear(x.data(), m, k, w.data(), dt, n, bias.data(), b.data(), three);
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), out * sizeof(float)));
    }
  }
}

TEST(LinearTest, EmptyRowsGiveTheBias) {
  ThreadPool pool(2);
  const std::vector<float> bias = {1.5f, -2.0f, 0.25f};
  for (int64_t m : {1, 3}) {
    std::vector<float> y_fast(static_cast<std::size_t>(m * 3), NAN);
    std::vector<float> y_scalar(y_fast.size(), NAN);
    std::vector<float> y_ref(y_fast.size(), NAN);
    const float x_dummy = 0.0f;
    const uint16_t w_dummy = 0;
    linear(&x_dummy, m, 0, &w_dummy, DType::f16, 3, bias.data(), y_fast.data(), pool);
    scalar::linear(&x_dummy, m, 0, &w_dummy, DType::f16, 3, bias.data(), y_scalar.data(), pool);
    ref::linear(&x_dummy, m, 0, &w_dummy, DType::f16, 3, bias.data(), y_ref.data());
    for (std::size_t i = 0; i < y_fast.size(); ++i) {
      EXPECT_EQ(y_fast[i], bias[i % 3]);
      EXPECT_EQ(y_scalar[i], bias[i % 3]);
      EXPECT_EQ(y_ref[i], bias[i % 3]);
    }
  }
}

TEST(LinearTest, RejectsNonFloatWeights) {
  ThreadPool pool(1);
  const float x = 1.0f;
  const int8_t w = 1;
  float y = 0.0f;
  EXPECT_THROW(linear(&x, 1, 1, &w, DType::i8, 1, nullptr, &y, pool), InvalidArgument);
  EXPECT_THROW(scalar::linear(&x, 1, 1, &w, DType::i8, 1, nullptr, &y, pool), InvalidArgument);
  EXPECT_THROW(ref::linear(&x, 1, 1, &w, DType::i8, 1, nullptr, &y), InvalidArgument);
}

}  // namespace
}  // namespace ferry::kernels::cpu
