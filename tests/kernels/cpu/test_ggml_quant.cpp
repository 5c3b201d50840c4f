// llama.cpp's block formats (q8_0 … q6_k): decoding bit for bit as ggml decodes (the fixture's
// rows from gguf-py / ggml, and a plain decoder written here after ggml-quants.c on random
// blocks), linear() on them in every path against exact products of the decoded weights, and
// quantize_row's round trip.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/common/ggml_quant_math.hpp"
#include "kernels/cpu/detail/paths.hpp"
#include "kernels/cpu/ggml_dot.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/quant.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/ggml_quant.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/thread_pool.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::kernels::cpu {
namespace {

constexpr DType kAll[] = {DType::q8_0, DType::q4_0, DType::q4_1, DType::q5_0,
                          DType::q5_1, DType::q4_k, DType::q5_k, DType::q6_k};

// linear() here is the exact path (every product in f32), which this file checks against plain
// decoding; llama.cpp's arithmetic (the default) is called as ggml_dot::linear by its own tests.
class ExactProducts : public ::testing::Environment {
 public:
  void SetUp() override { ::setenv("FERRY_GGUF_PRODUCTS", "exact", 1); }
};
[[maybe_unused]] ::testing::Environment* const kExactProducts =
    ::testing::AddGlobalTestEnvironment(new ExactProducts);

using Bytes = std::vector<unsigned char>;

// The SIMD implementations this processor can run, called directly (the dispatched linear runs
// only the best of them): AVX2 and, for the block formats, AVX-512.
using RowsFn = void (*)(const float*, int64_t, int64_t, const void*, DType, int64_t, const float*,
                        float*, int64_t, int64_t);
struct SimdPath {
  const char* name;
  RowsFn rows;
};
std::vector<SimdPath> simd_paths() {
  std::vector<SimdPath> p;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      std::string(simd_level()) == "avx2")
    p.push_back({"avx2", detail::avx2::linear_rows});
  if (!p.empty() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    p.push_back({"avx512", detail::avx512::ggml_linear_rows});
#endif
  return p;
}

// ---- A plain decoder, transcribed from ggml-quants.c's dequantize_row_* (whole rows, ggml's own
// loop structure), independent of kernels/common/ggml_quant_math.hpp.

float h2f(const unsigned char* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | p[1] << 8)); }

void get_scale_min_k4(int j, const unsigned char* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
  }
}

std::vector<float> plain_decode(const unsigned char* x, DType t, int64_t k) {
  std::vector<float> out(static_cast<std::size_t>(k));
  float* y = out.data();
  const int64_t nb = k / ggml_block_elems(t);
  const auto bs = ggml_block_bytes(t);
  for (int64_t i = 0; i < nb; ++i) {
    const unsigned char* b = x + i * static_cast<int64_t>(bs);
    switch (t) {
      case DType::q8_0: {
        const float d = h2f(b);
        for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(static_cast<int8_t>(b[2 + j])) * d;
        y += 32;
        break;
      }
      case DType::q4_0: {
        const float d = h2f(b);
        for (int j = 0; j < 16; ++j) {
          const int x0 = (b[2 + j] & 0x0F) - 8;
          const int x1 = (b[2 + j] >> 4) - 8;
          y[j] = static_cast<float>(x0) * d;
          y[j + 16] = static_cast<float>(x1) * d;
        }
        y += 32;
        break;
      }
      case DType::q4_1: {
        const float d = h2f(b);
        const float m = h2f(b + 2);
        for (int j = 0; j < 16; ++j) {
          const float p0 = static_cast<float>(b[4 + j] & 0x0F) * d;
          const float p1 = static_cast<float>(b[4 + j] >> 4) * d;
          y[j] = p0 + m;
          y[j + 16] = p1 + m;
        }
        y += 32;
        break;
      }
      case DType::q5_0:
      case DType::q5_1: {
        const bool one = t == DType::q5_1;
        const float d = h2f(b);
        const float m = one ? h2f(b + 2) : 0.0f;
        uint32_t qh;
        std::memcpy(&qh, b + (one ? 4 : 2), 4);
        const unsigned char* qs = b + (one ? 8 : 6);
        for (int j = 0; j < 16; ++j) {
          const auto xh_0 = static_cast<uint8_t>(((qh >> (j + 0)) << 4) & 0x10);
          const auto xh_1 = static_cast<uint8_t>(((qh >> (j + 12))) & 0x10);
          const int x0 = ((qs[j] & 0x0F) | xh_0) - (one ? 0 : 16);
          const int x1 = ((qs[j] >> 4) | xh_1) - (one ? 0 : 16);
          if (one) {
            const float p0 = static_cast<float>(x0) * d;
            const float p1 = static_cast<float>(x1) * d;
            y[j] = p0 + m;
            y[j + 16] = p1 + m;
          } else {
            y[j] = static_cast<float>(x0) * d;
            y[j + 16] = static_cast<float>(x1) * d;
          }
        }
        y += 32;
        break;
      }
      case DType::q4_k:
      case DType::q5_k: {
        const bool five = t == DType::q5_k;
        const float d = h2f(b);
        const float min = h2f(b + 2);
        const unsigned char* scales = b + 4;
        const unsigned char* qh = b + 16;
        const unsigned char* q = b + (five ? 48 : 16);
        int is = 0;
        uint8_t sc;
        uint8_t m;
        unsigned u1 = 1;
        unsigned u2 = 2;
        for (int j = 0; j < 256; j += 64) {
          get_scale_min_k4(is + 0, scales, &sc, &m);
          const float d1 = d * sc;
          const float m1 = min * m;
          get_scale_min_k4(is + 1, scales, &sc, &m);
          const float d2 = d * sc;
          const float m2 = min * m;
          for (int l = 0; l < 32; ++l) {
            const int v = (q[l] & 0xF) + (five && (qh[l] & u1) != 0 ? 16 : 0);
            const float p = d1 * static_cast<float>(v);
            *y++ = p - m1;
          }
          for (int l = 0; l < 32; ++l) {
            const int v = (q[l] >> 4) + (five && (qh[l] & u2) != 0 ? 16 : 0);
            const float p = d2 * static_cast<float>(v);
            *y++ = p - m2;
          }
          q += 32;
          is += 2;
          u1 <<= 2;
          u2 <<= 2;
        }
        break;
      }
      default: {  // q6_k
        const float d = h2f(b + 208);
        const unsigned char* ql = b;
        const unsigned char* qh = b + 128;
        const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
        for (int n = 0; n < 256; n += 128) {
          for (int l = 0; l < 32; ++l) {
            const int is = l / 16;
            const int q1 = static_cast<int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            const int q2 =
                static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            const int q3 = static_cast<int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l + 0] = d * static_cast<float>(sc[is + 0]) * static_cast<float>(q1);
            y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
            y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
            y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
          }
          y += 128;
          ql += 64;
          qh += 32;
          sc += 8;
        }
        break;
      }
    }
  }
  return out;
}

