#include "runtime/engine/planning.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "offload/bench_io.hpp"
#include "offload/layer_streamer.hpp"
#include "planner/memory_probe.hpp"
#include "planner/probe_cache.hpp"
#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/clock.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/model/layout.hpp"

namespace ferry::engine {

namespace {

namespace fs = std::filesystem;

// Code, libraries, the tokenizer's tables, thread stacks and allocator slack: `ferry run` on a
// tiny model peaks at 17–20 MiB of RSS with the GPT-2 tokenizer loaded.
constexpr uint64_t kRuntimeBytes = 24ull << 20;
// cuBLAS workspace and small device buffers of the CUDA backend.
constexpr uint64_t kDeviceWorkspaceBytes = 32ull << 20;
constexpr uint64_t kAlign = 4096;

// Rates assumed when nothing can be measured; the source says so and names the flag.
constexpr double kDefaultDiskBytesPerS = 5e8;
constexpr double kDefaultCpuBytesPerS = 1e10;

uint64_t align_up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Every norm and bias, kept as f32 beside the streamed matrices.
uint64_t vector_floats(const model::ModelConfig& c) {
  uint64_t n = 0;
  for (const auto& g : model::all_groups(c))
    for (const auto& w : g.vectors()) n += static_cast<uint64_t>(w.shape.numel());
  return n;
}

// The weights' bytes per second through the CPU's matrix–vector products of one transformer
// block of the model's shapes (q, k, v, out: n_embd × n_embd; fc_in, fc_out: n_inner × n_embd
// and back), as decoding runs them: six calls per block, so small models pay the per-call cost
// they really pay. The rows are cut so the block is at most 128 MiB (the probe must not need
// much memory: it runs before the model's budget is known to be safe), and repeated to stream
// at least 128 MiB from DRAM per timing. The median of a few timings after a warm-up.
// rows > 1: the product of that many rows of x instead, for the cost of a batch's extra rows.
double measure_cpu_matvec(DType dtype, int64_t n_embd, int64_t n_inner, int64_t rows = 1) {
  constexpr uint64_t kMiB = 1ull << 20;
  const int64_t e = n_embd > 0 ? n_embd : 4096;
  const int64_t f = n_inner > 0 ? n_inner : 4 * e;
  struct Mat {
    int64_t k, n;
  };
  std::vector<Mat> mats = {{e, e}, {e, e}, {e, e}, {e, e}, {e, f}, {f, e}};
  const auto block_bytes = [&] {
    uint64_t b = 0;
    for (const auto& m : mats) b += static_cast<uint64_t>(m.n) * packed_row_bytes(dtype, m.k);
    return b;
  };
  if (block_bytes() > 128 * kMiB) {
    const double cut = static_cast<double>(128 * kMiB) / static_cast<double>(block_bytes());
    for (auto& m : mats)
      m.n = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(m.n) * cut));
  }
  std::vector<AlignedBuffer> w;
  for (const auto& m : mats) {
    w.emplace_back(static_cast<std::size_t>(m.n) * packed_row_bytes(dtype, m.k), 4096);
    std::fill_n(static_cast<std::byte*>(w.back().data()), w.back().size(), std::byte{0});
  }
  const uint64_t bytes = block_bytes();
  const int reps =
      static_cast<int>(std::max<uint64_t>(1, (128 * kMiB) / std::max<uint64_t>(bytes, 1)));
  const auto width = static_cast<std::size_t>(std::max(e, f));
  std::vector<float> x(width * static_cast<std::size_t>(rows), 0.5f);
  std::vector<float> y(width * static_cast<std::size_t>(rows));
  std::vector<double> times;
  for (int i = 0; i < 6; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r)
      for (std::size_t j = 0; j < mats.size(); ++j)
        kernels::cpu::linear(x.data(), rows, mats[j].k, w[j].data(), dtype, mats[j].n, nullptr,
                             y.data(), default_thread_pool());
    if (i > 0) times.push_back(seconds_since(t0));  // the first run faults the pages in
  }
  std::nth_element(times.begin(), times.begin() + 2, times.end());
  return static_cast<double>(bytes) * reps / times[2];
}

