// FERRY_GGUF_PRODUCTS=fast (ggml_dot.hpp): the activation quantizers, transcribed from the
// algorithm of ggml's quantize_row_q8_K_ref and quantize_row_q8_0_ref, and the threading over
// weight rows. The row dots are in ggml_dot_avx2.cpp and ggml_dot_avx512.cpp.
#include "kernels/cpu/ggml_dot.hpp"

#include <algorithm>
#include <cmath>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/detail/paths.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/ggml_quant.hpp"
#include "runtime/core/half.hpp"

namespace ferry::kernels::cpu::ggml_dot {

// ggml's q8_K: per block of 256, max is the element of largest magnitude with its sign,
// iscale = −127 / max, q = min(127, nearest(iscale·x)) (nearest: ties to even, as ggml's
// nearest_int), d = 1 / iscale; a block of zeros is d = 0, q = 0.
void quantize_q8_k(const float* x, int64_t k, Q8K* out) {
  const int64_t nb = k / 256;
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * 256;
    Q8K& y = out[i];
    float amax = 0.0f;
    float max = 0.0f;
    for (int j = 0; j < 256; ++j) {
      const float ax = std::fabs(xb[j]);
      if (ax > amax) {
        amax = ax;
        max = xb[j];
      }
    }
    if (amax == 0.0f) {
      y.d = 0.0f;
      std::fill(y.qs, y.qs + 256, int8_t{0});
      std::fill(y.bsums, y.bsums + 16, int16_t{0});
      continue;
    }
    const float iscale = -127.0f / max;
    for (int j = 0; j < 256; ++j) {
      const auto v = static_cast<int>(std::nearbyint(iscale * xb[j]));
      y.qs[j] = static_cast<int8_t>(std::min(127, v));
    }
    for (int j = 0; j < 16; ++j) {
      int s = 0;
      for (int l = 0; l < 16; ++l) s += y.qs[16 * j + l];
      y.bsums[j] = static_cast<int16_t>(s);
    }
    y.d = 1.0f / iscale;
  }
}