// The f16 fields of a block: offsets of d (and dmin / m).
std::vector<int> f16_offsets(DType t) {
  switch (t) {
    case DType::q4_1:
    case DType::q5_1:
    case DType::q4_k:
    case DType::q5_k:
      return {0, 2};
    case DType::q6_k:
      return {208};
    default:
      return {0};
  }
}

// A random f16 for a scale: normal (|v| up to 4), subnormal, zero, either sign.
uint16_t random_scale(std::mt19937& rng) {
  const uint16_t sign = (rng() & 1) != 0 ? 0x8000 : 0;
  switch (rng() % 6) {
    case 0:
      return static_cast<uint16_t>(sign | (1 + rng() % 0x3ff));  // subnormal
    case 1:
      return sign;  // ±0
    default:
      return static_cast<uint16_t>(sign | (rng() % 0x4400));  // up to 4
  }
}

// rows × k of random blocks: random bytes, the f16 scales replaced by random_scale.
Bytes random_blocks(std::mt19937& rng, DType t, int64_t rows, int64_t k) {
  Bytes b(static_cast<std::size_t>(rows) * ggml_row_bytes(t, k));
  for (auto& v : b) v = static_cast<unsigned char>(rng());
  const auto bs = ggml_block_bytes(t);
  for (std::size_t off = 0; off < b.size(); off += bs) {
    for (int f : f16_offsets(t)) {
      const uint16_t h = random_scale(rng);
      b[off + f] = static_cast<unsigned char>(h & 0xff);
      b[off + f + 1] = static_cast<unsigned char>(h >> 8);
    }
  }
  return b;
}

::testing::AssertionResult same_bits(const char* what, const float* got, const float* want,
                                     int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    if (f32_bits(got[j]) != f32_bits(want[j])) {
      return ::testing::AssertionFailure() << what << ": element " << j << " is " << got[j]
                                           << ", want " << want[j];
    }
  }
  return ::testing::AssertionSuccess();
}

// Every decoder of a row: the shared header's chunk and element decoders and convert_to_f32 in
// each path, against want.
void expect_decodes(const unsigned char* row, DType t, int64_t k, const std::vector<float>& want,
                    const std::string& label) {
  std::vector<float> got(static_cast<std::size_t>(k));
  ggml_dequantize(row, t, 0, k, got.data());
  EXPECT_TRUE(same_bits((label + " chunks").c_str(), got.data(), want.data(), k));
  for (int64_t j = 0; j < k; ++j) got[static_cast<std::size_t>(j)] = ggml_row_weight(row, t, j);
  EXPECT_TRUE(same_bits((label + " elements").c_str(), got.data(), want.data(), k));
  ref::convert_to_f32(row, t, k, got.data());
  EXPECT_TRUE(same_bits((label + " ref").c_str(), got.data(), want.data(), k));
  scalar::convert_to_f32(row, t, k, got.data());
  EXPECT_TRUE(same_bits((label + " scalar").c_str(), got.data(), want.data(), k));
  convert_to_f32(row, t, k, got.data());
  EXPECT_TRUE(same_bits((label + " dispatched").c_str(), got.data(), want.data(), k));
}