// The weight bytes × rows per second each row past the first costs: a product of kRows rows
// against a matrix–vector product over the same matrices, timed back to back.
constexpr int64_t kProbeRows = 8;
double measure_cpu_extra_rows(DType dtype, int64_t n_embd, int64_t n_inner) {
  const double one = measure_cpu_matvec(dtype, n_embd, n_inner, 1);
  const double many = measure_cpu_matvec(dtype, n_embd, n_inner, kProbeRows);
  // bytes/one and bytes/many seconds per byte: the extra rows take the difference.
  const double extra_s_per_byte = 1 / many - 1 / one;
  if (extra_s_per_byte <= 0) return 64 * one;  // noise: extra rows cost (almost) nothing
  return static_cast<double>(kProbeRows - 1) / extra_s_per_byte;
}

std::string cpu_cache_key(DType dtype, int64_t n_embd) {
  return fmt::format("cpu {} r{} {} {} threads, n_embd {}", kernels::cpu::linear_level(dtype),
                     kernels::cpu::kKernelsRevision, dtype_name(dtype), default_thread_pool().size(),
                     n_embd > 0 ? n_embd : 4096);
}

// The size class of one streamed read: the power of two nearest to a unit's bytes (8 MiB ..
// 1 GiB). A virtual disk delivers more per second to larger reads (each layer read pays a
// fixed latency), so disk figures are kept per class.
uint64_t read_class_bytes(uint64_t unit_bytes) {
  constexpr uint64_t kMiB = 1ull << 20;
  const uint64_t b =
      std::clamp<uint64_t>(unit_bytes ? unit_bytes : 64 * kMiB, 8 * kMiB, 1ull << 30);
  const uint64_t lo = std::bit_floor(b);
  return b - lo < 2 * lo - b ? lo : 2 * lo;
}

std::string disk_key_of(const offload::Checkpoint& checkpoint, uint64_t unit_bytes) {
  const auto& files = checkpoint.files();
  const auto biggest =
      std::max_element(files.begin(), files.end(),
                       [](const auto& a, const auto& b) { return a.size_bytes < b.size_bytes; });
  return fmt::format("{}, {} reads", planner::disk_cache_key(biggest->path),
                     format_bytes(read_class_bytes(unit_bytes)));
}

std::optional<double> learn_rate(const std::string& key, uint64_t bytes, double busy_s,
                                 std::string_view how) {
  if (bytes < (64ull << 20) || busy_s < 0.05) return std::nullopt;
  planner::ProbeCache cache;
  const double sample = static_cast<double>(bytes) / busy_s;
  return cache.learn(key, sample,
                     fmt::format("{} ({:.2f} GB/s over {})", how,
                                 sample / 1e9, format_bytes(bytes)));
}

