#include "runtime/cuda/cuda_engine.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>

#include "kernels/cpu/ops.hpp"
#include "kernels/cuda/ops.hpp"
#include "offload/layer_streamer.hpp"
#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/clock.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/core/units.hpp"
#include "runtime/cuda/cuda_check.hpp"
#include "runtime/cuda/cuda_device.hpp"
#include "runtime/cuda/resources.hpp"
#include "runtime/model/layout.hpp"

namespace ferry::cuda {

namespace kc = kernels::cuda;
using engine::LogitsFor;
using engine::Placement;
using engine::SeqTokens;
using model::WeightRole;
using offload::Tier;

namespace {

constexpr std::size_t kCublasWorkspaceBytes = 32ull << 20;  // the planner's device workspace

// Pinned host memory for small per-pass transfers (embedded rows, positions, logits): page
// aligned and registered, grown on demand.
struct PinnedScratch {
  AlignedBuffer buffer;
  HostRegistration registration;
  void ensure(std::size_t nbytes) {
    if (buffer.size() >= nbytes) return;
    registration = HostRegistration();
    const std::size_t rounded = (nbytes + 4095) / 4096 * 4096;
    buffer = AlignedBuffer(rounded, 4096);
    registration = HostRegistration(buffer.data(), rounded);
  }
  template <class T>
  T* as() const {
    return static_cast<T*>(buffer.data());
  }
};

// A weight unit as the GPU sees it.
struct GpuUnit {
  Tier tier = Tier::disk;
  std::size_t stream_index = 0;   // in the run-time streamer (host and disk tiers)
  DeviceBuffer resident;          // device tier
  std::vector<uint64_t> offsets;  // each matrix's offset in the unit's buffer
  uint64_t nbytes = 0;            // the unit's buffer
  std::vector<DType> stored;      // each matrix's dtype in the checkpoint
  std::vector<DType> compute;     // as multiplied (bf16 becomes f16 without bf16 support;
                                  // packed ones are f16 when dequantized for cuBLAS)
  std::vector<int64_t> numel;     // elements of each matrix
  int slot = -1;                  // the device slot holding it while acquired
};

// A unit whose host staging slot is still the source of a copy: released when the event is done.
struct PendingRelease {
  std::size_t stream_index = 0;
  std::size_t event = 0;
};

}  // namespace

struct CudaEngine::Impl {
  model::ModelConfig config;
  const offload::Checkpoint& checkpoint;
  Placement placement;
  CudaEngineOptions options;
  CudaDevice device;
  CudaStream compute;
  CudaStream copy;
  std::optional<CublasHandle> cublas;
  CudaEngineStats stats;

  // Weights. Norms and biases as f32 on the device; matrices per unit.
  DeviceBuffer vectors;                           // every norm and bias
  std::vector<std::size_t> block_vector_offsets;  // floats: ln_1 w, ln_1 b, fc_in b, fc_out b
  std::size_t head_vector_offset = 0;             // ln_f w, ln_f b, lm_head b
  std::vector<GpuUnit> units;                     // n_layer blocks, then the head
  const offload::TensorEntry* wte = nullptr;
  std::vector<std::byte> wte_row;

  // Streaming: host slots (run-time streamer), device slots with their events, and the events
  // that free host slots.
  std::unique_ptr<offload::LayerStreamer> streamer;
  std::vector<HostRegistration> resident_registrations;
  std::vector<DeviceBuffer> device_slots;
  std::vector<CudaEvent> slot_copied;  // recorded on the copy stream after a slot is filled
  std::vector<CudaEvent> slot_free;    // recorded on the compute stream after its layer ran
  std::size_t next_slot = 0;
  std::vector<CudaEvent> release_events;
  std::vector<std::size_t> free_release_events;
  std::deque<PendingRelease> pending;
  std::size_t host_slots = 2;