// ggml's q8_0: per block of 32, d = amax / 127 (stored as f16), q = round(x / d) with the
// unrounded d's inverse, ties away from zero (roundf).
void quantize_q8_0(const float* x, int64_t k, Q80* out) {
  const int64_t nb = k / 32;
  for (int64_t i = 0; i < nb; ++i) {
    const float* xb = x + i * 32;
    float amax = 0.0f;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(xb[j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    out[i].d = f16_to_f32(f32_to_f16(d));
    for (int j = 0; j < 32; ++j) out[i].qs[j] = static_cast<int8_t>(std::round(xb[j] * id));
    out[i].sum = 0;
    for (int j = 0; j < 32; ++j) out[i].sum += out[i].qs[j];
    for (int j = 0; j < 8; ++j) {
      out[i].neg8_sum4[j] = -8 * (out[i].qs[4 * j] + out[i].qs[4 * j + 1] +
                                  out[i].qs[4 * j + 2] + out[i].qs[4 * j + 3]);
    }
  }
}

bool supports(DType wdt) {
  return wdt == DType::q4_k || wdt == DType::q5_k || wdt == DType::q6_k || wdt == DType::q8_0 ||
         wdt == DType::q4_0 || wdt == DType::q5_0;
}

bool requested() {
  const char* env = std::getenv("FERRY_GGUF_PRODUCTS");
  const std::string want = env != nullptr ? env : "";
  FERRY_EXPECT(want.empty() || want == "exact" || want == "fast",
               "FERRY_GGUF_PRODUCTS={} is not a product mode; use fast (llama.cpp's arithmetic, "
               "the default) or exact (every product in f32)",
               want);
  return want != "exact";
}

bool uses_vnni() {
#if defined(FERRY_KERNELS_AVX512)
  static const bool vnni = [] {
    const char* env = std::getenv("FERRY_SIMD");
    if (env != nullptr && std::string(env) == "avx2") return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
  }();
  return vnni;
#else
  return false;
#endif
}

#if defined(FERRY_KERNELS_AVX2)
namespace {

// Each output row o: one weight row dotted with every quantized activation row, kDotRows rows
// of activations per call so each weight block is unpacked once for them (a row's result is the
// same in any group: the row dots' contract).
// pair, where it is not null, does two weight rows at once (o and o + 1, out and out + kDotRows)
// with rows' results for each.
template <class Block, class Rows, class Pair = std::nullptr_t>
void run(const Block* xq, int64_t m, int64_t nb, const unsigned char* w, uint64_t row_bytes,
         int64_t n, const float* bias, float* y, ThreadPool& pool, Rows rows, Pair pair = nullptr) {
  constexpr int64_t kGroup = detail::kLinearRowGroup;
  const int64_t n_groups = (n + kGroup - 1) / kGroup;
  // As run_linear in ops.cpp: a chunk carries ~256K multiply-adds at least.
  const int64_t macs_per_group =
      std::max<int64_t>(1, m * nb * static_cast<int64_t>(sizeof(Block::qs)) * kGroup);
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 18) / macs_per_group);
  pool.parallel_for(n_groups, min_chunk, [&](int64_t g_begin, int64_t g_end) {
    float out[2 * kDotRows];
    const auto put = [&](int64_t r, int take, int64_t o, const float* res) {
      for (int t = 0; t < take; ++t)
        y[(r + t) * n + o] = bias != nullptr ? res[t] + bias[o] : res[t];
    };
    // A group's weight rows stay in L1/L2 while every group of activation rows passes them.
    for (int64_t g = g_begin; g < g_end; ++g) {
      const int64_t o_end = std::min(n, (g + 1) * kGroup);
      for (int64_t r = 0; r < m; r += kDotRows) {
        const int take = static_cast<int>(std::min<int64_t>(kDotRows, m - r));
        int64_t o = g * kGroup;
        if constexpr (!std::is_same_v<Pair, std::nullptr_t>) {
          for (; o + 1 < o_end; o += 2) {
            pair(w + static_cast<uint64_t>(o) * row_bytes, xq + r * nb, nb, take, out,
                 out + kDotRows);
            put(r, take, o, out);
            put(r, take, o + 1, out + kDotRows);
          }
        }
        for (; o < o_end; ++o) {
          rows(w + static_cast<uint64_t>(o) * row_bytes, xq + r * nb, nb, take, out);
          put(r, take, o, out);
        }
      }
    }
  });
}

// The activation rows' quantization, a row per task (prompts: a few percent of a layer's time on
// one thread).
template <class F>
void quantize_rows(ThreadPool& pool, int64_t m, F f) {
  if (m == 1) {
    f(0);
    return;
  }
  pool.parallel_for(m, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) f(r);
  });
}

// q4_0, q8_0, q4_k and q5_k: kPanelRows weight rows at a time (ggml_dot.hpp's panels;
// kernel(src, out, scratch) runs one group), a zero-padded copy for the last group when n is not a
// multiple of 16 (its padding rows' results are dropped).
template <class Kernel>
void run_panels(DType wdt, int64_t m, int64_t nb, int64_t block_elems, const unsigned char* w,
                uint64_t row_bytes, int64_t n, const float* bias, float* y, ThreadPool& pool,
                Kernel kernel) {
  FERRY_EXPECT(row_bytes * (kPanelRows - 1) <= uint64_t{INT32_MAX},
               "linear: {} rows of {} bytes are too long for the panel products", dtype_name(wdt),
               row_bytes);
  const int64_t n_groups = (n + kPanelRows - 1) / kPanelRows;
  const int64_t macs_per_group = std::max<int64_t>(1, m * nb * block_elems * kPanelRows);
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 18) / macs_per_group);
  pool.parallel_for(n_groups, min_chunk, [&](int64_t g_begin, int64_t g_end) {
    std::vector<float> out(static_cast<std::size_t>(m * kPanelRows));
    std::vector<unsigned char> scratch(
        m > kDotRows ? static_cast<std::size_t>(panel_scratch_bytes(wdt, nb)) : 0);
    std::vector<unsigned char> padded;
    for (int64_t g = g_begin; g < g_end; ++g) {
      const int64_t o0 = g * kPanelRows;
      const int64_t rows = std::min<int64_t>(kPanelRows, n - o0);
      const unsigned char* src = w + static_cast<uint64_t>(o0) * row_bytes;
      if (rows < kPanelRows) {
        padded.assign(static_cast<std::size_t>(kPanelRows * row_bytes), 0);
        std::memcpy(padded.data(), src, static_cast<std::size_t>(rows * row_bytes));
        src = padded.data();
      }
      kernel(src, out.data(), scratch.data());
      for (int64_t r = 0; r < m; ++r) {
        const float* res = out.data() + r * kPanelRows;
        for (int64_t o = 0; o < rows; ++o)
          y[r * n + o0 + o] = bias != nullptr ? res[o] + bias[o0 + o] : res[o];
      }
    }
  });
}

}  // namespace