planner::Figure disk_figure(const offload::Checkpoint* checkpoint, const ProbeOptions& o) {
  if (!checkpoint) return {kDefaultDiskBytesPerS, "default: no weights to measure; give --disk-bw"};
  const auto& files = checkpoint->files();
  const auto biggest =
      std::max_element(files.begin(), files.end(),
                       [](const auto& a, const auto& b) { return a.size_bytes < b.size_bytes; });
  planner::ProbeCache cache;
  const std::string key = disk_key_of(*checkpoint, o.read_unit_bytes);
  if (!o.reprobe)
    if (const auto c = cache.get(key))
      return {c->value,
              fmt::format("cache {} ({}, {})", c->measured_at.substr(0, 10), key, c->how)};
  if (!o.measure || biggest->size_bytes < (8ull << 20))
    return {kDefaultDiskBytesPerS,
            fmt::format("default: {} is too small to measure; give --disk-bw",
                        biggest->path.filename().string())};
  offload::BenchIoOptions bo;
  // The streamer's engine (io_uring, else the pread pool, when it chooses), queue depth and
  // chunk size.
  bo.engines = {offload::IoBackendKind::uring, offload::IoBackendKind::pread};
  if (o.io.backend != offload::IoBackendKind::automatic) bo.engines = {o.io.backend};
  bo.queue_depth = o.io.queue_depth;
  bo.chunk_bytes = o.io.chunk_bytes;
  constexpr uint64_t kMiB = 1ull << 20;
  // Reads shaped like streaming: one batch per unit of the size class, two in flight (two
  // staging slots), over at least 256 MiB.
  const uint64_t unit = read_class_bytes(o.read_unit_bytes);
  bo.max_bytes =
      std::min<uint64_t>(biggest->size_bytes, std::max(256 * kMiB, 2 * unit)) / kMiB * kMiB;
  bo.batch_bytes = std::min<uint64_t>(bo.max_bytes, unit);
  bo.batches_in_flight = 2;
  try {
    // Streaming reads the same ranges again every token, so the figure is a second pass over
    // the range, after a cold first one (on virtual disks the host's cache makes them differ).
    offload::bench_io(biggest->path, bo);
    bo.evict_page_cache = false;  // O_DIRECT: the second pass still comes from the device
    for (const auto& r : offload::bench_io(biggest->path, bo)) {
      if (!r.error.empty() || r.bytes_per_s <= 0) continue;
      const std::string how =
          fmt::format("{} re-read of {} of {}", offload::to_string(r.engine),
                      format_bytes(r.nbytes), biggest->path.filename().string());
      cache.put(key, r.bytes_per_s, how);
      return {r.bytes_per_s, "measured now: " + how};
    }
  } catch (const Error& e) {
    return {kDefaultDiskBytesPerS,
            fmt::format("default: measuring failed ({}); give --disk-bw", e.what())};
  }
  return {kDefaultDiskBytesPerS,
          "default: no I/O engine could read the checkpoint; give --disk-bw"};
}

planner::Figure cpu_figure(DType dtype, const ProbeOptions& o) {
  planner::ProbeCache cache;
  const std::string key = cpu_cache_key(dtype, o.n_embd);
  if (!o.reprobe)
    if (const auto c = cache.get(key))
      return {c->value, fmt::format("cache {} ({})", c->measured_at.substr(0, 10), key)};
  if (!o.measure) return {kDefaultCpuBytesPerS, "default: not measured; give --cpu-bw"};
  const double rate = measure_cpu_matvec(dtype, o.n_embd, o.n_inner);
  cache.put(key, rate, "128 MiB matrix–vector product");
  return {rate, fmt::format("measured now: {} 128 MiB mat-vec", key)};
}

planner::Figure cpu_rows_figure(DType dtype, const ProbeOptions& o) {
  planner::ProbeCache cache;
  const std::string key = "rows " + cpu_cache_key(dtype, o.n_embd);
  if (!o.reprobe)
    if (const auto c = cache.get(key))
      return {c->value, fmt::format("cache {} ({})", c->measured_at.substr(0, 10), key)};
  if (!o.measure) return {};  // unknown: the planner assumes twice the mat-vec rate
  const double rate = measure_cpu_extra_rows(dtype, o.n_embd, o.n_inner);
  cache.put(key, rate, fmt::format("{}-row product against a mat-vec", kProbeRows));
  return {rate, fmt::format("measured now: {} {}-row product", key, kProbeRows)};
}

}  // namespace

std::optional<double> learn_disk_rate(const model::ModelConfig& config,
                                      const offload::Checkpoint& checkpoint, uint64_t bytes,
                                      double busy_s, std::string_view how) {
  if (checkpoint.files().empty()) return std::nullopt;
  // The key the next plan of this model reads (load_model and `ferry plan` probe with reads of
  // typical_unit_bytes), not the size of the reads this run made: a run streaming in pieces, or
  // streaming only some units, once wrote under the 8 MiB class while plans read the 16 MiB
  // one, so nothing learned ever reached a plan.
  return learn_rate(disk_key_of(checkpoint, typical_unit_bytes(config, &checkpoint)), bytes,
                    busy_s, how);
}