TEST(GgmlQuant, DecodesTheFixtureRowsBitForBit) {
  const std::map<std::string, DType> types = {
      {"Q8_0", DType::q8_0}, {"Q4_0", DType::q4_0}, {"Q4_1", DType::q4_1},
      {"Q5_0", DType::q5_0}, {"Q5_1", DType::q5_1}, {"Q4_K", DType::q4_k},
      {"Q5_K", DType::q5_k}, {"Q6_K", DType::q6_k}};
  std::ifstream in(test::data_dir() / "gguf" / "tiny-llama-bpe" / "dequant.json");
  ASSERT_TRUE(in) << "tests/data/gguf/tiny-llama-bpe/dequant.json is missing";
  const auto doc = nlohmann::json::parse(in);
  int checked = 0;
  for (const auto& [file, f] : doc.at("files").items()) {
    for (const auto& e : f.at("entries")) {
      const auto it = types.find(e.at("type").get<std::string>());
      if (it == types.end()) continue;  // F16
      const DType t = it->second;
      const int64_t k = e.at("row_length").get<int64_t>();
      ASSERT_EQ(e.at("bytes_per_row").get<uint64_t>(), ggml_row_bytes(t, k));
      ASSERT_EQ(e.at("type_size").get<uint64_t>(), ggml_block_bytes(t));
      ASSERT_EQ(e.at("block_size").get<int64_t>(), ggml_block_elems(t));
      for (int64_t r = 0; r < e.at("rows").get<int64_t>(); ++r) {
        const auto hex = e.at("raw_hex").at(r).get<std::string>();
        ASSERT_EQ(hex.size(), 2 * ggml_row_bytes(t, k));
        Bytes row(hex.size() / 2);
        for (std::size_t i = 0; i < row.size(); ++i)
          row[i] = static_cast<unsigned char>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
        std::vector<float> want;
        for (const auto& v : e.at("values").at(r)) want.push_back(v.get<float>());
        ASSERT_EQ(static_cast<int64_t>(want.size()), k);
        const std::string label = file + " " + e.at("tensor").get<std::string>() + " " +
                                  std::string(dtype_name(t)) + " row " + std::to_string(r);
        expect_decodes(row.data(), t, k, want, label);
        EXPECT_TRUE(same_bits((label + " plain").c_str(), plain_decode(row.data(), t, k).data(),
                              want.data(), k));
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 12);  // 5 files' types, 2 rows each (Q4_0 and Q4_K_M add Q6_K)
}

TEST(GgmlQuant, DecodesRandomBlocksLikeGgml) {
  std::mt19937 rng(17);
  for (DType t : kAll) {
    const int64_t k = ggml_block_elems(t) * 3;
    const Bytes b = random_blocks(rng, t, 40, k);
    for (int64_t r = 0; r < 40; ++r) {
      const unsigned char* row = b.data() + r * static_cast<int64_t>(ggml_row_bytes(t, k));
      expect_decodes(row, t, k, plain_decode(row, t, k),
                     std::string(dtype_name(t)) + " row " + std::to_string(r));
    }
  }
}

// linear against exact (double) products of the decoded weights: each output is an f32 sum of k
// exact-weight products, so it is within (k + 2)·u·Σ|x·w| of the exact value (plus the bias's
// rounding).
TEST(GgmlQuant, LinearMatchesExactProductsInEveryPath) {
  std::mt19937 rng(5);
  ThreadPool pool(2);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (DType t : kAll) {
    const int64_t blk = ggml_block_elems(t);
    // 32-element formats: a k that is no multiple of the 256-column tile.
    for (int64_t k : {blk == 32 ? int64_t{32 * 9} : int64_t{256 * 3}, blk}) {
      for (int64_t m : {1, 3, 17}) {
        const int64_t n = 37;
        const Bytes w = random_blocks(rng, t, n, k);
        const auto row_bytes = static_cast<int64_t>(ggml_row_bytes(t, k));
        std::vector<float> x(static_cast<std::size_t>(m * k));
        for (auto& v : x) v = dist(rng);
        std::vector<float> bias(static_cast<std::size_t>(n));
        for (auto& v : bias) v = dist(rng);
        const float* bp = m == 3 ? bias.data() : nullptr;
        std::vector<double> want(static_cast<std::size_t>(m * n));
        std::vector<double> mag(static_cast<std::size_t>(m * n));
        for (int64_t o = 0; o < n; ++o) {
          const std::vector<float> wr = plain_decode(w.data() + o * row_bytes, t, k);
          for (int64_t i = 0; i < m; ++i) {
            double s = 0;
            double a = 0;
            for (int64_t j = 0; j < k; ++j) {
              const double p = static_cast<double>(x[i * k + j]) * wr[j];
              s += p;
              a += std::fabs(p);
            }
            const double b = bp != nullptr ? bp[o] : 0.0;
            want[i * n + o] = s + b;
            mag[i * n + o] = a + std::fabs(s + b);
          }
        }
        std::vector<float> y(static_cast<std::size_t>(m * n));
        const auto check = [&](const char* path) {
          for (std::size_t i = 0; i < y.size(); ++i) {
            const double tol = static_cast<double>(k + 3) * 5.9604644775390625e-08 * mag[i];
            ASSERT_LE(std::fabs(y[i] - want[i]), tol)
                << path << " " << dtype_name(t) << " m=" << m << " k=" << k << " output " << i;
          }
        };
        ref::linear(x.data(), m, k, w.data(), t, n, bp, y.data());
        check("ref");
        scalar::linear(x.data(), m, k, w.data(), t, n, bp, y.data(), pool);
        check("scalar");
        linear(x.data(), m, k, w.data(), t, n, bp, y.data(), pool);
        check(std::string(simd_level()).c_str());
        for (const SimdPath& p : simd_paths()) {
          p.rows(x.data(), m, k, w.data(), t, n, bp, y.data(), 0, n);
          check(p.name);
        }
      }
    }
  }
}

// With x a row of the identity, each output is one weight times 1 plus zeros: the exact decoded
// weight, whatever the summation order. So the fused decoders (m = 1) and the tile fill (m > 1)
// of every path must give ggml's weights bit for bit (up to the sign of a zero).
TEST(GgmlQuant, LinearOnIdentityRowsGivesTheWeightsExactly) {
  std::mt19937 rng(9);
  ThreadPool pool(2);
  for (DType t : kAll) {
    const int64_t k = ggml_block_elems(t) == 32 ? 288 : 512;
    const int64_t n = 5;
    const Bytes w = random_blocks(rng, t, n, k);
    const auto row_bytes = static_cast<int64_t>(ggml_row_bytes(t, k));
    std::vector<float> eye(static_cast<std::size_t>(k * k), 0.0f);
    for (int64_t j = 0; j < k; ++j) eye[j * k + j] = 1.0f;
    std::vector<float> y(static_cast<std::size_t>(k * n));
    const auto check = [&](const char* path, int64_t j0, int64_t rows) {
      for (int64_t o = 0; o < n; ++o) {
        const std::vector<float> want = plain_decode(w.data() + o * row_bytes, t, k);
        for (int64_t j = j0; j < j0 + rows; ++j)
          ASSERT_EQ(y[(j - j0) * n + o], want[j])
              << path << " " << dtype_name(t) << " row " << o << " column " << j;
      }
    };
    linear(eye.data(), k, k, w.data(), t, n, nullptr, y.data(), pool);
    check("dispatched m=k", 0, k);
    scalar::linear(eye.data(), k, k, w.data(), t, n, nullptr, y.data(), pool);
    check("scalar m=k", 0, k);
    for (const SimdPath& p : simd_paths()) {
      p.rows(eye.data(), k, k, w.data(), t, n, nullptr, y.data(), 0, n);
      check(p.name, 0, k);
    }
    for (int64_t j = 0; j < k; ++j) {
      linear(eye.data() + j * k, 1, k, w.data(), t, n, nullptr, y.data(), pool);
      check("dispatched m=1", j, 1);
      for (const SimdPath& p : simd_paths()) {
        p.rows(eye.data() + j * k, 1, k, w.data(), t, n, nullptr, y.data(), 0, n);
        check(p.name, j, 1);
      }
      scalar::linear(eye.data() + j * k, 1, k, w.data(), t, n, nullptr, y.data(), pool);
      check("scalar m=1", j, 1);
    }
  }
}

// Each output is computed by one thread in an order fixed by k, so the thread count changes no bit.
TEST(GgmlQuant, LinearDoesNotDependOnTheThreadCount) {
  std::mt19937 rng(13);
  ThreadPool one(1);
  ThreadPool three(3);
  for (DType t : kAll) {
    const int64_t k = ggml_block_elems(t) * 4;
    const int64_t n = 70;
    const Bytes w = random_blocks(rng, t, n, k);
    for (int64_t m : {1, 5}) {
      std::vector<float> x(static_cast<std::size_t>(m * k));
      for (auto& v : x) v = static_cast<float>(rng() % 2001) / 1000.0f - 1.0f;
      std::vector<float> a(static_cast<std::size_t>(m * n));
      std::vector<float> b(a.size());
      linear(x.data(), m, k, w.data(), t, n, nullptr, a.data(), one);
      linear(x.data(), m, k, w.data(), t, n, nullptr, b.data(), three);
      EXPECT_TRUE(same_bits(dtype_name(t).data(), b.data(), a.data(), m * n)) << "m=" << m;
    }
  }
}

TEST(GgmlQuant, RejectsRowsOfPartialBlocks) {
  std::vector<float> x(300, 0.5f);
  Bytes w(4096);
  std::vector<float> y(4);
  ThreadPool pool(1);
  EXPECT_THROW(linear(x.data(), 1, 300, w.data(), DType::q4_k, 1, nullptr, y.data(), pool),
               Error);
  EXPECT_THROW(convert_to_f32(w.data(), DType::q8_0, 40, y.data()), Error);
  EXPECT_THROW(quantize_row(x.data(), 300, DType::q6_k, w.data(), "w"), Error);
}

// Quantizing and decoding again: every weight within a fraction of its block's largest |w| (the
// format's step: half a code step, plus clamping and f16 scale rounding), and the same bytes
// every time.
TEST(GgmlQuant, QuantizeRoundTrips) {
  const std::map<DType, double> bound = {
      {DType::q8_0, 0.6 / 127}, {DType::q4_0, 1.05 / 8}, {DType::q5_0, 1.05 / 16},
      {DType::q4_1, 1.2 / 15},  {DType::q5_1, 1.2 / 31}, {DType::q4_k, 0.08},
      {DType::q5_k, 0.04},      {DType::q6_k, 0.6 / 31}};
  std::mt19937 rng(3);
  std::normal_distribution<float> gauss(0.0f, 0.02f);
  for (DType t : kAll) {
    const int64_t k = 2048;
    std::vector<float> x(static_cast<std::size_t>(k));
    for (auto& v : x) v = gauss(rng);
    x[5] = 0.3f;  // an outlier
    std::fill(x.begin() + 512, x.begin() + 768, 0.0f);           // an all-zero block
    std::fill(x.begin() + 1024, x.begin() + 1280, 0.01f);        // a constant one
    for (int64_t j = 1536; j < 1792; ++j) x[j] = std::fabs(x[j]);  // non-negative
    Bytes q(ggml_row_bytes(t, k));
    Bytes again(q.size());
    quantize_row(x.data(), k, t, q.data(), "x");
    quantize_row(x.data(), k, t, again.data(), "x");
    EXPECT_EQ(q, again) << dtype_name(t);
    const std::vector<float> back = plain_decode(q.data(), t, k);
    const int64_t blk = ggml_block_elems(t);
    double worst = 0;
    for (int64_t b0 = 0; b0 < k; b0 += blk) {
      float amax = 0;
      for (int64_t j = b0; j < b0 + blk; ++j) amax = std::max(amax, std::fabs(x[j]));
      for (int64_t j = b0; j < b0 + blk; ++j) {
        const double err = std::fabs(static_cast<double>(back[j]) - x[j]);
        ASSERT_LE(err, bound.at(t) * amax + 1e-12)
            << dtype_name(t) << " element " << j << ": " << x[j] << " came back " << back[j];
        if (amax > 0) worst = std::max(worst, err / amax);
      }
    }
    std::printf("%s: worst error %.4f of the block's max |w| (bound %.4f)\n",
                std::string(dtype_name(t)).c_str(), worst, bound.at(t));
  }
}


// ---- FERRY_GGUF_PRODUCTS=fast (kernels/cpu/ggml_dot.hpp): llama.cpp's q8-activation integer
// products, against a plain scalar transcription of the same algorithm written here.

// ggml's quantize_row_q8_K_ref, plainly: per 256, the signed element of largest magnitude,
// iscale = −127/max, q = min(127, nearest-even(iscale·x)), d = 1/iscale, bsums per 16.
struct PlainQ8 {
  std::vector<float> d;      // per block
  std::vector<int> q;        // per element
  std::vector<int> bsums;    // per 16 elements (q8_K only)
};
PlainQ8 plain_q8_k(const std::vector<float>& x) {
  PlainQ8 out;
  const std::size_t nb = x.size() / 256;
  out.d.resize(nb);
  out.q.resize(x.size());
  out.bsums.resize(x.size() / 16);
  for (std::size_t i = 0; i < nb; ++i) {
    float amax = 0;
    float max = 0;
    for (std::size_t j = 256 * i; j < 256 * i + 256; ++j) {
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        max = x[j];
      }
    }
    if (amax == 0) continue;  // d = 0, q = 0
    const float iscale = -127.f / max;
    for (std::size_t j = 256 * i; j < 256 * i + 256; ++j) {
      // ggml's nearest_int: the f32 magic-number rounding (ties to even).
      float val = iscale * x[j] + 12582912.f;
      int bits;
      std::memcpy(&bits, &val, 4);
      out.q[j] = std::min(127, (bits & 0x007fffff) - 0x00400000);
    }
    out.d[i] = 1 / iscale;
  }
  for (std::size_t s = 0; s < out.bsums.size(); ++s)
    for (std::size_t l = 0; l < 16; ++l) out.bsums[s] += out.q[16 * s + l];
  return out;
}

// ggml's quantize_row_q8_0_ref, plainly: d = amax/127 kept as f16, q = roundf(x·(1/d)).
PlainQ8 plain_q8_0(const std::vector<float>& x) {
  PlainQ8 out;
  const std::size_t nb = x.size() / 32;
  out.d.resize(nb);
  out.q.resize(x.size());
  for (std::size_t i = 0; i < nb; ++i) {
    float amax = 0;
    for (std::size_t j = 32 * i; j < 32 * i + 32; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127;
    const float id = d != 0 ? 1 / d : 0;
    out.d[i] = f16_to_f32(f32_to_f16(d));
    for (std::size_t j = 32 * i; j < 32 * i + 32; ++j)
      out.q[j] = static_cast<int>(std::round(x[j] * id));
  }
  return out;
}

// The scalar integer dot of one weight row with quantized activations, block by block as ggml's
// generic ggml_vec_dot_*_q8_*; sum_abs receives Σ|block term| for the rounding tolerance.
float plain_fast_dot(const unsigned char* row, DType t, int64_t k, const PlainQ8& a,
                     double& sum_abs) {
  float sum = 0;
  sum_abs = 0;
  const int64_t nb = k / ggml_block_elems(t);
  for (int64_t i = 0; i < nb; ++i) {
    const unsigned char* b = row + i * static_cast<int64_t>(ggml_block_bytes(t));
    if (t == DType::q8_0 || t == DType::q4_0 || t == DType::q5_0) {
      int sumi = 0;
      uint32_t qh = 0;
      std::memcpy(&qh, b + 2, 4);
      for (int l = 0; l < 32; ++l) {
        int wq = 0;
        if (t == DType::q8_0) {
          wq = static_cast<int8_t>(b[2 + l]);
        } else if (t == DType::q4_0) {
          wq = (l < 16 ? b[2 + l] & 0xF : b[2 + l - 16] >> 4) - 8;
        } else {  // ggml's dequantize_row_q5_0: x0 from the low nibbles, x1 the high; bit l of qh
          wq = ((l < 16 ? b[6 + l] & 0xF : b[6 + l - 16] >> 4) | (((qh >> l) & 1) << 4)) - 16;
        }
        sumi += wq * a.q[32 * i + l];
      }
      const float term = static_cast<float>(sumi) * (h2f(b) * a.d[i]);
      sum += term;
      sum_abs += std::fabs(term);
    } else if (t == DType::q4_k || t == DType::q5_k) {
      const bool five = t == DType::q5_k;
      int sumi = 0;
      int mins = 0;
      int64_t abs_i = 0;  // Σ|products| and Σ|minimum terms|: what any lane of a split sum holds
      int64_t abs_m = 0;
      for (int j = 0; j < 8; ++j) {
        uint8_t sc = 0;
        uint8_t mn = 0;
        get_scale_min_k4(j, b + 4, &sc, &mn);
        int s = 0;
        for (int l = 0; l < 32; ++l) {
          const unsigned char v = b[(five ? 48 : 16) + 32 * (j / 2) + l];
          int q = (j % 2) != 0 ? v >> 4 : v & 0xF;
          // ggml's dequantize_row_q5_K: sub-block j's fifth bit is bit j of qh[l].
          if (five) q |= ((b[16 + l] >> j) & 1) << 4;
          s += q * a.q[256 * i + 32 * j + l];
          abs_i += std::abs(sc * q * a.q[256 * i + 32 * j + l]);
        }
        sumi += sc * s;
        mins += mn * (a.bsums[16 * i + 2 * j] + a.bsums[16 * i + 2 * j + 1]);
        abs_m += mn * (std::abs(a.bsums[16 * i + 2 * j]) + std::abs(a.bsums[16 * i + 2 * j + 1]));
      }
      const float d = a.d[i] * h2f(b);
      const float dmin = a.d[i] * h2f(b + 2);
      const float term = d * static_cast<float>(sumi);
      const float mterm = dmin * static_cast<float>(mins);
      sum += term - mterm;
      // The kernels (as llama.cpp's) accumulate the block's integer lanes and minimum lanes
      // into f32 lanes, so their roundings scale with the lanes' magnitudes, not the term's.
      sum_abs += std::fabs(static_cast<double>(d)) * static_cast<double>(abs_i) +
                 std::fabs(static_cast<double>(dmin)) * static_cast<double>(abs_m);
    } else {  // q6_k: element 128h + 32t + l (t = 0…3) from ql, qh of half h; scales per 16
      int sumi = 0;
      int64_t abs_i = 0;  // Σ|sc·q·q8| + 32·Σ|sc·q8|: a bound on any lane of a split sum
      for (int h = 0; h < 2; ++h) {
        for (int t4 = 0; t4 < 4; ++t4) {
          for (int l = 0; l < 32; ++l) {
            const unsigned char v = b[64 * h + l + 32 * (t4 % 2)];
            const int lo = t4 >= 2 ? v >> 4 : v & 0xF;
            const int hi = (b[128 + 32 * h + l] >> (2 * t4)) & 3;
            const int e = 128 * h + 32 * t4 + l;
            const int sc = static_cast<int8_t>(b[192 + e / 16]);
            sumi += sc * ((lo | hi << 4) - 32) * a.q[256 * i + e];
            abs_i += std::abs(sc * a.q[256 * i + e]) * ((lo | hi << 4) + 32);
          }
        }
      }
      const float scale = h2f(b + 208) * a.d[i];
      const float term = scale * static_cast<float>(sumi);
      sum += term;
      sum_abs += std::fabs(static_cast<double>(scale)) * static_cast<double>(abs_i);
    }
  }
  return sum;
}

constexpr DType kFast[] = {DType::q8_0, DType::q4_k, DType::q6_k, DType::q4_0, DType::q5_k,
                           DType::q5_0};

std::vector<float> random_activations(std::mt19937& rng, int64_t k) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<std::size_t>(k));
  for (auto& v : x) v = nd(rng) * ((rng() % 4) == 0 ? 30.f : 1.f);
  // A block of zeros (d = 0), blocks led by a negative and by a positive outlier (long rows).
  if (k >= 512) std::fill(x.begin(), x.begin() + 256, 0.f);
  if (k > 300) x[300] = -500.f;
  if (k > 600) x[600] = 700.f;
  return x;
}

