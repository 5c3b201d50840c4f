// CPU kernel benchmarks. Rooflines: a read loop that sums a 1 GiB buffer with AVX2 loads on every
// thread of the same pool the kernels use — the memory bandwidth decode can hope for — and an FMA
// loop on every thread, the compute peak. Decode's matrix–vector products (m = 1) stream each
// weight once, so their bytes/s (weight bytes per second) should approach the read loop's; read
// the ratio off the bytes_per_second counters. Prompt products (many rows) are compute bound and
// report FLOP/s, and peak_frac: their best iteration against the FMA loop's, from the same run.
//
//   bench_kernels --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
//
// Shapes are GPT-J-6B's: n_embd 4096, n_inner 16384, vocab 50400. The 4096→4096 f16 matrix is
// 32 MiB and may partly sit in a large L3; the others are 128–394 MiB.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/thread_pool.hpp"

namespace {

using ferry::DType;
using ferry::ThreadPool;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<unsigned char, FreeDeleter>;

Buffer allocate(std::size_t nbytes) {
  const std::size_t rounded = (nbytes + 4095) / 4096 * 4096;
  return Buffer(static_cast<unsigned char*>(std::aligned_alloc(4096, rounded)));
}

// Deterministic weights in [-1, 1) of the given dtype, written with a cheap LCG so hundreds of
// MiB fill quickly (the values only need to be ordinary, finite numbers).
Buffer make_weights(DType dt, std::size_t count) {
  Buffer buf = allocate(count * ferry::dtype_size(dt));
  uint32_t state = 12345;
  auto next = [&state] {
    state = state * 1664525u + 1013904223u;
    return state;
  };
  if (dt == DType::f32) {
    auto* w = reinterpret_cast<float*>(buf.get());
    for (std::size_t i = 0; i < count; ++i) {
      w[i] = static_cast<float>(static_cast<int32_t>(next())) * 4.656613e-10f;
    }
  } else {
    auto* w = reinterpret_cast<uint16_t*>(buf.get());
    // f16 0x2000–0x3bff and bf16 0x3c00–0x3f7f are values of magnitude 2^-7 … 1, either sign.
    const uint16_t base = dt == DType::f16 ? 0x2000 : 0x3c00;
    const uint16_t span = dt == DType::f16 ? 0x1c00 : 0x0380;
    for (std::size_t i = 0; i < count; ++i) {
      const uint32_t r = next();
      w[i] = static_cast<uint16_t>((base + (r >> 8) % span) | ((r & 1u) << 15));
    }
  }
  return buf;
}

// ---- roofline: read bandwidth ------------------------------------------------------------------

__attribute__((target("avx2"))) float sum_avx2(const float* p, std::size_t n) {
  __m256 a0 = _mm256_setzero_ps();
  __m256 a1 = _mm256_setzero_ps();
  __m256 a2 = _mm256_setzero_ps();
  __m256 a3 = _mm256_setzero_ps();
  for (std::size_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
  }
  const __m256 s = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  float total = 0.0f;
  for (float v : lanes) total += v;
  return total;
}

void BM_MemoryReadAvx2(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2")) {
    state.SkipWithError("no AVX2 on this processor");
    return;
  }
  constexpr std::size_t kBytes = std::size_t{1} << 30;
  constexpr std::size_t kFloats = kBytes / sizeof(float);
  constexpr std::size_t kBlock = std::size_t{1} << 20;  // floats per work item (4 MiB)
  Buffer buf = allocate(kBytes);
  auto* data = reinterpret_cast<float*>(buf.get());
  for (std::size_t i = 0; i < kFloats; ++i) data[i] = 1.0f;  // fault every page in
  ThreadPool& pool = ferry::default_thread_pool();
  const auto n_blocks = static_cast<int64_t>(kFloats / kBlock);
  std::vector<float> partial(static_cast<std::size_t>(n_blocks));
  for (auto _ : state) {
    pool.parallel_for(n_blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        partial[static_cast<std::size_t>(i)] =
            sum_avx2(data + static_cast<std::size_t>(i) * kBlock, kBlock);
      }
    });
    benchmark::DoNotOptimize(partial.data());
    benchmark::ClobberMemory();
  }
  state.counters["bytes_per_second"] =
      benchmark::Counter(static_cast<double>(kBytes) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate, benchmark::Counter::kIs1024);
  state.counters["threads"] = pool.size();
}
BENCHMARK(BM_MemoryReadAvx2)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- roofline: FMA peak ------------------------------------------------------------------------

// FLOP/s of the FMA peak loop below, for BM_Linear's peak_frac counter (0 until it has run).
double g_fma_peak_flops = 0.0;