planner::Figure cpu_compute_figure(DType dtype, const ProbeOptions& options) {
  return cpu_figure(dtype, options);
}

planner::Figure cpu_extra_rows_figure(DType dtype, const ProbeOptions& options) {
  return cpu_rows_figure(dtype, options);
}

uint64_t typical_unit_bytes(const model::ModelConfig& config,
                            const offload::Checkpoint* checkpoint) {
  const auto r = plan_request(config, checkpoint, planner::Machine{}, PlanOptions{}, "");
  std::vector<uint64_t> bytes;
  for (const auto& u : r.units) bytes.push_back(u.bytes);
  if (bytes.empty()) return 0;
  std::nth_element(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(bytes.size() / 2),
                   bytes.end());
  return bytes[bytes.size() / 2];
}

std::optional<double> learn_cpu_rate(DType dtype, int64_t n_embd, uint64_t weight_bytes,
                                     double busy_s, std::string_view how) {
  return learn_rate(cpu_cache_key(dtype, n_embd), weight_bytes, busy_s, how);
}

// Per GPU and weight dtype: a packed product's bytes cost more work than an f16 one's.
std::string gpu_cache_key(const std::string& gpu_name, DType dtype) {
  return fmt::format("gpu {} {}", gpu_name, dtype_name(dtype));
}

std::optional<double> learn_gpu_rate(const std::string& gpu_name, DType dtype,
                                     uint64_t weight_bytes, double busy_s, std::string_view how) {
  return learn_rate(gpu_cache_key(gpu_name, dtype), weight_bytes, busy_s, how);
}

uint64_t fixed_host_bytes(const model::ModelConfig& config, int64_t max_batch_rows,
                          int64_t max_logit_rows) {
  return Engine::activation_bytes(config, max_batch_rows, max_logit_rows) +
         vector_floats(config) * sizeof(float) + kRuntimeBytes;
}

DType weight_dtype(const model::ModelConfig& config, const offload::Checkpoint* checkpoint) {
  if (checkpoint)
    if (const auto* t =
            checkpoint->find(model::block_group(config, 0).spec(model::WeightRole::q_proj).name))
      return t->dtype;
  return config.torch_dtype;
}