TEST(GgmlDot, QuantizesActivationsLikeGgml) {
  std::mt19937 rng(21);
  const int64_t k = 256 * 5;
  const std::vector<float> x = random_activations(rng, k);
  const PlainQ8 wk = plain_q8_k(x);
  std::vector<ggml_dot::Q8K> qk(5);
  ggml_dot::quantize_q8_k(x.data(), k, qk.data());
  for (int64_t i = 0; i < 5; ++i) {
    EXPECT_EQ(f32_bits(qk[i].d), f32_bits(wk.d[i])) << "q8_K block " << i;
    for (int j = 0; j < 256; ++j) ASSERT_EQ(qk[i].qs[j], wk.q[256 * i + j]) << i << " " << j;
    for (int j = 0; j < 16; ++j) ASSERT_EQ(qk[i].bsums[j], wk.bsums[16 * i + j]) << i << " " << j;
  }
  const PlainQ8 w0 = plain_q8_0(x);
  std::vector<ggml_dot::Q80> q0(k / 32);
  ggml_dot::quantize_q8_0(x.data(), k, q0.data());
  for (int64_t i = 0; i < k / 32; ++i) {
    EXPECT_EQ(f32_bits(q0[i].d), f32_bits(w0.d[i])) << "q8_0 block " << i;
    for (int j = 0; j < 32; ++j) ASSERT_EQ(q0[i].qs[j], w0.q[32 * i + j]) << i << " " << j;
  }
}

