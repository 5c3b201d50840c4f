#include "runtime/backends/registry.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/packed.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/thread_pool.hpp"
#ifdef FERRY_HAS_CUDA
#include "runtime/cuda/cuda_backend.hpp"
#include "runtime/cuda/cuda_device.hpp"
#endif

namespace ferry::backends {

namespace {

#ifdef FERRY_HAS_CUDA
constexpr bool kHasCuda = true;
#else
constexpr bool kHasCuda = false;
#endif

}  // namespace

const std::vector<std::string>& known() {
  static const std::vector<std::string> names = {"cpu", "cuda"};
  return names;
}

std::vector<std::string> compiled() {
  std::vector<std::string> names = {"cpu"};
  if (kHasCuda) names.emplace_back("cuda");
  return names;
}

bool is_compiled(std::string_view name) {
  const auto names = compiled();
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::vector<std::string> describe_build() {
  std::vector<std::string> lines = {fmt::format("cpu kernels: {}", kernels::cpu::simd_level())};
  lines.push_back(
      fmt::format("cpu float (f32/f16/bf16) products: {}", kernels::cpu::float_linear_level()));
  lines.push_back(
      fmt::format("cpu packed (q8/q4) kernels: {}", kernels::cpu::packed_linear_level()));
  lines.push_back(fmt::format("cpu GGUF block products: {}", kernels::cpu::gguf_linear_level()));
#ifdef FERRY_HAS_CUDA
  lines.push_back(fmt::format("cuda: compiled (architectures {}; CUDA runtime {})",
                              cuda::compiled_architectures(), cuda::runtime_version()));
  const auto gpus = cuda::describe_devices();
  if (gpus.empty())
    lines.push_back(fmt::format("cuda devices: none ({})", cuda::no_device_reason()));
  for (const auto& line : gpus) lines.push_back("device " + line);
#else
  lines.emplace_back("cuda: not compiled (no CUDA toolkit at build time)");
#endif
  return lines;
}

namespace {

void check_known(std::string_view name) {
  const auto& names = known();
  FERRY_EXPECT(std::find(names.begin(), names.end(), name) != names.end(),
               "--device '{}' is not {}", name, fmt::join(names, " or "));
}

}  // namespace

void check(std::string_view name) {
  check_known(name);
  if (!is_compiled(name))  // only CUDA can be left out
    throw InvalidArgument(fmt::format(
        "--device {}: this ferry was built without the CUDA backend (no CUDA toolkit at build "
        "time); run without --device {} to use the CPU",
        name, name));
}

planner::Backend planner_backend(std::string_view name) {
  check_known(name);
  return name == "cuda" ? planner::Backend::cuda : planner::Backend::cpu;
}

std::unique_ptr<Device> open_device(std::string_view name) {
  check(name);
#ifdef FERRY_HAS_CUDA
  if (name == "cuda") return std::make_unique<cuda::CudaDevice>(0);
#endif
  return std::make_unique<CpuDevice>(fmt::format("cpu ({}, {} threads)", kernels::cpu::simd_level(),
                                                 default_thread_pool().size()));
}

std::unique_ptr<Device> find_gpu() {
#ifdef FERRY_HAS_CUDA
  if (cuda::device_count() > 0) {
    try {
      return std::make_unique<cuda::CudaDevice>(0);
    } catch (const Error&) {
      return nullptr;  // listed but unusable: plan as for a machine without one
    }
  }
#endif
  return nullptr;
}

void plan_for(std::string_view name, const Device& device, engine::LoadOptions& options) {
  check(name);
  options.backend = planner_backend(name);
  options.device = &device;
}

std::unique_ptr<engine::Engine> make_engine(engine::LoadedModel& m, const EngineSpec& spec) {
  if (m.backend == planner::Backend::cuda) {
#ifdef FERRY_HAS_CUDA
    cuda::CudaEngineOptions co;
    co.device = spec.device;
    co.max_seqs = spec.max_seqs;
    co.context = spec.context;
    co.kv_pool_tokens = spec.kv_pool_tokens;
    // Where the plan put the KV pool: in mapped host memory when VRAM was short.
    co.kv_in_host_memory = m.plan && m.plan->chosen.kv == planner::KvPlace::host;
    co.io = spec.io;
    return std::make_unique<engine::Engine>(
        cuda::make_cuda_backend(m.config, *m.checkpoint, m.placement, co));
#else
    check("cuda");  // throws: the model was planned for a backend this build lacks
#endif
  }
  FERRY_EXPECT(m.weights != nullptr, "the model was loaded for the {} backend, not the CPU",
               planner::backend_name(m.backend));
  engine::EngineOptions eo;
  eo.context = spec.context;
  eo.max_seqs = spec.max_seqs;
  eo.kv_pool_tokens = spec.kv_pool_tokens;
  return std::make_unique<engine::Engine>(*m.weights, eo, default_thread_pool());
}

}  // namespace ferry::backends