planner::PlanRequest plan_request(const model::ModelConfig& config,
                                  const offload::Checkpoint* checkpoint,
                                  const planner::Machine& machine, const PlanOptions& o,
                                  std::string model_name) {
  const int64_t context = o.context > 0 ? o.context : model::default_context(config);
  const int64_t limit = model::max_context(config);
  FERRY_EXPECT(context <= limit,
               "--ctx {} is longer than the model's context of {} tokens ({}); use --ctx {} or "
               "less",
               context, limit,
               config.sliding_window > 0 ? "its sliding window" : "max_position_embeddings", limit);
  const int64_t rows = o.max_batch_rows > 0 ? o.max_batch_rows : context;
  const int64_t logit_rows = o.max_logit_rows > 0 ? o.max_logit_rows : rows;
  const bool cuda = o.backend == planner::Backend::cuda;
  const uint64_t kv_elt = cuda ? 2 : sizeof(float);  // fp16 KV on the GPU, f32 on the CPU

  planner::PlanRequest r;
  r.model = std::move(model_name);
  r.backend = o.backend;
  r.machine = machine;
  r.context = context;
  r.context_hint = o.context_hint;
  r.batch = o.max_seqs;
  r.io_queue_depth = o.io_queue_depth;
  r.forced_host_slots = o.forced_host_slots;
  const DType packed = o.format ? o.format->dtype : weight_dtype(config, checkpoint);
  if (packed == DType::q8) r.compression = planner::PlanRequest::Compression::int8;
  if (packed == DType::q4_g64 || packed == DType::q4_g128)
    r.compression = planner::PlanRequest::Compression::int4;
  // The KV pool: every slot at full context unless told its tokens (then a shorter context
  // frees nothing, so there is no per-token figure to suggest one from).
  const uint64_t kv_f32 = KvCache::bytes_needed(config, o.max_seqs, context, o.kv_pool_tokens);
  r.kv_tokens = KvBlocks::pool_blocks(o.max_seqs, context, o.kv_pool_tokens) *
                KvBlocks::kBlockTokens;
  FERRY_EXPECT(cuda || o.kv_memory != planner::KvMemory::device,
               "--kv-memory device puts the KV pool in VRAM, which needs --device cuda; the CPU "
               "backend keeps it in host memory");
  r.kv_memory = cuda ? o.kv_memory : planner::KvMemory::automatic;
  r.kv_bytes = kv_f32 / sizeof(float) * kv_elt;
  r.kv_bytes_per_context_token =
      o.kv_pool_tokens > 0 ? 0 : r.kv_bytes / static_cast<uint64_t>(context);
  const auto attended =
      static_cast<uint64_t>(o.attended_tokens > 0 ? std::min(o.attended_tokens, context)
                                                  : std::max<int64_t>(1, context / 2));
  // Per sequence: the planner multiplies by the batch (this once counted the batch twice, so a
  // batch of 16 paid 16 times its KV reads).
  const uint64_t kv_read = attended * 2 * static_cast<uint64_t>(config.kv_dim()) * kv_elt;

  std::vector<uint64_t> bytes;
  if (o.format) {
    bytes.assign(static_cast<std::size_t>(config.n_layer),
                 model::packed_block_bytes(config, *o.format));
    bytes.push_back(model::packed_head_bytes(config, *o.format));
  } else if (checkpoint) {
    bytes = offload::LayerStreamer::unit_bytes(
        *checkpoint, model_units(config, Placement::all(config, offload::Tier::disk)));
  } else {
    const DType dt = config.torch_dtype;
    for (int l = 0; l < config.n_layer; ++l) {
      uint64_t b = 0;
      for (const auto& w : model::block_group(config, l).weights)
        if (w.is_matrix()) b += align_up(static_cast<uint64_t>(w.shape.numel()) * dtype_size(dt));
      bytes.push_back(b);
    }
    for (const auto& w : model::head_group(config).weights)
      if (w.is_matrix())
        bytes.push_back(align_up(static_cast<uint64_t>(w.shape.numel()) * dtype_size(dt)));
  }
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    const bool head = i + 1 == bytes.size();
    r.units.push_back({head ? "head" : fmt::format("layer {}", i), bytes[i], head ? 0 : kv_read});
  }

  if (!cuda) {
    r.host_fixed_bytes = fixed_host_bytes(config, rows, logit_rows);
  } else {
    const auto e = static_cast<uint64_t>(config.n_embd);
    const auto lr = static_cast<uint64_t>(std::min(rows, logit_rows));
    r.host_fixed_bytes = kRuntimeBytes + (static_cast<uint64_t>(rows) * e +
                                          lr * static_cast<uint64_t>(config.vocab_size)) *
                                             sizeof(float);
    // The CUDA backend keeps the program's activations and logits in f32 on the device, plus a
    // 16-bit copy of each product's input (rows × the widest input: n_embd, q_dim or n_inner)
    // and the pass's positions; the KV pool is where the plan puts it (VRAM, or mapped host
    // memory: cuda_backend.cpp).
    const auto widest_input =
        static_cast<uint64_t>(std::max({config.n_embd, config.q_dim(), config.n_inner}));
    r.device_fixed_bytes = Engine::activation_bytes(config, rows, logit_rows) +
                           static_cast<uint64_t>(rows) * (widest_input * 2 + sizeof(int32_t)) +
                           vector_floats(config) * sizeof(float) + kDeviceWorkspaceBytes;
    // Packed matrices (ferry's, or a GGUF file's blocks) multiplied by many rows are dequantized
    // to f16 into one staging buffer of the largest block matrix's size
    // (runtime/cuda/cuda_backend.cpp).
    if (r.compression != planner::PlanRequest::Compression::none || is_ggml_block(packed)) {
      int64_t largest = 0;
      for (const auto& w : model::block_group(config, 0).matrices())
        largest = std::max(largest, w.shape.numel());
      r.device_fixed_bytes += static_cast<uint64_t>(largest) * 2;
    }
  }
  return r;
}