  // KV cache: [layer][seq][k|v][head][capacity][head_dim] in kv_dtype.
  DType kv_dtype = DType::f32;
  int64_t capacity = 0;
  DeviceBuffer kv;
  std::vector<int64_t> lengths;

  // Activations, sized for the largest pass so far.
  int64_t cap_rows = 0;
  int64_t cap_logit_rows = 0;
  DeviceArena arena;
  float *x = nullptr, *h = nullptr, *q = nullptr, *k = nullptr, *v = nullptr, *attn = nullptr,
        *proj = nullptr, *ff = nullptr, *mlp = nullptr, *final_rows = nullptr, *logits = nullptr;
  void* gemm_in = nullptr;  // a product's input converted to the weights' 16-bit dtype
  // Packed (q8 / q4) matrices multiplied by more than kPackedGemvMaxRows rows are dequantized
  // into this f16 buffer, a chunk of rows at a time, for cuBLAS: the size of the largest block
  // matrix (n_inner × n_embd), so the lm_head goes in several chunks.
  DeviceBuffer dequant;
  int64_t dequant_elems = 0;
  int32_t* positions = nullptr;
  PinnedScratch host_x;
  PinnedScratch host_positions;
  PinnedScratch host_logits;
  std::vector<float> logits_out;

  Impl(const model::ModelConfig& c, const offload::Checkpoint& ck, const Placement& p,
       CudaEngineOptions o)
      : config(c), checkpoint(ck), placement(p), options(std::move(o)), device(options.device) {
    FERRY_CUDA_TRY(cudaSetDevice(options.device));
    compute = CudaStream();
    copy = CudaStream();
    cublas.emplace(compute, kCublasWorkspaceBytes);
  }

  int64_t kv_elt() const { return static_cast<int64_t>(dtype_size(kv_dtype)); }
  std::byte* kv_base(int layer, int seq, int which) {
    const int64_t per = config.n_head * capacity * config.head_dim() * kv_elt();
    const int64_t index = (static_cast<int64_t>(layer) * options.max_seqs + seq) * 2 + which;
    return kv.as<std::byte>() + index * per;
  }

  void load_vectors() {
    std::vector<float> host;
    std::vector<std::byte> narrow;
    const auto load = [&](const model::WeightSpec& w) {
      const offload::TensorEntry& t = checkpoint.at(w.name);
      const std::size_t at = host.size();
      host.resize(at + static_cast<std::size_t>(w.shape.numel()));
      narrow.resize(t.nbytes);
      checkpoint.read(t, narrow.data());
      kernels::cpu::convert_to_f32(narrow.data(), t.dtype, w.shape.numel(), host.data() + at);
    };
    for (int l = 0; l < config.n_layer; ++l) {
      const model::WeightGroup g = model::block_group(config, l);
      block_vector_offsets.push_back(host.size());
      for (WeightRole r : model::kBlockVectors) load(g.spec(r));
    }
    const model::WeightGroup head = model::head_group(config);
    head_vector_offset = host.size();
    for (WeightRole r : model::kHeadVectors) load(head.spec(r));
    vectors = DeviceBuffer(host.size() * sizeof(float));
    // Synchronous on purpose: once, at load, from pageable memory.
    FERRY_CUDA_TRY(cudaMemcpyAsync(vectors.data(), host.data(), host.size() * sizeof(float),
                                   cudaMemcpyHostToDevice, compute.get()));
    compute.synchronize();
  }

  const float* vec(std::size_t offset) const { return vectors.as<float>() + offset; }