void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y, ThreadPool& pool) {
  const auto* wb = static_cast<const unsigned char*>(w);
  const uint64_t row_bytes = ggml_row_bytes(wdt, k);
#if defined(FERRY_KERNELS_AVX512)
  const bool vnni = uses_vnni();
#endif
  if (wdt == DType::q8_0 || wdt == DType::q4_0 || wdt == DType::q5_0) {
    const int64_t nb = k / 32;
    std::vector<Q80> xq(static_cast<std::size_t>(m * nb));
    quantize_rows(pool, m, [&](int64_t r) { quantize_q8_0(x + r * k, k, xq.data() + r * nb); });
    if (wdt == DType::q4_0 || wdt == DType::q8_0) {
      run_panels(wdt, m, nb, 32, wb, row_bytes, n, bias, y, pool,
                 [&](const unsigned char* src, float* out, unsigned char* scratch) {
#if defined(FERRY_KERNELS_AVX512)
                   if (vnni) {
                     vnni::panel_32(wdt, src, row_bytes, xq.data(), nb, m, out, scratch);
                     return;
                   }
#endif
                   avx2::panel_32(wdt, src, row_bytes, xq.data(), nb, m, out, scratch);
                 });
      return;
    }
    const auto single = [&](const unsigned char* row, const Q80* xr, int64_t nblk, int rows,
                            float* out) {
#if defined(FERRY_KERNELS_AVX512)
      if (vnni) return vnni::rows_32(wdt, row, xr, nblk, rows, out);  // NOLINT
#endif
      avx2::rows_32(wdt, row, xr, nblk, rows, out);
    };
#if defined(FERRY_KERNELS_AVX512)
    // Prompts on q5_0 with VNNI: two weight rows to a 512-bit register. Decoding (one row of x)
    // keeps the single-row dots: there the weights' bytes, not the arithmetic, set the pace.
    if (vnni && m > 1) {
      run(xq.data(), m, nb, wb, row_bytes, n, bias, y, pool, single,
          [&](const unsigned char* row, const Q80* xr, int64_t nblk, int rows, float* out0,
              float* out1) {
            vnni::rows_32_pair(wdt, row, row_bytes, xr, nblk, rows, out0, out1);
          });
      return;
    }
#endif
    run(xq.data(), m, nb, wb, row_bytes, n, bias, y, pool, single);
    return;
  }
  const int64_t nb = k / 256;
  std::vector<Q8K> xq(static_cast<std::size_t>(m * nb));
  quantize_rows(pool, m, [&](int64_t r) { quantize_q8_k(x + r * k, k, xq.data() + r * nb); });
  if (wdt == DType::q4_k || wdt == DType::q5_k) {
    run_panels(wdt, m, nb, 256, wb, row_bytes, n, bias, y, pool,
               [&](const unsigned char* src, float* out, unsigned char* scratch) {
#if defined(FERRY_KERNELS_AVX512)
                 if (vnni) {
                   vnni::panel_k(wdt, src, row_bytes, xq.data(), nb, m, out, scratch);
                   return;
                 }
#endif
                 avx2::panel_k(wdt, src, row_bytes, xq.data(), nb, m, out, scratch);
               });
    return;
  }
  run(xq.data(), m, nb, wb, row_bytes, n, bias, y, pool,
      [&](const unsigned char* row, const Q8K* xr, int64_t nblk, int rows, float* out) {
#if defined(FERRY_KERNELS_AVX512)
        if (vnni) return vnni::rows_k(wdt, row, xr, nblk, rows, out);
#endif
        avx2::rows_k(wdt, row, xr, nblk, rows, out);
      });
}
#else
void linear(const float*, int64_t, int64_t, const void*, DType, int64_t, const float*, float*,
            ThreadPool&) {
  FERRY_EXPECT(false, "FERRY_GGUF_PRODUCTS=fast needs the AVX2 kernels, which this build lacks");
}
#endif

}  // namespace ferry::kernels::cpu::ggml_dot
