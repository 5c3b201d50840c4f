// Compressed-weight benchmarks: the dequantizing matrix–vector product (decode, m = 1) on q8 and
// q4 weights beside f16 — judged, like bench_kernels, in weight bytes per second against the
// memory read loop there (a packed weight is fewer bytes, so the same GB/s is more weights/s) —
// and the XXH64 checksum ferry runs over every streamed layer of a pack, judged against the disk
// (a layer that checks faster than it reads costs little; `ferry bench-io` gives the disk rate);
// and quantize_row, the CPU work of `ferry convert`, in weights per second.
//
//   bench_quant --benchmark_counters_tabular=true
//
// Shapes are GPT-J-6B's fc_in ([16384, 4096]) and a 4096 × 4096 projection; llama.cpp's block
// formats (q8_0 … q6_k, as GGUF files hold them) on Llama-3-8B's ffn_up ([14336, 4096]) and
// ffn_down ([4096, 14336]) beside f16 on the same shapes. BM_MemoryRead, first, is the read loop
// to judge their bytes_per_second by, in the same run (bench_kernels' BM_MemoryReadAvx2 is the
// same loop over 1 GiB). BM_PackedRows times many rows of x (batched decoding, drafts, prompts) on
// GPT-J's fc_out shape, [4096, 16384]: per call, the weights are read once whatever m.
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/quant.hpp"
#include "offload/detail/xxhash64.hpp"
#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"

namespace {

using ferry::DType;

// A [n, k] matrix of dtype with weights ~U(-0.05, 0.05), packed as convert would.
ferry::AlignedBuffer make_matrix(DType dt, int64_t n, int64_t k) {
  const uint64_t row_bytes = ferry::packed_row_bytes(dt, k);
  ferry::AlignedBuffer buf(static_cast<std::size_t>(n) * row_bytes, 4096);
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-0.05f, 0.05f);
  std::vector<float> row(static_cast<std::size_t>(k));
  for (int64_t o = 0; o < n; ++o) {
    for (auto& v : row) v = dist(rng);
    auto* dst = buf.as<unsigned char>() + static_cast<uint64_t>(o) * row_bytes;
    if (dt == DType::f16) {
      auto* h = reinterpret_cast<uint16_t*>(dst);
      for (int64_t j = 0; j < k; ++j) h[j] = ferry::f32_to_f16(row[static_cast<std::size_t>(j)]);
    } else {
      ferry::kernels::cpu::quantize_row(row.data(), k, dt, dst, "bench");
    }
  }
  return buf;
}

void BM_Matvec(benchmark::State& state, DType dt, int64_t n, int64_t k) {
  const ferry::AlignedBuffer w = make_matrix(dt, n, k);
  std::vector<float> x(static_cast<std::size_t>(k), 0.25f);
  std::vector<float> y(static_cast<std::size_t>(n));
  ferry::ThreadPool& pool = ferry::default_thread_pool();
  for (auto _ : state) {
    ferry::kernels::cpu::linear(x.data(), 1, k, w.data(), dt, n, nullptr, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(w.size()));
  state.counters["weights_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(n * k),
                         benchmark::Counter::kIsRate);
}

// The memory's read rate with the pool's threads: 256 MiB (8× this machine's L3) summed in
// 4 MiB blocks by an AVX2 loop of four accumulators, the roofline of the products above.
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
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

void BM_MemoryRead(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx2")) {
    state.SkipWithError("no AVX2 on this processor");
    return;
  }
  constexpr std::size_t kBytes = std::size_t{256} << 20;
  constexpr std::size_t kBlock = std::size_t{1} << 20;  // floats per work item (4 MiB)
  ferry::AlignedBuffer buf(kBytes, 4096);
  auto* data = buf.as<float>();
  for (std::size_t i = 0; i < kBytes / sizeof(float); ++i) data[i] = 1.0f;
  ferry::ThreadPool& pool = ferry::default_thread_pool();
  const auto n_blocks = static_cast<int64_t>(kBytes / sizeof(float) / kBlock);
  std::vector<float> partial(static_cast<std::size_t>(n_blocks));
  for (auto _ : state) {
    pool.parallel_for(n_blocks, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        partial[static_cast<std::size_t>(i)] =
            sum_avx2(data + static_cast<std::size_t>(i) * kBlock, kBlock);
    });
    benchmark::DoNotOptimize(partial.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(kBytes));
}
BENCHMARK(BM_MemoryRead)->Unit(benchmark::kMillisecond)->UseRealTime();