  // Matrix dtypes of every unit, checked: the GPU path multiplies f32, f16 and bf16 matrices and
  // the packed q8 / q4 ones of ferry packs.
  void describe_units(const std::vector<offload::StreamUnitSpec>& specs) {
    const bool bf16_ok = device.has_bf16() && options.keep_bf16;
    for (const auto& spec : specs) {
      FERRY_EXPECT(spec.tier != Tier::mapped,
                   "{}: the mapped tier (--mmap) computes on the CPU; the CUDA backend copies "
                   "layers from registered memory",
                   spec.name);
      GpuUnit u;
      u.tier = spec.tier;
      for (const auto& name : spec.tensors) {
        const offload::TensorEntry& t = checkpoint.at(name);
        FERRY_EXPECT(is_float_weight(t.dtype) || is_quantized(t.dtype),
                     "tensor '{}' is {}; the CUDA backend multiplies f32, f16, bf16 and packed "
                     "q8 / q4 weights",
                     name, dtype_name(t.dtype));
        u.stored.push_back(t.dtype);
        u.compute.push_back(
            (t.dtype == DType::bf16 && !bf16_ok) || is_quantized(t.dtype) ? DType::f16 : t.dtype);
        if (is_quantized(t.dtype)) dequant_elems = config.n_inner * config.n_embd;
        u.numel.push_back(t.shape.numel());
      }
      const offload::UnitLayout layout = offload::plan_unit_reads(checkpoint, spec.tensors);
      u.offsets = layout.tensor_offsets;
      u.nbytes = layout.nbytes;
      units.push_back(std::move(u));
    }
  }

  // bf16 matrices become f16 in place (same size) on GPUs without bf16 products. (Packed ones
  // stay packed: they are dequantized as they are multiplied.)
  void convert_in_place(const GpuUnit& u, std::byte* base) {
    for (std::size_t i = 0; i < u.stored.size(); ++i)
      if (is_float_weight(u.stored[i]) && u.stored[i] != u.compute[i])
        FERRY_CUDA_LAUNCH(kc::convert(base + u.offsets[i], u.stored[i], base + u.offsets[i],
                                      u.compute[i], u.numel[i], compute.get()));
  }

  std::size_t take_release_event() {
    if (free_release_events.empty()) {
      release_events.emplace_back();
      return release_events.size() - 1;
    }
    const std::size_t e = free_release_events.back();
    free_release_events.pop_back();
    return e;
  }

  // Hands host slots back to a streamer once their copies are done; with `need_room`, waits for
  // the oldest copies until at most host_slots - 1 slots are held, so the next acquire has one;
  // with `all`, waits for every copy.
  void retire(offload::LayerStreamer& s, bool need_room, bool all = false) {
    while (!pending.empty()) {
      const PendingRelease p = pending.front();
      const CudaEvent& e = release_events[p.event];
      // A streamer can hand out a slot while fewer than all of them are held.
      const bool must = all || (need_room && pending.size() >= host_slots);
      if (!must && !e.done()) break;
      if (must) e.synchronize();
      s.release(p.stream_index);
      free_release_events.push_back(p.event);
      pending.pop_front();
    }
  }