// 12 independent chains of 8-lane FMAs: enough to cover the FMA latency (4 cycles) on two FMA
// pipes, so the loop runs at the processor's FMA throughput. Returns a sum so nothing is dropped.
__attribute__((target("avx2,fma"))) float fma_chains(int64_t iters) {
  // Twelve named registers (an array would live on the stack, adding a store and a load to
  // every chain); the empty asm keeps the compiler from folding the loop.
  __m256 a0 = _mm256_set1_ps(0.0f), a1 = _mm256_set1_ps(1e-3f), a2 = _mm256_set1_ps(2e-3f);
  __m256 a3 = _mm256_set1_ps(3e-3f), a4 = _mm256_set1_ps(4e-3f), a5 = _mm256_set1_ps(5e-3f);
  __m256 a6 = _mm256_set1_ps(6e-3f), a7 = _mm256_set1_ps(7e-3f), a8 = _mm256_set1_ps(8e-3f);
  __m256 a9 = _mm256_set1_ps(9e-3f), a10 = _mm256_set1_ps(1e-2f), a11 = _mm256_set1_ps(1.1e-2f);
  const __m256 a = _mm256_set1_ps(0.999999f);
  const __m256 b = _mm256_set1_ps(1e-7f);
  for (int64_t t = 0; t < iters; ++t) {
    a0 = _mm256_fmadd_ps(a0, a, b);
    a1 = _mm256_fmadd_ps(a1, a, b);
    a2 = _mm256_fmadd_ps(a2, a, b);
    a3 = _mm256_fmadd_ps(a3, a, b);
    a4 = _mm256_fmadd_ps(a4, a, b);
    a5 = _mm256_fmadd_ps(a5, a, b);
    a6 = _mm256_fmadd_ps(a6, a, b);
    a7 = _mm256_fmadd_ps(a7, a, b);
    a8 = _mm256_fmadd_ps(a8, a, b);
    a9 = _mm256_fmadd_ps(a9, a, b);
    a10 = _mm256_fmadd_ps(a10, a, b);
    a11 = _mm256_fmadd_ps(a11, a, b);
    __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6),
                     "+x"(a7), "+x"(a8), "+x"(a9), "+x"(a10), "+x"(a11));
  }
  const __m256 s = _mm256_add_ps(
      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                    _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))),
      _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, s);
  return lanes[0];
}

// The same 12 chains with 16-lane FMAs. Zen 4 splits each into two 256-bit halves (no gain over
// AVX2); Zen 5 and Intel's server cores run them whole, twice the FLOPs per instruction.
__attribute__((target("avx512f"))) float fma_chains_512(int64_t iters) {
  __m512 a0 = _mm512_set1_ps(0.0f), a1 = _mm512_set1_ps(1e-3f), a2 = _mm512_set1_ps(2e-3f);
  __m512 a3 = _mm512_set1_ps(3e-3f), a4 = _mm512_set1_ps(4e-3f), a5 = _mm512_set1_ps(5e-3f);
  __m512 a6 = _mm512_set1_ps(6e-3f), a7 = _mm512_set1_ps(7e-3f), a8 = _mm512_set1_ps(8e-3f);
  __m512 a9 = _mm512_set1_ps(9e-3f), a10 = _mm512_set1_ps(1e-2f), a11 = _mm512_set1_ps(1.1e-2f);
  const __m512 a = _mm512_set1_ps(0.999999f);
  const __m512 b = _mm512_set1_ps(1e-7f);
  for (int64_t t = 0; t < iters; ++t) {
    a0 = _mm512_fmadd_ps(a0, a, b);
    a1 = _mm512_fmadd_ps(a1, a, b);
    a2 = _mm512_fmadd_ps(a2, a, b);
    a3 = _mm512_fmadd_ps(a3, a, b);
    a4 = _mm512_fmadd_ps(a4, a, b);
    a5 = _mm512_fmadd_ps(a5, a, b);
    a6 = _mm512_fmadd_ps(a6, a, b);
    a7 = _mm512_fmadd_ps(a7, a, b);
    a8 = _mm512_fmadd_ps(a8, a, b);
    a9 = _mm512_fmadd_ps(a9, a, b);
    a10 = _mm512_fmadd_ps(a10, a, b);
    a11 = _mm512_fmadd_ps(a11, a, b);
    __asm__ volatile("" : "+v"(a0), "+v"(a1), "+v"(a2), "+v"(a3), "+v"(a4), "+v"(a5), "+v"(a6),
                     "+v"(a7), "+v"(a8), "+v"(a9), "+v"(a10), "+v"(a11));
  }
  const __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
      _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  return lanes[0] + lanes[15];
}

// One FMA-chain loop (chains(iters), lanes wide) on every thread of the pool, timed at its best
// iteration (the machine may be shared, and a peak is what it can do at best); g_fma_peak_flops
// keeps the highest peak any width reached.
void run_fma_peak(benchmark::State& state, float (*chains)(int64_t), int lanes, int64_t iters) {
  ThreadPool& pool = ferry::default_thread_pool();
  const int64_t items = pool.size();
  std::vector<float> out(static_cast<std::size_t>(items));
  const double flops =
      12.0 * lanes * 2 * static_cast<double>(iters) * static_cast<double>(items);
  double best_s = 0.0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    pool.parallel_for(items, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) out[static_cast<std::size_t>(i)] = chains(iters);
    });
    benchmark::DoNotOptimize(out.data());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (best_s == 0.0 || s < best_s) best_s = s;
  }
  const double peak = best_s > 0.0 ? flops / best_s : 0.0;
  g_fma_peak_flops = std::max(g_fma_peak_flops, peak);
  state.counters["flops"] =
      benchmark::Counter(flops * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.counters["best_flops"] = peak;
  state.counters["threads"] = pool.size();
}

