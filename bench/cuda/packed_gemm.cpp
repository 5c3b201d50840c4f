// Packed (int8 / int4) products on the GPU, the two ways the CUDA backend can run them, so the
// switch between them (kPackedGemvMaxRows) is measured rather than guessed:
//   fused    kc::packed_gemv: one pass over the packed bytes, dequantized in the product's loop
//            (m ≤ kPackedGemvLimit rows of x; the engine uses it up to kPackedGemvMaxRows)
//   cublas   kc::dequantize_rows into an f16 staging buffer of n_inner × n_embd elements (the
//            engine's), then cuBLAS on f16 — how the engine runs m > kPackedGemvMaxRows
// and, for scale, cuBLAS on f16 weights of the same shape (what an f16 checkpoint costs), all
// judged against the device-memory roofline of the same run: a cudaMemcpy device → device
// (bytes read + written ÷ time). The weight shapes are GPT-J-6B's (q/k/v/out 4096×4096,
// fc_in 16384×4096, fc_out 4096×16384); m runs over decode (1) to prompt (512) batch sizes.
// Prints one JSON object per line: a line per (dtype, shape, m, path) with µs and GB/s of weight
// bytes, then per dtype the largest m at which fused beats dequantize + cuBLAS on every shape
// (`choose`, up to kPackedGemvLimit), beside the constant the engine uses. Each timing repeats the
// product until the events span at least 5 ms, so launch overhead does not pass for kernel time.
// Exits 0 with a message when there is no GPU. Never asserts a timing.
//   bench_cuda_packed [--iters 20] [--max-m 512]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/quant.hpp"
#include "kernels/cuda/ops.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device.hpp"
#include "runtime/cuda/resources.hpp"

namespace {

using namespace ferry;
using namespace ferry::cuda;
namespace kc = ferry::kernels::cuda;

struct Shape {
  const char* name;
  int64_t n;  // output rows of w
  int64_t k;  // inputs
};

// Times back-to-back runs of f on the stream with CUDA events, after two warm-ups: `iters` runs,
// or as many more as make the timed span at least 5 ms. The mean in seconds.
template <class F>
double time_on(const CudaStream& s, int iters, F&& f) {
  f();
  f();
  cudaEvent_t a = nullptr;
  cudaEvent_t b = nullptr;
  FERRY_CUDA_TRY(cudaEventCreate(&a));
  FERRY_CUDA_TRY(cudaEventCreate(&b));
  double mean = 0;
  for (int round = 0; round < 3; ++round) {
    FERRY_CUDA_TRY(cudaEventRecord(a, s.get()));
    for (int i = 0; i < iters; ++i) f();
    FERRY_CUDA_TRY(cudaEventRecord(b, s.get()));
    FERRY_CUDA_TRY(cudaEventSynchronize(b));
    float ms = 0;
    FERRY_CUDA_TRY(cudaEventElapsedTime(&ms, a, b));
    mean = static_cast<double>(ms) / 1e3 / iters;
    if (ms >= 5.0f) break;
    iters = static_cast<int>(std::min<double>(1e5, std::ceil(iters * 6.0 / std::max(ms, 0.01f))));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return mean;
}

// A [n, k] matrix of N(0, 0.02) weights, f32.
std::vector<float> make_weights(int64_t n, int64_t k, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) v = d(rng);
  return w;
}

// w in dtype t (packed with the converter's own quantizer), the rows over the host's cores.
std::vector<unsigned char> encode(const std::vector<float>& w, int64_t n, int64_t k, DType t) {
  const uint64_t row_bytes = packed_row_bytes(t, k);
  std::vector<unsigned char> out(row_bytes * static_cast<uint64_t>(n));
  default_thread_pool().parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = w.data() + r * k;
      unsigned char* dst = out.data() + static_cast<uint64_t>(r) * row_bytes;
      if (is_quantized(t)) {
        kernels::cpu::quantize_row(row, k, t, dst, "bench weights");
      } else {
        for (int64_t j = 0; j < k; ++j) {
          const uint16_t h = f32_to_f16(row[j]);
          std::memcpy(dst + 2 * j, &h, 2);
        }
      }
    }
  });
  return out;
}