  // Device-tier units: disk → host ring → device, once, the ring's slots reused on events.
  void load_device_units(const std::vector<offload::StreamUnitSpec>& specs) {
    std::vector<offload::StreamUnitSpec> load_specs;
    std::vector<std::size_t> unit_of;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].tier != Tier::device) continue;
      load_specs.push_back(specs[i]);
      load_specs.back().tier = Tier::disk;
      unit_of.push_back(i);
    }
    if (load_specs.empty()) return;
    offload::StreamerOptions so;
    so.slot_count = host_slots;
    so.io = options.io;
    so.pinner = std::make_shared<CudaHostPinner>();
    so.cyclic_prefetch = false;
    so.verify_pool = &default_thread_pool();
    offload::LayerStreamer loader(checkpoint, std::move(load_specs), so);
    uint64_t done_bytes = 0;
    uint64_t total_bytes = 0;
    for (std::size_t i : unit_of) total_bytes += units[i].nbytes;
    for (std::size_t j = 0; j < unit_of.size(); ++j) {
      GpuUnit& u = units[unit_of[j]];
      retire(loader, true);
      const offload::UnitView view = loader.acquire(j);
      u.resident = DeviceBuffer(u.nbytes);
      FERRY_CUDA_TRY(cudaMemcpyAsync(u.resident.data(), view.base(), u.nbytes,
                                     cudaMemcpyHostToDevice, copy.get()));
      const std::size_t e = take_release_event();
      release_events[e].record(copy);
      pending.push_back({j, e});
      stats.device_weight_bytes += u.nbytes;
      stats.h2d_bytes += u.nbytes;
      done_bytes += u.nbytes;
      if (options.io.on_load_progress) options.io.on_load_progress(done_bytes, total_bytes);
    }
    retire(loader, false, true);
    for (std::size_t i : unit_of) convert_in_place(units[i], units[i].resident.as<std::byte>());
    compute.synchronize();
  }

  void build(std::vector<offload::StreamUnitSpec> specs) {
    const auto t0 = std::chrono::steady_clock::now();
    host_slots = std::max<std::size_t>(2, placement.slot_count);
    describe_units(specs);
    if (dequant_elems > 0) dequant = DeviceBuffer(static_cast<std::size_t>(dequant_elems) * 2);
    load_vectors();
    wte = &checkpoint.at(model::embedding_group(config).weights[0].name);
    wte_row.resize(packed_row_bytes(wte->dtype, config.n_embd));
    load_device_units(specs);

    // Host- and disk-tier units: one streamer, in compute order; host ones resident and
    // registered, disk ones read into registered slots ahead of use.
    std::vector<offload::StreamUnitSpec> run_specs;
    uint64_t slot_bytes = 0;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      if (specs[i].tier == Tier::device) continue;
      units[i].stream_index = run_specs.size();
      run_specs.push_back(specs[i]);
      slot_bytes = std::max(slot_bytes, units[i].nbytes);
    }
    if (!run_specs.empty()) {
      offload::StreamerOptions so;
      so.slot_count = host_slots;
      so.io = options.io;
      so.pinner = std::make_shared<CudaHostPinner>();
      so.verify_pool = &default_thread_pool();  // the host thread only waits on the GPU here
      streamer = std::make_unique<offload::LayerStreamer>(checkpoint, std::move(run_specs), so);
      for (const auto& r : streamer->resident_regions())
        resident_registrations.emplace_back(r.data, r.nbytes);
      const std::size_t n_slots = std::max<std::size_t>(2, placement.device_slots);
      for (std::size_t s = 0; s < n_slots; ++s) {
        device_slots.emplace_back(slot_bytes);
        slot_copied.emplace_back();
        slot_free.emplace_back();
        stats.device_slot_bytes += slot_bytes;
      }
    }

    // The KV cache: f32 for an f32 model (the checking path), else f16 as the planner assumes.
    bool all_f32 = true;
    for (const auto& u : units)
      for (DType d : u.stored) all_f32 = all_f32 && d == DType::f32;
    kv_dtype = all_f32 ? DType::f32 : DType::f16;
    capacity = options.context > 0 ? options.context : config.n_positions;
    FERRY_EXPECT(capacity <= kc::attention_max_keys(),
                 "the CUDA attention kernel attends to at most {} tokens; use --ctx {} or less",
                 kc::attention_max_keys(), kc::attention_max_keys());
    kv = DeviceBuffer(static_cast<std::size_t>(2 * config.n_layer * options.max_seqs *
                                               config.n_head * capacity * config.head_dim() *
                                               kv_elt()));
    lengths.assign(static_cast<std::size_t>(options.max_seqs), 0);
    stats.load_s = seconds_since(t0);
  }

  void ensure_activations(int64_t rows, int64_t logit_rows) {
    if (rows <= cap_rows && logit_rows <= cap_logit_rows) return;
    compute.synchronize();  // nothing in flight may still use the old arena
    cap_rows = std::max(rows, cap_rows);
    cap_logit_rows = std::max(logit_rows, cap_logit_rows);
    const auto e = static_cast<std::size_t>(config.n_embd);
    const auto f = static_cast<std::size_t>(config.n_inner);
    const auto r = static_cast<std::size_t>(cap_rows);
    const auto lr = static_cast<std::size_t>(cap_logit_rows);
    arena = DeviceArena();
    const std::size_t row_bytes = r * e * sizeof(float);
    std::size_t off[13];
    for (int i = 0; i < 8; ++i) off[i] = arena.reserve(row_bytes);  // x h q k v attn proj mlp
    off[8] = arena.reserve(r * f * sizeof(float));                  // ff
    off[9] = arena.reserve(r * std::max(e, f) * 2);                 // gemm_in (16-bit)
    off[10] = arena.reserve(r * sizeof(int32_t));                   // positions
    off[11] = arena.reserve(lr * e * sizeof(float));                // final rows
    off[12] = arena.reserve(lr * static_cast<std::size_t>(config.vocab_size) * sizeof(float));
    arena.allocate();
    x = arena.at<float>(off[0]);
    h = arena.at<float>(off[1]);
    q = arena.at<float>(off[2]);
    k = arena.at<float>(off[3]);
    v = arena.at<float>(off[4]);
    attn = arena.at<float>(off[5]);
    proj = arena.at<float>(off[6]);
    mlp = arena.at<float>(off[7]);
    ff = arena.at<float>(off[8]);
    gemm_in = arena.at<void>(off[9]);
    positions = arena.at<int32_t>(off[10]);
    final_rows = arena.at<float>(off[11]);
    logits = arena.at<float>(off[12]);
  }

  // The unit's matrices on the device, copying a streamed unit into a device slot first.
  std::byte* acquire(std::size_t index) {
    GpuUnit& u = units[index];
    if (u.tier == Tier::device) return u.resident.as<std::byte>();
    retire(*streamer, u.tier == Tier::disk);
    const offload::UnitView view = streamer->acquire(u.stream_index);
    const std::size_t s = next_slot++ % device_slots.size();
    copy.wait(slot_free[s].get());  // its previous layer has finished computing
    FERRY_CUDA_TRY(cudaMemcpyAsync(device_slots[s].data(), view.base(), u.nbytes,
                                   cudaMemcpyHostToDevice, copy.get()));
    slot_copied[s].record(copy);
    if (u.tier == Tier::disk) {
      const std::size_t e = take_release_event();
      release_events[e].record(copy);
      pending.push_back({u.stream_index, e});
    }
    stats.h2d_bytes += u.nbytes;
    ++stats.units_copied;
    compute.wait(slot_copied[s].get());
    u.slot = static_cast<int>(s);
    auto* base = device_slots[s].as<std::byte>();
    convert_in_place(u, base);
    return base;
  }

  void release(std::size_t index) {
    GpuUnit& u = units[index];
    if (u.slot < 0) return;
    slot_free[static_cast<std::size_t>(u.slot)].record(compute);
    u.slot = -1;
  }

  // y[rows, n] = in[rows, k] · Wᵀ for matrix i of unit u, whose bytes start at base.
  void linear(const float* in, int64_t rows, const GpuUnit& u, const std::byte* base, std::size_t i,
              int64_t n, int64_t kdim, float* y) {
    const DType st = u.stored[i];
    if (is_quantized(st)) {
      packed_linear(in, rows, base + u.offsets[i], st, n, kdim, y);
      return;
    }
    const DType dt = u.compute[i];
    const void* input = in;
    if (dt != DType::f32) {
      FERRY_CUDA_LAUNCH(kc::convert(in, DType::f32, gemm_in, dt, rows * kdim, compute.get()));
      input = gemm_in;
    }
    FERRY_CUBLAS_TRY(kc::linear(cublas->get(), input, rows, kdim, base + u.offsets[i], dt, n, y));
  }

  // The same product with packed weights: fused into one pass over the packed bytes for a few
  // rows (decoding), else dequantized to f16 a chunk of weight rows at a time for cuBLAS. Both on
  // the compute stream, so a chunk's buffer is free again when the next dequantization runs.
  void packed_linear(const float* in, int64_t rows, const std::byte* w, DType st, int64_t n,
                     int64_t kdim, float* y) {
    cudaStream_t cs = compute.get();
    if (rows <= kc::kPackedGemvMaxRows) {
      FERRY_CUDA_LAUNCH(kc::packed_gemv(w, st, n, kdim, in, rows, y, n, cs));
      return;
    }
    FERRY_CUDA_LAUNCH(kc::convert(in, DType::f32, gemm_in, DType::f16, rows * kdim, cs));
    const int64_t chunk = std::max<int64_t>(1, dequant_elems / kdim);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t nr = std::min(chunk, n - r0);
      FERRY_CUDA_LAUNCH(kc::dequantize_rows(w, st, kdim, r0, nr, dequant.as<uint16_t>(), cs));
      FERRY_CUBLAS_TRY(kc::linear(cublas->get(), gemm_in, rows, kdim, dequant.data(), DType::f16,
                                  nr, y + r0, n));
    }
  }

  const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which);
};

