// Dispatch of the CPU kernels: picks the AVX2 or the portable implementation once per process and
// splits the parallel kernels over the thread pool. The split is fixed by the problem's shape
// (groups of weight rows, (token, head) pairs), never by the thread count, and each output is
// computed by one thread in a fixed order, so results do not depend on how many threads run.
#include <algorithm>
#include <cstdlib>
#include <limits>
#include <string>

#include "kernels/common/math.hpp"
#include "kernels/cpu/detail/paths.hpp"
#include "kernels/cpu/ggml_dot.hpp"
#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/packed.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/ggml_quant.hpp"

#if defined(FERRY_KERNELS_AVX2)
#include <cpuid.h>
#endif

namespace ferry::kernels::cpu {
namespace {

using LinearRowsFn = void (*)(const float*, int64_t, int64_t, const void*, DType, int64_t,
                              const float*, float*, int64_t, int64_t);
using AttentionPairsFn = void (*)(const AttentionArgs&, int64_t, int64_t);

// One implementation of every kernel that has a SIMD variant.
struct Paths {
  const char* name;
  LinearRowsFn linear_rows;
  AttentionPairsFn attention_pairs;
  void (*layer_norm)(const float*, int64_t, int64_t, const float*, const float*, float, float*);
  void (*add)(float*, const float*, int64_t);
  void (*convert_to_f32)(const void*, DType, int64_t, float*);
};

constexpr Paths kPortable{"scalar",
                          detail::portable::linear_rows,
                          detail::portable::attention_pairs,
                          detail::portable::layer_norm,
                          detail::portable::add,
                          detail::portable::convert_to_f32};

#if defined(FERRY_KERNELS_AVX2)
constexpr Paths kAvx2{"avx2",
                      detail::avx2::linear_rows,
                      detail::avx2::attention_pairs,
                      detail::avx2::layer_norm,
                      detail::avx2::add,
                      detail::avx2::convert_to_f32};

// AVX2 and FMA through the compiler's check (which also asks the OS whether it saves the ymm
// registers); F16C straight from CPUID leaf 1, because clang's __builtin_cpu_supports does not
// know "f16c".
bool cpu_has_avx2() {
  __builtin_cpu_init();
  unsigned eax = 0;
  unsigned ebx = 0;
  unsigned ecx = 0;
  unsigned edx = 0;
  const bool has_f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c;
}
#endif

const Paths& detect_paths() {
  const char* env = std::getenv("FERRY_SIMD");
  const std::string want = env != nullptr ? env : "";
  FERRY_EXPECT(want.empty() || want == "auto" || want == "scalar" || want == "avx2",
               "FERRY_SIMD={} is not a SIMD level; use scalar, avx2 or auto (or leave it unset)",
               want);
  if (want == "scalar") return kPortable;
#if defined(FERRY_KERNELS_AVX2)
  const bool has_avx2 = cpu_has_avx2();
#else
  const bool has_avx2 = false;
#endif
  FERRY_EXPECT(want != "avx2" || has_avx2,
               "FERRY_SIMD=avx2 but this build or processor lacks AVX2, FMA or F16C; unset "
               "FERRY_SIMD to use the portable kernels");
#if defined(FERRY_KERNELS_AVX2)
  if (has_avx2) return kAvx2;
#endif
  return kPortable;
}

// Chosen once: the environment and the processor do not change while the process runs.
const Paths& paths() {
  static const Paths& chosen = detect_paths();
  return chosen;
}

// AVX-512 code where the AVX2 path runs and the processor has AVX-512 F/BW/VL, unless
// FERRY_SIMD=avx2 asks for AVX2 alone. Chosen once, like paths().
bool use_avx512() {
#if defined(FERRY_KERNELS_AVX512)
  static const bool chosen = [] {
    const char* env = std::getenv("FERRY_SIMD");
    if (&paths() != &kAvx2 || (env != nullptr && std::string(env) == "avx2")) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
  }();
  return chosen;
#else
  return false;
#endif
}

// llama.cpp's block formats and float weights with AVX-512 where use_avx512(); float weights'
// products of many rows (gemm_avx2.cpp) on the AVX2 path. Every row count of one dtype goes to
// the same function, whose products all sum an output the same way (batch invariance).
LinearRowsFn linear_rows_for([[maybe_unused]] DType wdt) {
#if defined(FERRY_KERNELS_AVX512)
  if (use_avx512() && is_ggml_block(wdt)) return detail::avx512::ggml_linear_rows;
  if (use_avx512() && is_float_weight(wdt)) return detail::avx512::linear_float_rows;
#endif
#if defined(FERRY_KERNELS_AVX2)
  if (&paths() == &kAvx2 && is_float_weight(wdt)) return detail::avx2::linear_float_rows;
#endif
  return paths().linear_rows;
}

// k: the row length (a ggml block row must hold whole blocks).
void check_weight_dtype(DType wdt, int64_t k, const char* what) {
  FERRY_EXPECT(is_matrix_weight(wdt),
               "{}: weights must be f32, f16, bf16, q8, q4g64, q4g128 or a ggml block type "
               "(q8_0 … q6_k), got {}",
               what, dtype_name(wdt));
  FERRY_EXPECT(!is_ggml_block(wdt) || ggml_row_fits(wdt, k),
               "{}: a {} row holds whole blocks of {} columns, but the row is {} long", what,
               dtype_name(wdt), ggml_block_elems(wdt), k);
}

void run_linear(LinearRowsFn rows, const float* x, int64_t m, int64_t k, const void* w, DType wdt,
                int64_t n, const float* bias, float* y, ThreadPool& pool) {
  check_weight_dtype(wdt, k, "linear");
  FERRY_EXPECT(m >= 0 && k >= 0 && n >= 0, "linear: negative size m={} k={} n={}", m, k, n);
  if (m == 0 || n == 0) return;
  const int64_t n_groups = (n + detail::kLinearRowGroup - 1) / detail::kLinearRowGroup;
  // Waking the workers costs a few microseconds; a chunk should carry at least ~256K
  // multiply-adds so small products (tests, tiny models) do not drown in hand-offs.
  const int64_t macs_per_group = std::max<int64_t>(1, m * k * detail::kLinearRowGroup);
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 18) / macs_per_group);
  pool.parallel_for(n_groups, min_chunk, [&](int64_t g_begin, int64_t g_end) {
    const int64_t o_begin = g_begin * detail::kLinearRowGroup;
    const int64_t o_end = std::min(n, g_end * detail::kLinearRowGroup);
    rows(x, m, k, w, wdt, n, bias, y, o_begin, o_end);
  });
}