planner::Machine probe_machine(const offload::Checkpoint* checkpoint, DType dtype,
                               const ProbeOptions& o, const Device* device) {
  planner::Machine m;
  m.name = "this machine";
  const planner::RamProbe ram = planner::probe_ram();
  m.ram_bytes = {static_cast<double>(ram.available_bytes()), "available memory: " + ram.describe()};
  m.memlock_bytes = planner::probe_memlock();
  m.disk_bytes_per_s = disk_figure(checkpoint, o);
  m.cpu_compute_bytes_per_s = cpu_figure(dtype, o);
  // Extra rows matter only to batches: measured when one is planned (batch_rows).
  if (o.batch_rows) m.cpu_row_bytes_per_s = cpu_rows_figure(dtype, o);
  if (device)
    if (const auto mem = device->memory_info()) {
      planner::ProbeCache cache;
      auto cached = [&](const std::string& key, double fallback, const char* flag) {
        if (const auto c = cache.get(key))
          return planner::Figure{c->value,
                                 fmt::format("cache {} ({})", c->measured_at.substr(0, 10), key)};
        return planner::Figure{fallback, fmt::format("default: not measured; give {}", flag)};
      };
      planner::GpuSpec g;
      g.name = device->name();
      g.vram_bytes = {static_cast<double>(mem->free_bytes), "free device memory (" + g.name + ")"};
      g.h2d_bytes_per_s = cached("h2d " + g.name, 12e9, "--h2d-bw");
      if (o.measure && (o.reprobe || !cache.get("h2d " + g.name))) {
        // 256 MiB from page-locked memory, as the staging ring copies a layer.
        try {
          if (const auto rate = device->measure_h2d_bytes_per_s(256ull << 20)) {
            cache.put("h2d " + g.name, *rate, "cudaMemcpyAsync of 256 MiB from registered memory");
            g.h2d_bytes_per_s = {*rate, "measured now: pinned copy of 256 MiB to " + g.name};
          }
        } catch (const Error& e) {
          g.h2d_bytes_per_s.source += fmt::format(" (measuring failed: {})", e.what());
        }
      }
      g.compute_bytes_per_s = cached(gpu_cache_key(g.name, dtype), 2.4e11, "--gpu-bw");
      g.context_bytes = kDeviceWorkspaceBytes;  // the context is already in use: not in "free"
      g.host_context_bytes = 300ull << 20;
      m.gpu = g;
    }
  return m;
}

Placement placement_from_plan(const planner::Plan& plan, const model::ModelConfig& config) {
  const bool cuda = plan.request.backend == planner::Backend::cuda;
#ifndef FERRY_HAS_CUDA
  if (cuda)
    throw PlanError(
        "the plan places layers on a CUDA device, but this ferry was built without the CUDA "
        "backend; make a CPU plan with `ferry plan --device cpu`");
#endif
  const auto& tiers = plan.chosen.tiers;
  FERRY_EXPECT(tiers.size() == static_cast<std::size_t>(config.n_layer) + 1,
               "the plan has {} units but the model has {} layers and a head", tiers.size(),
               config.n_layer);
  // One Tier type: a plan's tiers are the placement's, except that on the CPU the device is the
  // host (the streamer keeps a `device` unit resident in RAM all the same, so say what it is).
  auto placed = [cuda](Tier t) { return !cuda && t == Tier::device ? Tier::host : t; };
  Placement p;
  for (int l = 0; l < config.n_layer; ++l)
    p.blocks.push_back(placed(tiers[static_cast<std::size_t>(l)]));
  p.head = placed(tiers.back());
  p.slot_count = std::max<std::size_t>(2, plan.chosen.host_slots);
  p.chunk_bytes = plan.chosen.chunk_bytes;
  if (cuda) p.device_slots = std::max<std::size_t>(2, plan.chosen.device_slots);
  return p;
}