const std::vector<float>& CudaEngine::Impl::forward(std::span<const SeqTokens> batch,
                                                    LogitsFor which) {
  const int64_t e = config.n_embd;
  const int64_t f = config.n_inner;
  const int64_t vocab = config.vocab_size;
  const int64_t n_head = config.n_head;
  const int64_t head_dim = config.head_dim();
  cudaStream_t cs = compute.get();

  // Validate the whole batch before touching any state (as the CPU engine does).
  FERRY_EXPECT(!batch.empty(), "forward pass called with an empty batch");
  std::vector<bool> seen(lengths.size(), false);
  int64_t rows = 0;
  for (const SeqTokens& s : batch) {
    FERRY_EXPECT(s.seq >= 0 && s.seq < options.max_seqs,
                 "sequence slot {} does not exist; the engine was made for {} sequences", s.seq,
                 options.max_seqs);
    FERRY_EXPECT(!seen[static_cast<std::size_t>(s.seq)],
                 "sequence slot {} appears twice in one batch", s.seq);
    seen[static_cast<std::size_t>(s.seq)] = true;
    FERRY_EXPECT(!s.tokens.empty(), "sequence slot {} has no tokens in this batch", s.seq);
    for (std::size_t i = 0; i < s.tokens.size(); ++i)
      FERRY_EXPECT(s.tokens[i] >= 0 && s.tokens[i] < vocab,
                   "token id {} (position {} of the input) is outside the vocabulary of this "
                   "model (ids 0 … {})",
                   s.tokens[i], i, vocab - 1);
    const int64_t len = lengths[static_cast<std::size_t>(s.seq)];
    const auto n = static_cast<int64_t>(s.tokens.size());
    FERRY_EXPECT(len + n <= capacity,
                 "sequence of {} tokens would grow past the context of {} tokens (model "
                 "n_positions {}); shorten the prompt or ask for fewer new tokens",
                 len + n, capacity, config.n_positions);
    rows += n;
  }
  std::vector<int64_t> out_rows;
  if (which == LogitsFor::all) {
    for (int64_t r = 0; r < rows; ++r) out_rows.push_back(r);
  } else {
    int64_t r = 0;
    for (const SeqTokens& s : batch) {
      r += static_cast<int64_t>(s.tokens.size());
      out_rows.push_back(r - 1);
    }
  }
  const auto n_out = static_cast<int64_t>(out_rows.size());
  ensure_activations(rows, n_out);

  // Embedding rows and positions, on the host into pinned memory, then one copy each.
  const auto ur = static_cast<std::size_t>(rows);
  host_x.ensure(ur * static_cast<std::size_t>(e) * sizeof(float));
  host_positions.ensure(ur * sizeof(int32_t));
  std::size_t row = 0;
  for (const SeqTokens& s : batch) {
    const int64_t len = lengths[static_cast<std::size_t>(s.seq)];
    for (std::size_t i = 0; i < s.tokens.size(); ++i, ++row) {
      checkpoint.read_range(*wte, static_cast<uint64_t>(s.tokens[i]) * wte_row.size(),
                            wte_row.size(), wte_row.data());
      kernels::cpu::convert_to_f32(wte_row.data(), wte->dtype, e,
                                   host_x.as<float>() + row * static_cast<std::size_t>(e));
      host_positions.as<int32_t>()[row] = static_cast<int32_t>(len + static_cast<int64_t>(i));
    }
  }
  FERRY_CUDA_TRY(cudaMemcpyAsync(x, host_x.as<float>(), ur * static_cast<std::size_t>(e) * 4,
                                 cudaMemcpyHostToDevice, cs));
  FERRY_CUDA_TRY(cudaMemcpyAsync(positions, host_positions.as<int32_t>(), ur * sizeof(int32_t),
                                 cudaMemcpyHostToDevice, cs));

  for (int layer = 0; layer < config.n_layer; ++layer) {
    const auto li = static_cast<std::size_t>(layer);
    const GpuUnit& u = units[li];
    const std::byte* w = acquire(li);
    const float* vecs = vec(block_vector_offsets[li]);
    // x = x + (attn(ln_1(x)) + mlp(ln_1(x))), as the CPU engine.
    FERRY_CUDA_LAUNCH(
        kc::layer_norm(x, rows, e, vecs, vecs + e, config.layer_norm_epsilon, h, DType::f32, cs));
    linear(h, rows, u, w, 0, e, e, q);
    linear(h, rows, u, w, 1, e, e, k);
    linear(h, rows, u, w, 2, e, e, v);
    FERRY_CUDA_LAUNCH(
        kc::rotary_interleaved(q, rows, e, n_head, head_dim, config.rotary_dim, positions, cs));
    FERRY_CUDA_LAUNCH(
        kc::rotary_interleaved(k, rows, e, n_head, head_dim, config.rotary_dim, positions, cs));
    int64_t row0 = 0;
    for (const SeqTokens& s : batch) {
      const auto n_new = static_cast<int64_t>(s.tokens.size());
      const int64_t n_past = lengths[static_cast<std::size_t>(s.seq)];
      std::byte* kc_ = kv_base(layer, s.seq, 0);
      std::byte* vc_ = kv_base(layer, s.seq, 1);
      const int64_t hs = capacity * head_dim;
      FERRY_CUDA_LAUNCH(kc::kv_store(k + row0 * e, v + row0 * e, e, n_new, n_past, n_head, head_dim,
                                     kc_, vc_, hs, kv_dtype, cs));
      kc::AttentionArgs a;
      a.q = q + row0 * e;
      a.q_stride = e;
      a.k = kc_;
      a.v = vc_;
      a.kv_dtype = kv_dtype;
      a.kv_head_stride = hs;
      a.out = attn + row0 * e;
      a.out_stride = e;
      a.n_new = n_new;
      a.n_past = n_past;
      a.n_head = n_head;
      a.head_dim = head_dim;
      FERRY_CUDA_LAUNCH(kc::attention(a, cs));
      row0 += n_new;
    }
    linear(attn, rows, u, w, 3, e, e, proj);
    linear(h, rows, u, w, 4, f, e, ff);
    FERRY_CUDA_LAUNCH(kc::add_bias(ff, rows, f, vecs + 2 * e, cs));
    FERRY_CUDA_LAUNCH(kc::gelu_new(ff, rows * f, cs));
    linear(ff, rows, u, w, 5, e, f, mlp);
    FERRY_CUDA_LAUNCH(kc::add_bias(mlp, rows, e, vecs + 2 * e + f, cs));
    FERRY_CUDA_LAUNCH(kc::gptj_residual(x, proj, mlp, rows * e, cs));
    release(li);
  }
  for (const SeqTokens& s : batch)
    lengths[static_cast<std::size_t>(s.seq)] += static_cast<int64_t>(s.tokens.size());

  // ln_f and lm_head over the rows whose logits are wanted.
  const auto hi = static_cast<std::size_t>(config.n_layer);
  const GpuUnit& hu = units[hi];
  const std::byte* hw = acquire(hi);
  const float* hv = vec(head_vector_offset);
  if (which == LogitsFor::all) {
    FERRY_CUDA_LAUNCH(kc::layer_norm(x, rows, e, hv, hv + e, config.layer_norm_epsilon, final_rows,
                                     DType::f32, cs));
  } else {
    for (int64_t i = 0; i < n_out; ++i)
      FERRY_CUDA_LAUNCH(kc::layer_norm(x + out_rows[static_cast<std::size_t>(i)] * e, 1, e, hv,
                                       hv + e, config.layer_norm_epsilon, final_rows + i * e,
                                       DType::f32, cs));
  }
  linear(final_rows, n_out, hu, hw, 0, vocab, e, logits);
  FERRY_CUDA_LAUNCH(kc::add_bias(logits, n_out, vocab, hv + 2 * e, cs));
  release(hi);
  const auto logit_bytes = static_cast<std::size_t>(n_out * vocab) * sizeof(float);
  host_logits.ensure(logit_bytes);
  FERRY_CUDA_TRY(
      cudaMemcpyAsync(host_logits.as<float>(), logits, logit_bytes, cudaMemcpyDeviceToHost, cs));
  compute.synchronize();  // the one host wait of a pass: its logits
  if (streamer) retire(*streamer, false, true);
  logits_out.assign(host_logits.as<float>(), host_logits.as<float>() + n_out * vocab);
  return logits_out;
}