void run_attention(AttentionPairsFn pairs, const AttentionArgs& args, ThreadPool& pool) {
  FERRY_EXPECT(args.n_kv_head == 0 || (args.n_kv_head > 0 && args.n_head % args.n_kv_head == 0),
               "attention: {} query heads cannot share {} KV heads evenly", args.n_head,
               args.n_kv_head);
  FERRY_EXPECT(args.n_new >= 0 && args.n_past >= 0 && args.n_head >= 0 && args.head_dim > 0,
               "attention: bad sizes n_new={} n_past={} n_head={} head_dim={}", args.n_new,
               args.n_past, args.n_head, args.head_dim);
  FERRY_EXPECT(args.block_table == nullptr || (args.block_tokens > 0 && args.block_stride >= 0),
               "attention: a paged KV cache needs blocks of at least one token (block_tokens={})",
               args.block_tokens);
  // The fast paths walk a block table; a contiguous cache is one block as long as any sequence.
  static constexpr int32_t kOneBlock[1] = {0};
  AttentionArgs paged = args;
  if (paged.block_table == nullptr) {
    paged.block_table = kOneBlock;
    paged.block_tokens = std::numeric_limits<int64_t>::max();
    paged.block_stride = 0;
  }
  const int64_t n_pairs = args.n_new * args.n_head;
  // One pair reads n_past + t + 1 keys and values; group pairs so a chunk is worth a hand-off.
  const int64_t work_per_pair = std::max<int64_t>(1, (args.n_past + 1) * args.head_dim * 2);
  const int64_t min_chunk = std::max<int64_t>(1, (int64_t{1} << 16) / work_per_pair);
  pool.parallel_for(n_pairs, min_chunk,
                    [&](int64_t begin, int64_t end) { pairs(paged, begin, end); });
}

}  // namespace