void check_replay(const planner::Plan& saved, const planner::PlanRequest& now) {
  const planner::PlanRequest& was = saved.request;
  if (was.backend != now.backend)
    throw PlanError(
        fmt::format("the plan is for the {} backend but this run uses {}; make a plan for it with "
                    "`ferry plan --device {}`",
                    planner::backend_name(was.backend), planner::backend_name(now.backend),
                    planner::backend_name(now.backend)));
  if (was.units.size() != now.units.size())
    throw PlanError(fmt::format(
        "the plan has {} weight units but {} has {}: it was made for another model; make the "
        "plan again with `ferry plan -m {}`",
        was.units.size(), now.model, now.units.size(), now.model));
  for (std::size_t i = 0; i < now.units.size(); ++i)
    if (was.units[i].bytes != now.units[i].bytes)
      throw PlanError(fmt::format(
          "the plan's {} is {} but {} here is {}: the plan was made for another checkpoint; "
          "make the plan again with `ferry plan -m {}`",
          was.units[i].name, format_bytes(was.units[i].bytes), now.units[i].name,
          format_bytes(now.units[i].bytes), now.model));
  if (was.context < now.context || was.batch < now.batch)
    throw PlanError(fmt::format(
        "the plan was made for --ctx {} × {} sequence(s) but this run needs {} × {}; make the "
        "plan with a larger --ctx",
        was.context, was.batch, now.context, now.batch));
  // What the placement needs here and now, against what the machine has now.
  planner::PlanRequest here = now;
  planner::Choice c = saved.chosen;
  c.predicted = planner::predict(here, c);
  // A plan is held to its own budget first: a hand-edited plan with every layer on the host
  // and a 100 MiB budget ran at a 171 MiB peak, because only the machine's free RAM was asked.
  const uint64_t own_ram = saved.ram_budget_bytes - std::min(saved.ram_margin_bytes,
                                                             saved.ram_budget_bytes);
  if (c.predicted.peak_ram_bytes > own_ram)
    throw PlanError(fmt::format(
        "the plan needs {} of RAM at its peak ({} of {} units resident, {} staging slots) but its "
        "own budget allows {} ({} less a {} margin): it was edited or made for another "
        "request; make it again with `ferry plan -m {} -o plan.json`",
        format_bytes(c.predicted.peak_ram_bytes),
        c.count(planner::Tier::host) + c.count(planner::Tier::device), c.tiers.size(),
        c.host_slots, format_bytes(own_ram), format_bytes(saved.ram_budget_bytes),
        format_bytes(saved.ram_margin_bytes), now.model));
  if (now.backend == planner::Backend::cuda) {
    const uint64_t own_vram = saved.vram_budget_bytes - std::min(saved.vram_margin_bytes,
                                                                 saved.vram_budget_bytes);
    if (c.predicted.peak_vram_bytes > own_vram)
      throw PlanError(fmt::format(
          "the plan needs {} of VRAM at its peak but its own budget allows {} ({} less a {} "
          "margin): it was edited or made for another request; make it again with `ferry plan "
          "-m {} --device cuda -o plan.json`",
          format_bytes(c.predicted.peak_vram_bytes), format_bytes(own_vram),
          format_bytes(saved.vram_budget_bytes), format_bytes(saved.vram_margin_bytes),
          now.model));
  }
  const uint64_t have = now.machine.ram_bytes.bytes();
  if (c.predicted.peak_ram_bytes > have)
    throw PlanError(fmt::format(
        "the plan needs {} of RAM at its peak but {} allows {}; free memory, or make a plan "
        "for this machine with `ferry plan -m {} -o plan.json`",
        format_bytes(c.predicted.peak_ram_bytes), now.machine.ram_bytes.source, format_bytes(have),
        now.model));
}

}  // namespace ferry::engine