// The f32 FMA peak on every thread of the pool the kernels use, 8 lanes wide: what a
// compute-bound product (a prompt's linear) is judged against where AVX-512 is absent or split.
void BM_FmaPeakAvx2(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    state.SkipWithError("no AVX2/FMA on this processor");
    return;
  }
  run_fma_peak(state, fma_chains, 8, int64_t{1} << 22);  // per work item: 12·8·2·4M = 805 MFLOP
}
BENCHMARK(BM_FmaPeakAvx2)->Unit(benchmark::kMillisecond)->UseRealTime();

// The 16-lane peak, where the processor has AVX-512: peak_frac is then judged against the higher
// of the two, the machine's real ceiling (on Zen 4 they are equal; Zen 5 doubles it).
void BM_FmaPeakAvx512(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx512f")) {
    state.SkipWithError("no AVX-512 on this processor");
    return;
  }
  run_fma_peak(state, fma_chains_512, 16, int64_t{1} << 21);
}
BENCHMARK(BM_FmaPeakAvx512)->Unit(benchmark::kMillisecond)->UseRealTime();

// ---- linear ------------------------------------------------------------------------------------

// Args: m, k (inputs), n (outputs), dtype.
void BM_Linear(benchmark::State& state) {
  const int64_t m = state.range(0);
  const int64_t k = state.range(1);
  const int64_t n = state.range(2);
  const auto dt = static_cast<DType>(state.range(3));
  const auto w_count = static_cast<std::size_t>(n * k);
  Buffer w = make_weights(dt, w_count);
  std::vector<float> x(static_cast<std::size_t>(m * k));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 13) * 0.01f - 0.06f;
  std::vector<float> bias(static_cast<std::size_t>(n), 0.5f);
  std::vector<float> y(static_cast<std::size_t>(m * n));
  ThreadPool& pool = ferry::default_thread_pool();
  double best_s = 0.0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    ferry::kernels::cpu::linear(x.data(), m, k, w.get(), dt, n, bias.data(), y.data(), pool);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (best_s == 0.0 || s < best_s) best_s = s;
  }
  // Against the FMA peak measured in this run (BM_FmaPeakAvx2 runs first), at the best
  // iteration's rate, as the peak is.
  if (g_fma_peak_flops > 0.0 && best_s > 0.0) {
    state.counters["peak_frac"] = 2.0 * static_cast<double>(m * n * k) / best_s / g_fma_peak_flops;
  }
  const auto iters = static_cast<double>(state.iterations());
  const auto w_bytes = static_cast<double>(w_count * ferry::dtype_size(dt));
  state.counters["bytes_per_second"] =
      benchmark::Counter(w_bytes * iters, benchmark::Counter::kIsRate, benchmark::Counter::kIs1024);
  state.counters["flops"] =
      benchmark::Counter(2.0 * static_cast<double>(m * n * k) * iters, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(ferry::dtype_name(dt)) + " " +
                 std::string(ferry::kernels::cpu::simd_level()));
}

constexpr int64_t kF32 = static_cast<int64_t>(DType::f32);
constexpr int64_t kF16 = static_cast<int64_t>(DType::f16);
constexpr int64_t kBF16 = static_cast<int64_t>(DType::bf16);

// Decode: the four GPT-J matrix shapes in f16, the MLP's first one in f32 and bf16 too.
BENCHMARK(BM_Linear)
    ->ArgNames({"m", "k", "n", "dtype"})
    ->Args({1, 4096, 16384, kF16})
    ->Args({1, 16384, 4096, kF16})
    ->Args({1, 4096, 4096, kF16})
    ->Args({1, 4096, 50400, kF16})
    ->Args({1, 4096, 16384, kF32})
    ->Args({1, 4096, 16384, kBF16})
    ->Args({1, 16384, 4096, kBF16})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Batched decoding (a few sequences' tokens, or a draft's): the weights read once for every row.
BENCHMARK(BM_Linear)
    ->ArgNames({"m", "k", "n", "dtype"})
    ->Args({2, 4096, 16384, kF16})
    ->Args({4, 4096, 16384, kF16})
    ->Args({8, 4096, 16384, kF16})
    ->Args({16, 4096, 16384, kF16})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// Prompt processing: compute bound, judged by FLOP/s against the FMA peak (peak_frac).
BENCHMARK(BM_Linear)
    ->ArgNames({"m", "k", "n", "dtype"})
    ->Args({32, 4096, 4096, kF16})
    ->Args({64, 4096, 4096, kF16})
    ->Args({128, 4096, 4096, kF16})
    ->Args({512, 4096, 4096, kF16})
    ->Args({64, 4096, 16384, kF16})
    ->Args({64, 16384, 4096, kF16})
    ->Args({32, 4096, 16384, kF16})
    ->Args({128, 4096, 16384, kF16})
    ->Args({128, 4096, 4096, kF32})
    ->Args({128, 4096, 4096, kBF16})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