CudaEngine::CudaEngine(const model::ModelConfig& config, const offload::Checkpoint& checkpoint,
                       const Placement& placement, CudaEngineOptions options)
    : impl_(std::make_unique<Impl>(config, checkpoint, placement, std::move(options))) {
  engine::check_checkpoint(config, checkpoint);
  impl_->build(engine::model_units(config, placement));
}

CudaEngine::~CudaEngine() {
  if (!impl_) return;
  // Nothing may still read a host slot or write a buffer that is about to go.
  if (cudaStreamSynchronize(impl_->copy.get()) != cudaSuccess ||
      cudaStreamSynchronize(impl_->compute.get()) != cudaSuccess)
    std::fprintf(stderr, "ferry: warning: a CUDA stream failed while shutting down\n");
}

const model::ModelConfig& CudaEngine::config() const { return impl_->config; }
int64_t CudaEngine::context() const { return impl_->capacity; }
int64_t CudaEngine::length(int seq) const {
  return impl_->lengths.at(static_cast<std::size_t>(seq));
}
void CudaEngine::reset(int seq) { impl_->lengths.at(static_cast<std::size_t>(seq)) = 0; }
const std::vector<float>& CudaEngine::forward(std::span<const SeqTokens> batch, LogitsFor which) {
  return impl_->forward(batch, which);
}
const CudaEngineStats& CudaEngine::stats() const { return impl_->stats; }

const offload::StreamerStats* CudaEngine::streamer_stats() const {
  return impl_->streamer ? &impl_->streamer->stats() : nullptr;
}

std::string CudaEngine::describe() const {
  const Impl& s = *impl_;
  std::size_t on_device = 0;
  for (const auto& u : s.units) on_device += u.tier == Tier::device;
  std::string d = fmt::format("{}: {} of {} units in VRAM ({}), KV cache {} {}", s.device.name(),
                              on_device, s.units.size(), format_bytes(s.stats.device_weight_bytes),
                              dtype_name(s.kv_dtype), format_bytes(s.kv.size()));
  if (s.streamer)
    d += fmt::format("; {} through {} device slots ({}); host side: {}", s.units.size() - on_device,
                     s.device_slots.size(), format_bytes(s.stats.device_slot_bytes),
                     s.streamer->describe());
  return d;
}

}  // namespace ferry::cuda