std::string_view simd_level() { return paths().name; }

std::string_view float_linear_level() {
  if (use_avx512()) return "avx512";
  return paths().name;
}

namespace {
// FERRY_GGUF_PRODUCTS=fast (the default): llama.cpp's q8-activation integer products
// (ggml_dot.hpp) for every row count, where the AVX2 path runs — a row's result never depends on
// how many rows share the product (batched decoding, drafts, prompts). Chosen once, like paths().
bool gguf_fast() {
#if defined(FERRY_KERNELS_AVX2)
  static const bool fast = ggml_dot::requested() && &paths() == &kAvx2;
  return fast;
#else
  return false;
#endif
}
}  // namespace

std::string_view gguf_linear_level() {
#if defined(FERRY_KERNELS_AVX2)
  if (gguf_fast()) {
    return ggml_dot::uses_vnni()
               ? "llama.cpp's q8 arithmetic (avx512-vnni) for q4_k q5_k q6_k q8_0 q4_0 q5_0, "
                 "exact f32 for the other block types"
               : "llama.cpp's q8 arithmetic (avx2) for q4_k q5_k q6_k q8_0 q4_0 q5_0, exact f32 "
                 "for the other block types";
  }
#endif
  return "exact f32 products (FERRY_GGUF_PRODUCTS=exact, or no AVX2)";
}

std::string linear_level(DType wdt) {
  if (ggml_block_elems(wdt) > 0) {
#if defined(FERRY_KERNELS_AVX2)
    if (gguf_fast() && ggml_dot::supports(wdt))
      return std::string("ggml-q8 ") + (ggml_dot::uses_vnni() ? "avx512-vnni" : "avx2");
#endif
    return "exact " + std::string(simd_level());
  }
  if (is_row_packed(wdt)) return std::string(packed_linear_level());
  return std::string(float_linear_level());
}

void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y, ThreadPool& pool) {
#if defined(FERRY_KERNELS_AVX2)
  const bool fast = gguf_fast();
  if (fast && ggml_dot::supports(wdt)) {
    check_weight_dtype(wdt, k, "linear");
    FERRY_EXPECT(m >= 0 && k >= 0 && n >= 0, "linear: negative size m={} k={} n={}", m, k, n);
    if (m == 0 || n == 0) return;
    ggml_dot::linear(x, m, k, w, wdt, n, bias, y, pool);
    return;
  }
#endif
  run_linear(linear_rows_for(wdt), x, m, k, w, wdt, n, bias, y, pool);
}

void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y) {
  paths().layer_norm(x, m, n, gamma, beta, eps, y);
}

// Kept scalar on every path: std::tanh is the accuracy yardstick, and a vector tanh within 1e-6
// relative of it near zero costs about as much as the call; the MLP's matmuls dwarf this anyway.
void gelu_new(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = kernels::gelu_new(x[i]);
}

void add(float* y, const float* x, int64_t n) { paths().add(y, x, n); }

// The angles depend on the row's position and the pair only, so each cos/sin is computed once per
// row and applied to every head (the reference recomputes them per head; the values are equal).
void rotary_interleaved(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                        int64_t rotary_dim, const int32_t* positions) {
  FERRY_EXPECT(rotary_dim % 2 == 0 && rotary_dim <= head_dim,
               "rotary_interleaved: rotary_dim {} must be even and at most head_dim {}", rotary_dim,
               head_dim);
  for (int64_t r = 0; r < m; ++r) {
    float* row = x + r * row_stride;
    for (int64_t i = 0; i < rotary_dim / 2; ++i) {
      const float angle = rotary_angle(positions[r], i, rotary_dim);
      const float cos_a = ::cosf(angle);
      const float sin_a = ::sinf(angle);
      for (int64_t h = 0; h < n_head; ++h) {
        float* pair = row + h * head_dim + 2 * i;
        rotary_rotate_pair(pair[0], pair[1], cos_a, sin_a);
      }
    }
  }
}