// m rows of x times a packed [n, k] matrix; rows_per_s counts rows of x (tokens). The matrix is
// copied until the copies pass 128 MiB (4× this machine's L3) and each call takes the next copy,
// as a model's layers follow each other: one q4 matrix of this shape (36 MiB) alone would stay
// partly in L3 between calls and beat the read loop.
void BM_PackedRows(benchmark::State& state, DType dt) {
  const int64_t m = state.range(0);
  const int64_t n = 4096;
  const int64_t k = 16384;
  const ferry::AlignedBuffer one = make_matrix(dt, n, k);
  const std::size_t copies = std::max<std::size_t>(1, ((std::size_t{128} << 20) / one.size()) + 1);
  ferry::AlignedBuffer w(copies * one.size(), 4096);
  for (std::size_t c = 0; c < copies; ++c)
    std::memcpy(w.as<unsigned char>() + c * one.size(), one.data(), one.size());
  std::vector<float> x(static_cast<std::size_t>(m * k));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 13) * 0.01f - 0.06f;
  std::vector<float> y(static_cast<std::size_t>(m * n));
  ferry::ThreadPool& pool = ferry::default_thread_pool();
  std::size_t next = 0;
  for (auto _ : state) {
    ferry::kernels::cpu::linear(x.data(), m, k, w.as<unsigned char>() + next * one.size(), dt, n,
                                nullptr, y.data(), pool);
    next = (next + 1) % copies;
    benchmark::DoNotOptimize(y.data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) *
                          static_cast<int64_t>(one.size()));
  state.counters["rows_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(m),
                         benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_PackedRows, q8, DType::q8)
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_PackedRows, q4g64, DType::q4_g64)
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_PackedRows, q4g128, DType::q4_g128)
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

// llama.cpp's block formats on the same shape, through the GGUF products (llama.cpp's q8-activation
// arithmetic, the default): decode (m 1) is the figure to hold against the read loop.
BENCHMARK_CAPTURE(BM_PackedRows, q4_k, DType::q4_k)
    ->Arg(1)
    ->Arg(4)
    ->Arg(16)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_PackedRows, q6_k, DType::q6_k)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_PackedRows, q5_k, DType::q5_k)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_CAPTURE(BM_PackedRows, q8_0, DType::q8_0)
    ->Arg(1)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_PackedRows, q4_0, DType::q4_0)
    ->Arg(1)
    ->Arg(4)
    ->Arg(64)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_Xxh64(benchmark::State& state) {
  const auto nbytes = static_cast<std::size_t>(state.range(0));
  ferry::AlignedBuffer buf(nbytes, 4096);
  for (std::size_t i = 0; i < nbytes; ++i)
    buf.as<unsigned char>()[i] = static_cast<unsigned char>(i * 7);
  for (auto _ : state) benchmark::DoNotOptimize(ferry::offload::detail::xxh64(buf.data(), nbytes));
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(nbytes));
}

BENCHMARK_CAPTURE(BM_Matvec, f16_fc_in, DType::f16, 16384, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q8_fc_in, DType::q8, 16384, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4g64_fc_in, DType::q4_g64, 16384, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4g128_fc_in, DType::q4_g128, 16384, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, f16_4096, DType::f16, 4096, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q8_4096, DType::q8, 4096, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4g64_4096, DType::q4_g64, 4096, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
// Cache-resident (128 × 2048: 512 KiB in f16, 144 KiB in q4, split over the threads): the
// kernels' compute ceiling, to set beside the memory-bound shapes above.
BENCHMARK_CAPTURE(BM_Matvec, f16_cached, DType::f16, 128, 2048)->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q8_cached, DType::q8, 128, 2048)->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4g64_cached, DType::q4_g64, 128, 2048)->UseRealTime();
// llama.cpp's block formats, Llama-3-8B shapes.
BENCHMARK_CAPTURE(BM_Matvec, f16_l3_up, DType::f16, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q8_0_l3_up, DType::q8_0, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4_0_l3_up, DType::q4_0, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4_1_l3_up, DType::q4_1, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q5_0_l3_up, DType::q5_0, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q5_1_l3_up, DType::q5_1, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4_k_l3_up, DType::q4_k, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q5_k_l3_up, DType::q5_k, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q6_k_l3_up, DType::q6_k, 14336, 4096)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q8_0_l3_down, DType::q8_0, 4096, 14336)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4_k_l3_down, DType::q4_k, 4096, 14336)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q8_0_cached, DType::q8_0, 128, 2048)->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q4_k_cached, DType::q4_k, 128, 2048)->UseRealTime();
BENCHMARK_CAPTURE(BM_Matvec, q6_k_cached, DType::q6_k, 128, 2048)->UseRealTime();
BENCHMARK(BM_Xxh64)->Arg(256 << 10)->Arg(64 << 20)->Unit(benchmark::kMillisecond)->UseRealTime();

// `ferry convert`'s per-row work, one thread: f32 weights ~N(0, 0.02) to packed rows. GPT-J-6B
// has 6.05e9 weights, so 1e8 weights/s is about a minute of CPU for the whole model.
void BM_QuantizeRow(benchmark::State& state, DType dt) {
  const int64_t k = 4096;
  const int64_t rows = 64;
  std::mt19937 rng(1);
  std::normal_distribution<float> dist(0.0f, 0.02f);
  std::vector<float> w(static_cast<std::size_t>(rows * k));
  for (auto& v : w) v = dist(rng);
  std::vector<unsigned char> out(ferry::packed_row_bytes(dt, k));
  for (auto _ : state) {
    for (int64_t r = 0; r < rows; ++r)
      ferry::kernels::cpu::quantize_row(w.data() + r * k, k, dt, out.data(), "bench");
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["weights_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(rows * k),
                         benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_QuantizeRow, q8, DType::q8)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_QuantizeRow, q4g64, DType::q4_g64)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_QuantizeRow, q4g128, DType::q4_g128)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_QuantizeRow, q8_0, DType::q8_0)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_QuantizeRow, q4_k, DType::q4_k)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_QuantizeRow, q6_k, DType::q6_k)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