DeviceBuffer upload(const std::vector<unsigned char>& host, const CudaStream& stream) {
  DeviceBuffer d(host.size());
  FERRY_CUDA_TRY(
      cudaMemcpyAsync(d.data(), host.data(), host.size(), cudaMemcpyHostToDevice, stream.get()));
  stream.synchronize();
  return d;
}

}  // namespace

int main(int argc, char** argv) try {
  int iters = 20;
  int64_t max_m = 512;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--iters") iters = std::stoi(argv[i + 1]);
    if (a == "--max-m") max_m = std::stol(argv[i + 1]);
  }
  if (device_count() == 0) {
    std::printf("bench_cuda_packed: no CUDA device (%s); nothing measured\n",
                no_device_reason().c_str());
    return 0;
  }
  const CudaDevice device(0);
  FERRY_CUDA_TRY(cudaSetDevice(0));
  const CudaStream stream;
  const CublasHandle cublas(stream, 32u << 20);
  FERRY_EXPECT(kc::cublas_load_error().empty(), "cuBLAS: {}", kc::cublas_load_error());

  // The roofline: a 1 GiB device → device copy reads and writes every byte once.
  const std::size_t copy_bytes = 1u << 30;
  const DeviceBuffer src(copy_bytes);
  const DeviceBuffer dst(copy_bytes);
  const double copy_s = time_on(stream, 5, [&] {
    FERRY_CUDA_TRY(cudaMemcpyAsync(dst.data(), src.data(), copy_bytes, cudaMemcpyDeviceToDevice,
                                   stream.get()));
  });
  const double roof = 2.0 * copy_bytes / copy_s;
  std::printf("%s\n", fmt::format("{{\"device\": \"{}\", \"d2d_gbps\": {:.1f}, "
                                  "\"kPackedGemvMaxRows\": {}}}",
                                  device.name(), roof / 1e9, kc::kPackedGemvMaxRows)
                          .c_str());

  const Shape shapes[] = {{"attn 4096x4096", 4096, 4096},
                          {"fc_in 16384x4096", 16384, 4096},
                          {"fc_out 4096x16384", 4096, 16384}};
  const int64_t n_embd = 4096;
  const int64_t n_inner = 16384;
  std::vector<int64_t> ms;
  for (int64_t m = 1; m <= max_m; m *= 2) ms.push_back(m);

  DeviceBuffer x32(static_cast<std::size_t>(max_m * n_inner) * 4);
  DeviceBuffer x16(static_cast<std::size_t>(max_m * n_inner) * 2);
  DeviceBuffer y(static_cast<std::size_t>(max_m * n_inner) * 4);
  DeviceBuffer dequant(static_cast<std::size_t>(n_inner * n_embd) * 2);
  FERRY_CUDA_TRY(cudaMemsetAsync(x32.data(), 0, x32.size(), stream.get()));
  FERRY_CUDA_TRY(cudaMemsetAsync(x16.data(), 0, x16.size(), stream.get()));

  // Per dtype, the largest m at which fused is faster than dequantize + cuBLAS on every shape.
  const DType dtypes[] = {DType::q8, DType::q4_g64, DType::q4_g128};
  int64_t fused_wins_to[3] = {kc::kPackedGemvLimit, kc::kPackedGemvLimit, kc::kPackedGemvLimit};
  const auto* xf = static_cast<const float*>(x32.data());
  auto* yf = static_cast<float*>(y.data());
  for (const Shape& sh : shapes) {
    const auto w32 = make_weights(sh.n, sh.k, 1);
    const DeviceBuffer w16 = upload(encode(w32, sh.n, sh.k, DType::f16), stream);
    for (int di = 0; di < 3; ++di) {
      const DType t = dtypes[di];
      const auto host_w = encode(w32, sh.n, sh.k, t);
      const DeviceBuffer w = upload(host_w, stream);
      int64_t shape_wins_to = 0;  // fused is faster for every m up to this one
      bool winning = true;
      for (const int64_t m : ms) {
        const auto line = [&](const char* path, double s, uint64_t bytes) {
          std::printf("%s\n",
                      fmt::format("{{\"dtype\": \"{}\", \"shape\": \"{}\", \"m\": {}, \"path\": "
                                  "\"{}\", \"us\": {:.2f}, \"weight_gbps\": {:.1f}, "
                                  "\"of_d2d\": {:.3f}}}",
                                  dtype_name(t), sh.name, m, path, s * 1e6, bytes / s / 1e9,
                                  bytes / s / roof)
                          .c_str());
        };
        // dequantize + cuBLAS, the engine's way: x to f16, then chunks of weight rows.
        const int64_t chunk = std::max<int64_t>(1, n_inner * n_embd / sh.k);
        const double via_cublas = time_on(stream, iters, [&] {
          FERRY_CUDA_LAUNCH(
              kc::convert(xf, DType::f32, x16.data(), DType::f16, m * sh.k, stream.get()));
          for (int64_t r0 = 0; r0 < sh.n; r0 += chunk) {
            const int64_t nr = std::min(chunk, sh.n - r0);
            FERRY_CUDA_LAUNCH(kc::dequantize_rows(
                w.data(), t, sh.k, r0, nr, static_cast<uint16_t*>(dequant.data()), stream.get()));
            FERRY_CUBLAS_TRY(kc::linear(cublas.get(), x16.data(), m, sh.k, dequant.data(),
                                        DType::f16, nr, yf + r0, sh.n));
          }
        });
        line("dequantize+cublas", via_cublas, host_w.size());
        if (di == 0) {  // the same for every dtype
          const double f16 = time_on(stream, iters, [&] {
            FERRY_CUDA_LAUNCH(
                kc::convert(xf, DType::f32, x16.data(), DType::f16, m * sh.k, stream.get()));
            FERRY_CUBLAS_TRY(
                kc::linear(cublas.get(), x16.data(), m, sh.k, w16.data(), DType::f16, sh.n, yf));
          });
          line("cublas f16 weights", f16, static_cast<uint64_t>(sh.n * sh.k) * 2);
        }
        if (m <= kc::kPackedGemvLimit) {
          const auto time_fused = [&](int warps_per_row) {
            return time_on(stream, iters, [&] {
              FERRY_CUDA_LAUNCH(kc::packed_gemv(w.data(), t, sh.n, sh.k, xf, m, yf, sh.n,
                                                stream.get(), warps_per_row));
            });
          };
          // Each number of warps a row; "fused" is the engine's (packed_gemv_warps_per_row).
          const int chosen = kc::packed_gemv_warps_per_row(t, m);
          double fused = 0;
          for (const int warps : {1, 2, 4}) {
            const double s = time_fused(warps);
            line(fmt::format("fused {} warps a row", warps).c_str(), s, host_w.size());
            if (warps == chosen) fused = s;
          }
          line("fused", fused, host_w.size());
          winning = winning && fused < via_cublas;
          if (winning) shape_wins_to = m;
        }
      }
      fused_wins_to[di] = std::min(fused_wins_to[di], shape_wins_to);
    }
  }
  for (int di = 0; di < 3; ++di)
    std::printf("%s\n",
                fmt::format("{{\"dtype\": \"{}\", \"choose\": \"fused for m <= {}, "
                            "dequantize + cuBLAS above\", \"engine_uses\": {}}}",
                            dtype_name(dtypes[di]), fused_wins_to[di], kc::kPackedGemvMaxRows)
                    .c_str());
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "bench_cuda_packed: %s\n", e.what());
  return 1;
}