TEST(GgmlDot, ProductMode) {
  ::unsetenv("FERRY_GGUF_PRODUCTS");
  EXPECT_TRUE(ggml_dot::requested());  // llama.cpp's arithmetic is the default
  ::setenv("FERRY_GGUF_PRODUCTS", "exact", 1);
  EXPECT_FALSE(ggml_dot::requested());
  ::setenv("FERRY_GGUF_PRODUCTS", "fast", 1);
  EXPECT_TRUE(ggml_dot::requested());
  ::setenv("FERRY_GGUF_PRODUCTS", "quick", 1);
  EXPECT_ANY_THROW(ggml_dot::requested());
  ::setenv("FERRY_GGUF_PRODUCTS", "exact", 1);  // as the other tests here want it
  for (DType t : kFast) EXPECT_TRUE(ggml_dot::supports(t));
  EXPECT_FALSE(ggml_dot::supports(DType::q4_1));
  EXPECT_FALSE(ggml_dot::supports(DType::q5_1));
  EXPECT_FALSE(ggml_dot::supports(DType::f32));
}

// The AVX2 fast products against the plain integer math (the same integers; only the f32 scaling
// and summing order may differ: the rounding of a sum of k / blk terms), and against the exact path within
// the activation's rounding error Σ|w|·|x − x̂| plus both sides' f32 rounding.
TEST(GgmlDot, FastProductsMatchThePlainIntegerMathAndTheExactProduct) {
  if (simd_paths().empty()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(23);
  ThreadPool pool(2);
  for (DType t : kFast) {
    for (int64_t k : {256, 256 * 3, 4096}) {
      const int64_t n = 37;
      for (int64_t m : {1, 3}) {
        const Bytes w = random_blocks(rng, t, n, k);
        std::vector<float> x;
        for (int64_t r = 0; r < m; ++r) {
          const std::vector<float> xr = random_activations(rng, k);
          x.insert(x.end(), xr.begin(), xr.end());
        }
        std::vector<float> bias(static_cast<std::size_t>(n));
        for (auto& v : bias) v = static_cast<float>(static_cast<int>(rng() % 200) - 100) / 8;
        std::vector<float> fast(static_cast<std::size_t>(m * n));
        std::vector<float> exact(static_cast<std::size_t>(m * n));
        ggml_dot::linear(x.data(), m, k, w.data(), t, n, bias.data(), fast.data(), pool);
        scalar::linear(x.data(), m, k, w.data(), t, n, bias.data(), exact.data(), pool);
        const auto rb = static_cast<int64_t>(ggml_row_bytes(t, k));
        for (int64_t r = 0; r < m; ++r) {
          const std::vector<float> xr(x.begin() + r * k, x.begin() + (r + 1) * k);
          const bool small = ggml_block_elems(t) == 32;
          const PlainQ8 a = small ? plain_q8_0(xr) : plain_q8_k(xr);
          const int64_t blk = small ? 32 : 256;
          for (int64_t o = 0; o < n; ++o) {
            const unsigned char* row = w.data() + o * rb;
            double sum_abs = 0;
            const float plain = plain_fast_dot(row, t, k, a, sum_abs) + bias[o];
            const float got = fast[r * n + o];
            const double u = std::ldexp(1.0, -24);
            const std::string at = std::string(dtype_name(t)) + " k=" + std::to_string(k) +
                                   " m=" + std::to_string(m) + " row " + std::to_string(r) +
                                   " out " + std::to_string(o);
            // Both are f32 sums of k / blk block terms (each with a rounding or two), in
            // different orders: each within (k / blk + 16)·u·Σ|term| of the exact sum.
            EXPECT_LE(std::fabs(static_cast<double>(got) - plain),
                      2 * static_cast<double>(k / blk + 16) * u * (sum_abs + std::fabs(bias[o])))
                << at << ": fast " << got << ", plain " << plain;
            // Against the exact product: Σ|w|·|x − x̂| + f32 rounding of both sums.
            const std::vector<float> wd = plain_decode(row, t, k);
            double bound = 0;
            double mag = std::fabs(bias[o]);
            for (int64_t j = 0; j < k; ++j) {
              const double xh = static_cast<double>(a.d[j / blk]) * a.q[j];
              bound += std::fabs(static_cast<double>(wd[j])) * std::fabs(xr[j] - xh);
              mag += std::fabs(static_cast<double>(wd[j]) * xr[j]);
            }
            bound += 2 * (k + 16) * u * (mag + sum_abs);
            EXPECT_LE(std::fabs(static_cast<double>(got) - exact[r * n + o]), bound)
                << at << ": fast " << got << ", exact " << exact[r * n + o];
          }
        }
      }
    }
  }
}

TEST(GgmlDot, FastProductsDoNotDependOnTheThreadCount) {
  if (simd_paths().empty()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(29);
  ThreadPool one(1);
  ThreadPool two(2);
  for (DType t : kFast) {
    const int64_t k = 512;
    const int64_t n = 300;
    const Bytes w = random_blocks(rng, t, n, k);
    const std::vector<float> x = random_activations(rng, k);
    std::vector<float> a(n);
    std::vector<float> b(n);
    ggml_dot::linear(x.data(), 1, k, w.data(), t, n, nullptr, a.data(), one);
    ggml_dot::linear(x.data(), 1, k, w.data(), t, n, nullptr, b.data(), two);
    EXPECT_TRUE(same_bits(dtype_name(t).data(), a.data(), b.data(), n));
  }
}


// Many rows of activations share each unpacked weight block (batches, drafts, prompts), and a
// row's result is the one it gets alone, bit for bit, whatever its place in a group of rows — also
// where (VNNI, q5_0) the many-row product takes weight rows two at a time and decoding one
// at a time (n odd: a last weight row goes alone).
TEST(GgmlDot, ARowGetsTheSameBitsAloneOrAmongOthers) {
  if (simd_paths().empty()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(37);
  ThreadPool pool(2);
  for (DType t : kFast) {
    const int64_t k = 512;
    const int64_t n = 41;
    const int64_t m = 11;  // groups of 4, 4 and 3
    const Bytes w = random_blocks(rng, t, n, k);
    std::vector<float> x;
    for (int64_t r = 0; r < m; ++r) {
      const std::vector<float> xr = random_activations(rng, k);
      x.insert(x.end(), xr.begin(), xr.end());
    }
    std::vector<float> bias(static_cast<std::size_t>(n), 0.25f);
    std::vector<float> all(static_cast<std::size_t>(m * n));
    ggml_dot::linear(x.data(), m, k, w.data(), t, n, bias.data(), all.data(), pool);
    for (int64_t r = 0; r < m; ++r) {
      std::vector<float> alone(static_cast<std::size_t>(n));
      ggml_dot::linear(x.data() + r * k, 1, k, w.data(), t, n, bias.data(), alone.data(), pool);
      const std::string at = std::string(dtype_name(t)) + " row " + std::to_string(r);
      EXPECT_TRUE(same_bits(at.c_str(), alone.data(), all.data() + r * n, n));
    }
    // The AVX2 row dots directly too (linear() above takes the VNNI ones where they exist).
    const bool small = ggml_block_elems(t) == 32;
    const int64_t nb = k / (small ? 32 : 256);
    std::vector<ggml_dot::Q8K> qk(static_cast<std::size_t>(4 * (k / 256)));
    std::vector<ggml_dot::Q80> q0(static_cast<std::size_t>(4 * (k / 32)));
    for (int64_t r = 0; r < 4; ++r) {
      ggml_dot::quantize_q8_k(x.data() + r * k, k, qk.data() + r * (k / 256));
      ggml_dot::quantize_q8_0(x.data() + r * k, k, q0.data() + r * (k / 32));
    }
    const auto rb = static_cast<int64_t>(ggml_row_bytes(t, k));
    for (int64_t o = 0; o < n; ++o) {
      if (t != DType::q5_0 && t != DType::q6_k) break;  // the others take panels (below)
      const unsigned char* row = w.data() + o * rb;
      for (int rows = 1; rows <= 4; ++rows) {
        float got[4];
        if (small) {
          ggml_dot::avx2::rows_32(t, row, q0.data(), nb, rows, got);
        } else {
          ggml_dot::avx2::rows_k(t, row, qk.data(), nb, rows, got);
        }
        for (int r = 0; r < rows; ++r) {
          float one = 0;
          if (small) {
            ggml_dot::avx2::rows_32(t, row, q0.data() + r * nb, nb, 1, &one);
          } else {
            ggml_dot::avx2::rows_k(t, row, qk.data() + r * nb, nb, 1, &one);
          }
          ASSERT_EQ(f32_bits(got[r]), f32_bits(one))
              << dtype_name(t) << " out " << o << " row " << r << " of " << rows;
        }
      }
    }
  }
}

// ggml_dot.hpp's panel order written plainly: each block's integer sum Σ w·q (q4_0: w = nibble −
// 8; q8_0: the stored byte), scaled by the f32 product d_w·d_x and added by one FMA, in block
// order from 0.
float plain_panel_order(DType t, const unsigned char* row, const ggml_dot::Q80* x, int64_t nb) {
  const int64_t bytes = t == DType::q4_0 ? 18 : 34;
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const unsigned char* blk = row + b * bytes;
    uint16_t h;
    std::memcpy(&h, blk, 2);
    int32_t sum = 0;
    for (int l = 0; l < 16; ++l) {
      if (t == DType::q4_0) {
        sum += ((blk[2 + l] & 0xF) - 8) * x[b].qs[l];
        sum += ((blk[2 + l] >> 4) - 8) * x[b].qs[l + 16];
      } else {
        sum += static_cast<int8_t>(blk[2 + l]) * x[b].qs[l];
        sum += static_cast<int8_t>(blk[2 + 16 + l]) * x[b].qs[l + 16];
      }
    }
    const float scale = f16_to_f32(h) * x[b].d;
    acc = std::fma(scale, static_cast<float>(sum), acc);
  }
  return acc;
}

// ggml_dot.hpp's q4_k / q5_k panel order written plainly: per block S = Σ_j sc_j·Σ code·q and
// M = Σ_j mn_j·(bsums_2j + bsums_2j+1) in integers, then acc = fma(d·d_x, S, acc) and
// acc = fma(−(dmin·d_x), M, acc), in block order from 0 (ggml's get_scale_min_k4 for the scales;
// q5_k's code has bit j of qh[e] as its fifth bit).
float plain_k_order(DType t, const unsigned char* row, const ggml_dot::Q8K* x, int64_t nb) {
  const bool five = t == DType::q5_k;
  const int64_t bytes = five ? 176 : 144;
  const int64_t nibbles = five ? 48 : 16;
  float acc = 0.f;
  for (int64_t b = 0; b < nb; ++b) {
    const unsigned char* blk = row + b * bytes;
    uint16_t hd;
    uint16_t hm;
    std::memcpy(&hd, blk, 2);
    std::memcpy(&hm, blk + 2, 2);
    const unsigned char* q = blk + 4;
    int32_t s = 0;
    int32_t mins = 0;
    for (int j = 0; j < 8; ++j) {
      int sc;
      int mn;
      ggml_scale_min_k4(j, q, sc, mn);
      int32_t sum = 0;
      for (int e = 0; e < 32; ++e) {
        const unsigned char byte = blk[nibbles + 32 * (j / 2) + e];
        int code = j % 2 == 0 ? (byte & 0xF) : (byte >> 4);
        if (five) code |= ((blk[16 + e] >> j) & 1) << 4;
        sum += code * x[b].qs[32 * j + e];
      }
      s += sc * sum;
      mins += mn * (x[b].bsums[2 * j] + x[b].bsums[2 * j + 1]);
    }
    acc = std::fma(f16_to_f32(hd) * x[b].d, static_cast<float>(s), acc);
    acc = std::fma(-(f16_to_f32(hm) * x[b].d), static_cast<float>(mins), acc);
  }
  return acc;
}

// One matrix w of type t (n rows, k columns) against the plain order for m random rows of x
// (Block: Q80 for q4_0 / q8_0, Q8K for q4_k / q5_k): linear() with a bias, then the first panel
// straight from each instruction set, without the bias — every output bit for bit.
template <class Block>
void check_panels(DType t, const Bytes& w, int64_t n, int64_t k, int64_t m, std::mt19937& rng,
                  ThreadPool& pool) {
  constexpr bool kSmall = std::is_same_v<Block, ggml_dot::Q80>;
  constexpr int64_t kP = ggml_dot::kPanelRows;
  const int64_t nb = k / (kSmall ? 32 : 256);
  const auto rb = static_cast<int64_t>(ggml_row_bytes(t, k));
  std::vector<float> x;
  for (int64_t r = 0; r < m; ++r) {
    const std::vector<float> xr = random_activations(rng, k);
    x.insert(x.end(), xr.begin(), xr.end());
  }
  std::vector<Block> xq(static_cast<std::size_t>(m * nb));
  for (int64_t r = 0; r < m; ++r) {
    if constexpr (kSmall) {
      ggml_dot::quantize_q8_0(x.data() + r * k, k, xq.data() + r * nb);
    } else {
      ggml_dot::quantize_q8_k(x.data() + r * k, k, xq.data() + r * nb);
    }
  }
  const auto plain = [&](int64_t o, int64_t r) {
    if constexpr (kSmall) {
      return plain_panel_order(t, w.data() + o * rb, xq.data() + r * nb, nb);
    } else {
      return plain_k_order(t, w.data() + o * rb, xq.data() + r * nb, nb);
    }
  };
  std::vector<float> bias(static_cast<std::size_t>(n));
  for (auto& v : bias) v = static_cast<float>(static_cast<int>(rng() % 200) - 100) / 8;
  std::vector<float> y(static_cast<std::size_t>(m * n));
  ggml_dot::linear(x.data(), m, k, w.data(), t, n, bias.data(), y.data(), pool);
  std::vector<float> want(static_cast<std::size_t>(m * n));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t o = 0; o < n; ++o) want[r * n + o] = plain(o, r) + bias[o];
  }
  const std::string at =
      std::string(dtype_name(t)) + " k=" + std::to_string(k) + " m=" + std::to_string(m);
  EXPECT_TRUE(same_bits(("linear " + at).c_str(), y.data(), want.data(), m * n));
  std::vector<unsigned char> scratch(
      static_cast<std::size_t>(ggml_dot::panel_scratch_bytes(t, nb)));
  std::vector<float> out(static_cast<std::size_t>(m * kP));
  std::vector<float> first(static_cast<std::size_t>(m * kP));
  for (int64_t r = 0; r < m; ++r) {
    for (int64_t o = 0; o < kP; ++o) first[r * kP + o] = plain(o, r);
  }
  const auto run = [&](bool vnni) {
    unsigned char* sc = scratch.data();
    if constexpr (kSmall) {
      if (vnni) return ggml_dot::vnni::panel_32(t, w.data(), rb, xq.data(), nb, m, out.data(), sc);
      ggml_dot::avx2::panel_32(t, w.data(), rb, xq.data(), nb, m, out.data(), sc);
    } else {
      if (vnni) return ggml_dot::vnni::panel_k(t, w.data(), rb, xq.data(), nb, m, out.data(), sc);
      ggml_dot::avx2::panel_k(t, w.data(), rb, xq.data(), nb, m, out.data(), sc);
    }
  };
  run(false);
  EXPECT_TRUE(same_bits(("avx2 " + at).c_str(), out.data(), first.data(), m * kP));
  if (ggml_dot::uses_vnni()) {
    run(true);
    EXPECT_TRUE(same_bits(("vnni " + at).c_str(), out.data(), first.data(), m * kP));
  }
}

