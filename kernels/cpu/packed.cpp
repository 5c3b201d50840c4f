// The run-time choice among the packed-weight kernels (packed.hpp). Built without extra
// instruction sets: it runs before anything knows what the processor has.
#include "kernels/cpu/packed.hpp"

#include <cstdlib>
#include <cstring>

#include "kernels/cpu/detail/paths.hpp"
#include "kernels/cpu/ops.hpp"

namespace ferry::kernels::cpu {
namespace detail {

PackedIsa packed_isa() {
#if defined(FERRY_KERNELS_AVX512)
  static const PackedIsa chosen = [] {
    const char* env = std::getenv("FERRY_SIMD");
    if (env != nullptr && std::strcmp(env, "avx2") == 0) return PackedIsa::avx2;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl"))
      return PackedIsa::avx2;
    return __builtin_cpu_supports("avx512vnni") ? PackedIsa::avx512_vnni : PackedIsa::avx512;
  }();
  return chosen;
#else
  return PackedIsa::avx2;
#endif
}

}  // namespace detail

std::string_view packed_linear_level() {
  if (simd_level() != "avx2") return simd_level();
  switch (detail::packed_isa()) {
    case detail::PackedIsa::avx512_vnni:
      return "avx512-vnni";
    case detail::PackedIsa::avx512:
      return "avx512";
    default:
      return "avx2";
  }
}

}  // namespace ferry::kernels::cpu
