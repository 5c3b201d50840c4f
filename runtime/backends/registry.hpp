// The backend registry: the one place that knows which backends this build has (the CPU always,
// CUDA when the toolkit was found at build time) and how to make each one's device and engine.
// The tools ask it by name (`--device cpu|cuda`) and never see a backend's own headers. (ggml's
// ggml-backend-reg.cpp registers its compiled-in backends the same way.)
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "offload/io_engine.hpp"
#include "planner/plan.hpp"
#include "runtime/core/device.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/loaded_model.hpp"

namespace ferry::backends {

// The backends ferry knows, "cpu" first, whether or not this build has them.
const std::vector<std::string>& known();
// The backends this build has: "cpu", and "cuda" when compiled in.
std::vector<std::string> compiled();
bool is_compiled(std::string_view name);

// `ferry info`'s lines about the backends: the CPU kernels, whether CUDA is compiled in (its
// architectures and runtime), and each GPU ("device cuda:0 NVIDIA T4 (sm_75), …") or why none.
std::vector<std::string> describe_build();

// Throws InvalidArgument unless name is a backend ferry knows ("--device 'tpu' is not cpu or
// cuda") and this build has ("this ferry was built without the CUDA backend …; run without
// --device cuda to use the CPU").
void check(std::string_view name);
// The backend the planner plans for. Only checks that ferry knows name: a plan may be for a
// backend this build lacks (`ferry plan --profile colab-t4` on a laptop).
planner::Backend planner_backend(std::string_view name);

// The device a run on backend `name` plans for and computes on: a CpuDevice (the host, no memory
// of its own) for "cpu"; GPU 0 for "cuda", or CudaError "no CUDA device found: …; run without
// --device cuda to use the CPU". Checks name first.
std::unique_ptr<Device> open_device(std::string_view name);
// A GPU of a compiled-in backend that answers now, or null (never throws): what `ferry plan`
// plans for when not told a device.
std::unique_ptr<Device> find_gpu();

// Makes options plan for backend `name` on device (opened by open_device; it must outlive
// load_model): the planner's backend and the device whose free memory is the VRAM figure.
void plan_for(std::string_view name, const Device& device, engine::LoadOptions& options);

struct EngineSpec {
  int64_t context = 0;  // KV capacity per sequence; 0: model::default_context
  int max_seqs = 1;
  // Tokens the KV cache's pool of blocks holds, all sequences together; 0: max_seqs × context.
  int64_t kv_pool_tokens = 0;
  offload::IoOptions io = offload::IoOptions::from_env();  // a device backend's own loads
  int device = 0;                                          // the GPU's ordinal
};

// The forward pass for a loaded model, on the backend it was planned for (m.backend): the CPU
// backend over m.weights, or the CUDA backend placing m.checkpoint by m.placement (its
// device-tier units are read while it is made). m must outlive the engine.
std::unique_ptr<engine::Engine> make_engine(engine::LoadedModel& m, const EngineSpec& spec);

}  // namespace ferry::backends