// q4_0 and q8_0 take 16 weight rows to the lanes of a vector (8 on AVX2) and sum each block
// whole: every output, through linear() (n = 37: two panels and a zero-padded one; decode and
// prompt row counts) and through each instruction set's panel directly, is the plain order's
// bits. Rows of extreme codes (q4_0 all 15 and all 0, q8_0 all 127 and all −128) against ±127
// activations (the outliers) reach the bounds of the AVX2 int16 sums.
TEST(GgmlDot, PanelsSumEachBlockWholeInBlockOrder) {
  if (simd_paths().empty()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(41);
  ThreadPool pool(2);
  for (DType t : {DType::q4_0, DType::q8_0}) {
    const int64_t bytes = t == DType::q4_0 ? 18 : 34;
    const int64_t codes = bytes - 2;
    const unsigned char high = t == DType::q4_0 ? 0xFF : 0x7F;
    const unsigned char low = t == DType::q4_0 ? 0x00 : 0x80;
    for (int64_t k : {32, 256, 4096}) {
      const int64_t n = 37;
      const int64_t nb = k / 32;
      const auto rb = static_cast<int64_t>(ggml_row_bytes(t, k));
      Bytes w = random_blocks(rng, t, n, k);
      for (int64_t b = 0; b < nb; ++b) {
        std::fill_n(w.data() + b * bytes + 2, codes, high);
        std::fill_n(w.data() + rb + b * bytes + 2, codes, low);
      }
      for (int64_t m : {1, 2, 4, 5, 11}) check_panels<ggml_dot::Q80>(t, w, n, k, m, rng, pool);
    }
  }
}

// q4_k's and q5_k's panels, as PanelsSumEachBlockWholeInBlockOrder for q4_0 / q8_0: linear() and
// each instruction set's panel against the plain order, bit for bit, with a row of all-ones
// codes (q5_k: 31) and the largest scales (the AVX2 int16 sums' bound) and a row of zero codes.
TEST(GgmlDot, KPanelsSumEachBlockWholeInBlockOrder) {
  if (simd_paths().empty()) GTEST_SKIP() << "no AVX2";
  std::mt19937 rng(43);
  ThreadPool pool(2);
  for (DType t : {DType::q4_k, DType::q5_k}) {
    const int64_t bytes = t == DType::q5_k ? 176 : 144;
    for (int64_t k : {256, 256 * 3, 4096}) {
      const int64_t n = 37;
      const int64_t nb = k / 256;
      const auto rb = static_cast<int64_t>(ggml_row_bytes(t, k));
      Bytes w = random_blocks(rng, t, n, k);
      for (int64_t b = 0; b < nb; ++b) {
        // Row 0: scales and minimums 63, every code bit set; row 1: codes 0.
        std::fill_n(w.data() + b * bytes + 4, bytes - 4, static_cast<unsigned char>(0xFF));
        std::fill_n(w.data() + rb + b * bytes + 16, bytes - 16, static_cast<unsigned char>(0x00));
      }
      for (int64_t m : {1, 3, 4, 6, 9}) check_panels<ggml_dot::Q8K>(t, w, n, k, m, rng, pool);
    }
  }
}

// The AVX512-VNNI dots give the AVX2 dots' integers, hence the same floats, bit for bit.
TEST(GgmlDot, VnniDotsEqualTheAvx2Dots) {
  if (simd_paths().empty() || !ggml_dot::uses_vnni()) GTEST_SKIP() << "no AVX512-VNNI";
  std::mt19937 rng(31);
  for (DType t : kFast) {
    const int64_t k = 2048;
    const int64_t n = 64;
    const Bytes w = random_blocks(rng, t, n, k);
    const std::vector<float> x = random_activations(rng, k);
    std::vector<ggml_dot::Q8K> qk(k / 256);
    std::vector<ggml_dot::Q80> q0(k / 32);
    ggml_dot::quantize_q8_k(x.data(), k, qk.data());
    ggml_dot::quantize_q8_0(x.data(), k, q0.data());
    const auto rb = static_cast<int64_t>(ggml_row_bytes(t, k));
    for (int64_t o = 0; o < n; ++o) {
      const unsigned char* row = w.data() + o * rb;
      float a = 0;
      float b = 0;
      if (t == DType::q8_0 || t == DType::q4_0) {
        break;  // panels, compared in PanelsSumEachBlockWholeInBlockOrder
      } else if (t == DType::q5_0) {
        a = ggml_dot::avx2::dot_q5_0(row, q0.data(), k / 32);
        b = ggml_dot::vnni::dot_q5_0(row, q0.data(), k / 32);
      } else if (t == DType::q4_k || t == DType::q5_k) {
        break;  // panels, compared in KPanelsSumEachBlockWholeInBlockOrder
      } else {
        a = ggml_dot::avx2::dot_q6_k(row, qk.data(), k / 256);
        b = ggml_dot::vnni::dot_q6_k(row, qk.data(), k / 256);
      }
      ASSERT_EQ(f32_bits(a), f32_bits(b)) << dtype_name(t) << " row " << o << ": " << a << " " << b;
    }
  }
}

}  // namespace
}  // namespace ferry::kernels::cpu