// One pass per row, no SIMD: the norm is O(n) beside the O(n²) products around it.
void rms_norm(const float* x, int64_t m, int64_t n, const float* gamma, float eps, float* y) {
  ref::rms_norm(x, m, n, gamma, eps, y);
}

void silu_mul(float* gate, const float* up, int64_t n) { ref::silu_mul(gate, up, n); }

// As rotary_interleaved: each cos/sin once per row and pair, applied to every head.
void rotary_half(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                 int64_t rotary_dim, const float* inv_freq, const int32_t* positions) {
  FERRY_EXPECT(rotary_dim % 2 == 0 && rotary_dim <= head_dim,
               "rotary_half: rotary_dim {} must be even and at most head_dim {}", rotary_dim,
               head_dim);
  const int64_t half = rotary_dim / 2;
  for (int64_t r = 0; r < m; ++r) {
    float* row = x + r * row_stride;
    for (int64_t i = 0; i < half; ++i) {
      const float angle = rotary_angle_freq(positions[r], inv_freq[i]);
      const float cos_a = ::cosf(angle);
      const float sin_a = ::sinf(angle);
      for (int64_t h = 0; h < n_head; ++h) {
        float* head = row + h * head_dim;
        rotary_rotate_half_pair(head[i], head[i + half], cos_a, sin_a);
      }
    }
  }
}

// As rotary_interleaved, with the angles from a frequency table.
void rotary_pairs(float* x, int64_t m, int64_t row_stride, int64_t n_head, int64_t head_dim,
                  int64_t rotary_dim, const float* inv_freq, const int32_t* positions) {
  FERRY_EXPECT(rotary_dim % 2 == 0 && rotary_dim <= head_dim,
               "rotary_pairs: rotary_dim {} must be even and at most head_dim {}", rotary_dim,
               head_dim);
  for (int64_t r = 0; r < m; ++r) {
    float* row = x + r * row_stride;
    for (int64_t i = 0; i < rotary_dim / 2; ++i) {
      const float angle = rotary_angle_freq(positions[r], inv_freq[i]);
      const float cos_a = ::cosf(angle);
      const float sin_a = ::sinf(angle);
      for (int64_t h = 0; h < n_head; ++h) {
        float* pair = row + h * head_dim + 2 * i;
        rotary_rotate_pair(pair[0], pair[1], cos_a, sin_a);
      }
    }
  }
}

void attention(const AttentionArgs& args, ThreadPool& pool) {
  run_attention(paths().attention_pairs, args, pool);
}

void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  check_weight_dtype(dtype, n, "convert_to_f32");
  // A packed row is one embedding row per token: the portable loop is plenty.
  if (is_row_packed(dtype)) {
    detail::portable::convert_to_f32(src, dtype, n, dst);
  } else {
    paths().convert_to_f32(src, dtype, n, dst);
  }
}

namespace scalar {

void linear(const float* x, int64_t m, int64_t k, const void* w, DType wdt, int64_t n,
            const float* bias, float* y, ThreadPool& pool) {
  run_linear(detail::portable::linear_rows, x, m, k, w, wdt, n, bias, y, pool);
}

void layer_norm(const float* x, int64_t m, int64_t n, const float* gamma, const float* beta,
                float eps, float* y) {
  detail::portable::layer_norm(x, m, n, gamma, beta, eps, y);
}

void add(float* y, const float* x, int64_t n) { detail::portable::add(y, x, n); }

void attention(const AttentionArgs& args, ThreadPool& pool) {
  run_attention(detail::portable::attention_pairs, args, pool);
}

void convert_to_f32(const void* src, DType dtype, int64_t n, float* dst) {
  check_weight_dtype(dtype, n, "convert_to_f32");
  detail::portable::convert_to_f32(src, dtype, n, dst);
}

}  // namespace scalar

}  // namespace ferry::kernels::cpu
