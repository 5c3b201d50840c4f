#include "runtime/cuda/cuda_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
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
#include "runtime/engine/kv_cache.hpp"
#include "runtime/model/layout.hpp"

namespace ferry::cuda {

namespace kc = kernels::cuda;
using engine::MatrixView;
using engine::Placement;
using engine::SeqRows;
using engine::UnitWeights;
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

// A weight unit (a block, or the head) as the GPU sees it.
struct GpuUnit {
  Tier tier = Tier::disk;
  std::size_t stream_index = 0;             // in the run-time streamer (host and disk tiers)
  DeviceBuffer resident;                    // device tier
  std::vector<model::WeightSpec> matrices;  // in stream order (model::WeightGroup::matrices)
  std::vector<uint64_t> offsets;            // each matrix's offset in the unit's buffer
  uint64_t nbytes = 0;                      // the unit's buffer
  std::vector<DType> stored;                // each matrix's dtype in the checkpoint
  std::vector<DType> compute;               // as multiplied: bf16 becomes f16 without bf16
                                            // products; packed ones stay packed
  std::vector<model::WeightSpec> vectors;   // norms and biases (model::WeightGroup::vectors)
  std::vector<std::size_t> vector_offsets;  // each one's offset (floats) in the vector buffer
  int slot = -1;                            // the device slot holding it while acquired
  bool range_checked = false;  // bf16 → f16: its values were checked to fit f16 (once)
};

// A unit whose host staging slot is still the source of a copy: released when the event is done.
struct PendingRelease {
  std::size_t stream_index = 0;
  std::size_t event = 0;
};

// A device buffer that only grows; the stream is drained first, since kernels already queued
// may still read the old one.
struct GrowingBuffer {
  DeviceBuffer buffer;
  template <class T>
  T* ensure(std::size_t nbytes, const CudaStream& stream) {
    if (buffer.size() < nbytes) {
      stream.synchronize();
      buffer = DeviceBuffer();
      buffer = DeviceBuffer(nbytes);
    }
    return buffer.as<T>();
  }
};

}  // namespace

struct CudaBackend::Impl {
  model::ModelConfig config;
  const offload::Checkpoint& checkpoint;
  Placement placement;
  CudaEngineOptions options;
  CudaDevice device;
  CudaStream compute;
  CudaStream copy;
  std::optional<CublasHandle> cublas;
  CudaEngineStats stats;

  // Weights. Norms and biases as f32 on the device, in one buffer; matrices per unit.
  DeviceBuffer vectors;
  std::vector<GpuUnit> units;  // n_layer blocks, then the head
  const offload::TensorEntry* embed_table = nullptr;
  std::vector<std::byte> embed_row;  // one embedding row as stored

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

  // KV cache, paged as the CPU's (engine/kv_cache.hpp): a pool of blocks
  // [layer][k|v][kv head][block][kBlockTokens][head_dim] in kv_dtype, the sequences' block tables
  // kept on the host (blocks) and copied to the device (tables: max_seqs rows of table_width
  // ids) before a pass that changed them reads them.
  DType kv_dtype = DType::f32;
  int64_t capacity = 0;
  DeviceBuffer kv;               // the pool in VRAM, or
  MappedHostBuffer kv_mapped;    // in mapped host memory (options.kv_in_host_memory)
  std::byte* kv_data = nullptr;  // the pool as the kernels address it
  std::size_t kv_bytes = 0;
  engine::KvBlocks blocks;
  int64_t table_width = 0;
  DeviceBuffer tables;
  std::vector<int32_t> host_tables;
  uint64_t tables_version = ~uint64_t{0};  // the blocks' version the device copy shows

  // Activations (the program's buffers), each grown to the largest pass so far.
  std::vector<std::size_t> act_floats;
  DeviceArena arena;
  std::vector<std::size_t> act_offsets;
  // A product's input converted to the weights' 16-bit dtype: rows × the widest input.
  GrowingBuffer gemm_in;
  // Packed (q8 / q4) matrices multiplied by more than kPackedGemvMaxRows rows are dequantized
  // into this f16 buffer, a chunk of rows at a time, for cuBLAS: the size of the largest block
  // matrix, so the lm_head goes in several chunks.
  DeviceBuffer dequant;
  int64_t dequant_elems = 0;
  GrowingBuffer positions;  // the pass's positions (int32), for rotary
  DeviceBuffer inv_freq;    // the rotary frequencies (Llama family; GPT-J's are computed)
  CudaEvent host_x_copied;  // host_x / host_positions are free again once these are done
  CudaEvent host_positions_copied;
  PinnedScratch host_x;
  PinnedScratch host_positions;
  PinnedScratch host_out;

  Impl(const model::ModelConfig& c, const offload::Checkpoint& ck, const Placement& p,
       CudaEngineOptions o)
      : config(c), checkpoint(ck), placement(p), options(std::move(o)), device(options.device) {
    FERRY_CUDA_TRY(cudaSetDevice(options.device));
    compute = CudaStream();
    copy = CudaStream();
    cublas.emplace(compute, kCublasWorkspaceBytes);
  }

  int64_t kv_elt() const { return static_cast<int64_t>(dtype_size(kv_dtype)); }
  static constexpr int64_t kBlockTokens = engine::KvBlocks::kBlockTokens;
  // Elements between one layer's KV heads, and between consecutive blocks of one head.
  int64_t kv_head_stride() const { return blocks.blocks_total() * kv_block_stride(); }
  int64_t kv_block_stride() const { return kBlockTokens * config.head_dim(); }
  // Layer `layer`'s keys (which 0) or values (1): head h's block b at h · kv_head_stride() +
  // b · kv_block_stride() elements.
  std::byte* kv_base(int layer, int which) {
    const int64_t elems =
        (static_cast<int64_t>(layer) * 2 + which) * config.n_kv_head * kv_head_stride();
    return kv_data + elems * kv_elt();
  }

  // Takes the blocks the pass's new tokens need (all or none) and brings the device's copy of
  // the tables up to date, on the compute stream so that no earlier pass's kernel reads the new
  // ids. From pageable memory: cudaMemcpyAsync returns once it has staged host_tables.
  void reserve(std::span<const SeqRows> seqs) {
    std::vector<engine::KvBlocks::Need> needs;
    needs.reserve(seqs.size());
    for (const SeqRows& s : seqs) needs.push_back({s.seq, s.n_past + s.n_new});
    blocks.reserve(needs);
    if (blocks.version() == tables_version) return;
    for (int q = 0; q < blocks.n_seqs(); ++q) {
      const std::span<const int32_t> t = blocks.table(q);
      std::copy(t.begin(), t.end(), host_tables.begin() + q * table_width);
    }
    FERRY_CUDA_TRY(cudaMemcpyAsync(tables.data(), host_tables.data(),
                                   host_tables.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                   compute.get()));
    tables_version = blocks.version();
  }

  // Every unit's norms and biases, widened to f32 and uploaded once into one device buffer.
  void load_vectors() {
    std::vector<float> host;
    std::vector<std::byte> narrow;
    for (GpuUnit& u : units) {
      for (const model::WeightSpec& w : u.vectors) {
        const offload::TensorEntry& t = checkpoint.at(w.name);
        u.vector_offsets.push_back(host.size());
        host.resize(host.size() + static_cast<std::size_t>(w.shape.numel()));
        narrow.resize(t.nbytes);
        checkpoint.read(t, narrow.data());
        kernels::cpu::convert_to_f32(narrow.data(), t.dtype, w.shape.numel(),
                                     host.data() + u.vector_offsets.back());
      }
    }
    if (host.empty()) return;
    vectors = DeviceBuffer(host.size() * sizeof(float));
    // Synchronous on purpose: once, at load, from pageable memory.
    FERRY_CUDA_TRY(cudaMemcpyAsync(vectors.data(), host.data(), host.size() * sizeof(float),
                                   cudaMemcpyHostToDevice, compute.get()));
    compute.synchronize();
  }

  // Matrix dtypes of every unit, checked: the GPU path multiplies f32, f16 and bf16 matrices and
  // the packed q8 / q4 ones of ferry packs. specs are engine::model_units: the blocks' matrices,
  // then the head's, in model::WeightGroup::matrices() order.
  void describe_units(const std::vector<offload::StreamUnitSpec>& specs) {
    const bool bf16_ok = device.has_bf16() && options.keep_bf16;
    FERRY_EXPECT(specs.size() == static_cast<std::size_t>(config.n_layer) + 1,
                 "expected {} weight units (the blocks and the head), got {}", config.n_layer + 1,
                 specs.size());
    for (std::size_t i = 0; i < specs.size(); ++i) {
      const auto& spec = specs[i];
      FERRY_EXPECT(spec.tier != Tier::mapped,
                   "{}: the mapped tier (--mmap) computes on the CPU; the CUDA backend copies "
                   "layers from registered memory",
                   spec.name);
      const bool head = i + 1 == specs.size();
      const model::WeightGroup group =
          head ? model::head_group(config) : model::block_group(config, static_cast<int>(i));
      GpuUnit u;
      u.tier = spec.tier;
      u.matrices = group.matrices();
      u.vectors = group.vectors();
      FERRY_EXPECT(u.matrices.size() == spec.tensors.size(),
                   "{}: {} matrices in the stream unit, {} in the model's layout", spec.name,
                   spec.tensors.size(), u.matrices.size());
      for (std::size_t j = 0; j < u.matrices.size(); ++j) {
        const std::string& name = spec.tensors[j];
        FERRY_EXPECT(name == u.matrices[j].name, "{}: stream unit tensor '{}' is not '{}'",
                     spec.name, name, u.matrices[j].name);
        const offload::TensorEntry& t = checkpoint.at(name);
        FERRY_EXPECT(is_float_weight(t.dtype) || is_row_packed(t.dtype),
                     "tensor '{}' is {}; the CUDA backend multiplies f32, f16, bf16, packed "
                     "q8 / q4 weights and llama.cpp's block formats (q8_0 … q6_k)",
                     name, dtype_name(t.dtype));
        u.stored.push_back(t.dtype);
        u.compute.push_back(t.dtype == DType::bf16 && !bf16_ok ? DType::f16 : t.dtype);
        if (is_row_packed(t.dtype)) dequant_elems = largest_block_matrix();
      }
      const offload::UnitLayout layout = offload::plan_unit_reads(checkpoint, spec.tensors);
      u.offsets = layout.tensor_offsets;
      u.nbytes = layout.nbytes;
      units.push_back(std::move(u));
    }
  }

  int64_t largest_block_matrix() const {
    int64_t n = 0;
    for (const auto& w : model::block_group(config, 0).matrices()) n = std::max(n, w.shape.numel());
    return n;
  }

  // Before bf16 matrices are multiplied as f16 (GPUs without bf16 products), the unit's bytes
  // on the host are checked once: a finite value beyond f16's range would become inf and poison
  // every logit, so it is refused naming the tensor. (Trained models stay far inside ±65504.)
  void check_f16_range(GpuUnit& u, const std::byte* host_base) {
    if (u.range_checked) return;
    for (std::size_t i = 0; i < u.stored.size(); ++i) {
      if (u.stored[i] != DType::bf16 || u.compute[i] != DType::f16) continue;
      const int64_t beyond = kernels::cpu::bf16_count_beyond_f16(
          reinterpret_cast<const uint16_t*>(host_base + u.offsets[i]), u.matrices[i].shape.numel());
      FERRY_EXPECT(beyond == 0,
                   "tensor '{}' holds {} bf16 weights beyond f16's range (|x| > 65504); {} has "
                   "no bf16 products and would turn them into inf. Run on the CPU (--device cpu), "
                   "on a GPU with bf16 (sm_80 or newer), or convert to an int8 / int4 pack "
                   "(ferry convert --quant int8)",
                   u.matrices[i].name, beyond, device.name());
    }
    u.range_checked = true;
  }

  // bf16 matrices become f16 in place (same size) on GPUs without bf16 products. (Packed ones
  // stay packed: they are dequantized as they are multiplied.)
  void convert_in_place(const GpuUnit& u, std::byte* base) {
    for (std::size_t i = 0; i < u.stored.size(); ++i)
      if (u.stored[i] != u.compute[i])
        FERRY_CUDA_LAUNCH(kc::convert(base + u.offsets[i], u.stored[i], base + u.offsets[i],
                                      u.compute[i], u.matrices[i].shape.numel(), compute.get()));
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
      check_f16_range(u, view.base());
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

  void build(const std::vector<offload::StreamUnitSpec>& specs) {
    const auto t0 = std::chrono::steady_clock::now();
    host_slots = std::max<std::size_t>(2, placement.slot_count);
    describe_units(specs);
    if (dequant_elems > 0) dequant = DeviceBuffer(static_cast<std::size_t>(dequant_elems) * 2);
    load_vectors();
    embed_table = &checkpoint.at(model::embedding_group(config).weights[0].name);
    embed_row.resize(packed_row_bytes(embed_table->dtype, config.n_embd));
    if (config.rope_style == model::RopeStyle::half || config.is_llama_family()) {
      const std::vector<float> f = config.rope_inv_freq();
      inv_freq = DeviceBuffer(f.size() * sizeof(float));
      FERRY_CUDA_TRY(cudaMemcpyAsync(inv_freq.data(), f.data(), f.size() * sizeof(float),
                                     cudaMemcpyHostToDevice, compute.get()));
      compute.synchronize();  // f is pageable and about to go
    }
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

    // The KV cache, sized by KV heads: f32 for an f32 model (the checking path), else f16 as the
    // planner assumes.
    bool all_f32 = true;
    for (const auto& u : units)
      for (DType d : u.stored) all_f32 = all_f32 && d == DType::f32;
    kv_dtype = all_f32 ? DType::f32 : DType::f16;
    capacity = options.context > 0 ? options.context : model::default_context(config);
    FERRY_EXPECT(capacity <= model::max_context(config),
                 "a context of {} tokens is longer than the model's {}; use --ctx {} or less",
                 capacity, model::max_context(config), model::max_context(config));
    FERRY_EXPECT(capacity <= kc::attention_max_keys(),
                 "the CUDA attention kernel attends to at most {} tokens; use --ctx {} or less",
                 kc::attention_max_keys(), kc::attention_max_keys());
    FERRY_EXPECT(options.max_seqs >= 1, "the CUDA backend needs at least one sequence slot");
    FERRY_EXPECT(options.kv_pool_tokens >= 0, "the KV cache's pool cannot hold {} tokens",
                 options.kv_pool_tokens);
    blocks = engine::KvBlocks(
        options.max_seqs, capacity,
        engine::KvBlocks::pool_blocks(options.max_seqs, capacity, options.kv_pool_tokens));
    kv_bytes = static_cast<std::size_t>(blocks.blocks_total()) *
               engine::KvCache::block_bytes(config, static_cast<uint64_t>(kv_elt()));
    if (options.kv_in_host_memory) {
      try {
        kv_mapped = MappedHostBuffer(kv_bytes);
      } catch (const CudaError& e) {
        throw CudaError(fmt::format(
            "the KV pool of {} ({} blocks of {} tokens) in host memory: {}; use a smaller "
            "--kv-tokens or fewer --max-seqs, or keep it in VRAM with --kv-memory device",
            format_bytes(kv_bytes), blocks.blocks_total(), kBlockTokens, e.what()));
      }
      kv_data = static_cast<std::byte*>(kv_mapped.device_data());
    } else {
      kv = DeviceBuffer(kv_bytes);
      kv_data = kv.as<std::byte>();
    }
    table_width = engine::kv_blocks_for(capacity);
    host_tables.assign(static_cast<std::size_t>(options.max_seqs * table_width), 0);
    tables = DeviceBuffer(host_tables.size() * sizeof(int32_t));
    stats.load_s = seconds_since(t0);
  }

  std::vector<float*> activations(std::span<const std::size_t> floats) {
    bool grow = act_floats.size() < floats.size();
    if (grow) act_floats.resize(floats.size(), 0);
    for (std::size_t i = 0; i < floats.size(); ++i) {
      if (floats[i] > act_floats[i]) {
        act_floats[i] = floats[i];
        grow = true;
      }
    }
    if (grow) {
      compute.synchronize();  // nothing in flight may still use the old arena
      arena = DeviceArena();
      act_offsets.clear();
      for (std::size_t n : act_floats) act_offsets.push_back(arena.reserve(n * sizeof(float)));
      arena.allocate();
    }
    std::vector<float*> out;
    for (std::size_t i = 0; i < floats.size(); ++i)
      out.push_back(floats[i] > 0 ? arena.at<float>(act_offsets[i]) : nullptr);
    return out;
  }

  // The unit's matrices on the device, copying a streamed unit into a device slot first.
  UnitWeights acquire(std::size_t index) {
    GpuUnit& u = units[index];
    std::byte* base = nullptr;
    if (u.tier == Tier::device) {
      base = u.resident.as<std::byte>();
    } else {
      retire(*streamer, u.tier == Tier::disk);
      const offload::UnitView view = streamer->acquire(u.stream_index);
      check_f16_range(u, view.base());
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
      base = device_slots[s].as<std::byte>();
      convert_in_place(u, base);
    }
    UnitWeights w;
    for (std::size_t i = 0; i < u.matrices.size(); ++i) {
      const model::WeightSpec& m = u.matrices[i];
      // Packed matrices keep their dtype (linear dispatches on it); float ones are as converted.
      w.set(m.role,
            MatrixView{base + u.offsets[i], u.compute[i], m.shape.dims[0], m.shape.dims[1]});
    }
    for (std::size_t i = 0; i < u.vectors.size(); ++i)
      w.set(u.vectors[i].role, vectors.as<const float>() + u.vector_offsets[i]);
    return w;
  }

  void release(std::size_t index) {
    GpuUnit& u = units[index];
    if (u.slot < 0) return;
    slot_free[static_cast<std::size_t>(u.slot)].record(compute);
    u.slot = -1;
  }

  // y[rows, n] = x[rows, k] · Wᵀ, W [n, k] on the device.
  void linear(const float* x, int64_t rows, const MatrixView& w, float* y) {
    if (is_row_packed(w.dtype)) {
      packed_linear(x, rows, w.data, w.dtype, w.rows, w.cols, y);
      return;
    }
    const void* input = x;
    if (w.dtype != DType::f32) {
      void* in16 = gemm_in.ensure<void>(static_cast<std::size_t>(rows * w.cols) * 2, compute);
      FERRY_CUDA_LAUNCH(kc::convert(x, DType::f32, in16, w.dtype, rows * w.cols, compute.get()));
      input = in16;
    }
    FERRY_CUBLAS_TRY(kc::linear(cublas->get(), input, rows, w.cols, w.data, w.dtype, w.rows, y));
  }

  // The same product with packed weights: fused into one pass over the packed bytes for a few
  // rows (decoding), else dequantized to f16 a chunk of weight rows at a time for cuBLAS. Both on
  // the compute stream, so a chunk's buffer is free again when the next dequantization runs.
  void packed_linear(const float* x, int64_t rows, const void* w, DType st, int64_t n, int64_t kdim,
                     float* y) {
    cudaStream_t cs = compute.get();
    if (rows <= kc::kPackedGemvMaxRows) {
      FERRY_CUDA_LAUNCH(kc::packed_gemv(w, st, n, kdim, x, rows, y, n, cs));
      return;
    }
    void* in16 = gemm_in.ensure<void>(static_cast<std::size_t>(rows * kdim) * 2, compute);
    FERRY_CUDA_LAUNCH(kc::convert(x, DType::f32, in16, DType::f16, rows * kdim, cs));
    const int64_t chunk = std::max<int64_t>(1, dequant_elems / kdim);
    for (int64_t r0 = 0; r0 < n; r0 += chunk) {
      const int64_t nr = std::min(chunk, n - r0);
      FERRY_CUDA_LAUNCH(kc::dequantize_rows(w, st, kdim, r0, nr, dequant.as<uint16_t>(), cs));
      FERRY_CUBLAS_TRY(
          kc::linear(cublas->get(), in16, rows, kdim, dequant.data(), DType::f16, nr, y + r0, n));
    }
  }

  void attend(int layer, std::span<const SeqRows> seqs, const float* q, const float* k,
              const float* v, float* out) {
    const int64_t hd = config.head_dim();
    const int64_t qd = config.q_dim();
    const int64_t kvd = config.kv_dim();
    const int64_t hs = kv_head_stride();
    const int64_t bs = kv_block_stride();
    cudaStream_t cs = compute.get();
    // The engine reserved the blocks before the pass; a caller driving the backend directly may
    // not have (the first layer takes them then, all or none).
    if (layer == 0) reserve(seqs);
    std::byte* kc_ = kv_base(layer, 0);
    std::byte* vc_ = kv_base(layer, 1);
    for (const SeqRows& s : seqs) {
      FERRY_EXPECT(engine::kv_blocks_for(s.n_past + s.n_new) <=
                       static_cast<int64_t>(blocks.table(s.seq).size()),
                   "the KV cache has no blocks for sequence slot {}'s tokens {} … {} in layer {}",
                   s.seq, s.n_past, s.n_past + s.n_new - 1, layer);
      const int32_t* table = tables.as<int32_t>() + s.seq * table_width;
      // The new keys (after rotary, as Hugging Face caches them) and values, per KV head, into
      // their blocks.
      FERRY_CUDA_LAUNCH(kc::kv_store(k + s.row0 * kvd, v + s.row0 * kvd, kvd, s.n_new, s.n_past,
                                     config.n_kv_head, hd, kc_, vc_, hs, kv_dtype, cs, table,
                                     kBlockTokens, bs));
      kc::AttentionArgs a;
      a.q = q + s.row0 * qd;
      a.q_stride = qd;
      a.k = kc_;
      a.v = vc_;
      a.kv_dtype = kv_dtype;
      a.kv_head_stride = hs;
      a.block_table = table;
      a.block_tokens = kBlockTokens;
      a.block_stride = bs;
      a.out = out + s.row0 * qd;
      a.out_stride = qd;
      a.n_new = s.n_new;
      a.n_past = s.n_past;
      a.n_head = config.n_head;
      a.n_kv_head = config.n_kv_head;
      a.head_dim = hd;
      FERRY_CUDA_LAUNCH(kc::attention(a, cs));
    }
  }
};

CudaBackend::CudaBackend(const model::ModelConfig& config, const offload::Checkpoint& checkpoint,
                         const Placement& placement, CudaEngineOptions options)
    : impl_(std::make_unique<Impl>(config, checkpoint, placement, std::move(options))) {
  engine::check_checkpoint(config, checkpoint);
  impl_->build(engine::model_units(config, placement));
}

CudaBackend::~CudaBackend() {
  if (!impl_) return;
  // Nothing may still read a host slot or write a buffer that is about to go.
  if (cudaStreamSynchronize(impl_->copy.get()) != cudaSuccess ||
      cudaStreamSynchronize(impl_->compute.get()) != cudaSuccess)
    std::fprintf(stderr, "ferry: warning: a CUDA stream failed while shutting down\n");
}

const model::ModelConfig& CudaBackend::config() const { return impl_->config; }

std::string CudaBackend::name() const { return fmt::format("cuda ({})", impl_->device.name()); }

int64_t CudaBackend::context() const { return impl_->capacity; }
int CudaBackend::max_seqs() const { return impl_->options.max_seqs; }
int64_t CudaBackend::length(int seq) const { return impl_->blocks.length(seq); }
engine::KvUsage CudaBackend::kv_usage() const {
  const engine::KvBlocks& b = impl_->blocks;
  return {Impl::kBlockTokens, b.blocks_total(), b.blocks_used(), impl_->kv_bytes};
}
void CudaBackend::set_length(int seq, int64_t n) { impl_->blocks.set_length(seq, n); }
void CudaBackend::reserve(std::span<const engine::SeqRows> seqs) { impl_->reserve(seqs); }

std::vector<float*> CudaBackend::activations(std::span<const std::size_t> floats) {
  return impl_->activations(floats);
}

void CudaBackend::begin_pass(std::span<const int32_t> positions) {
  Impl& s = *impl_;
  const std::size_t nbytes = positions.size_bytes();
  if (nbytes == 0) return;
  s.host_positions_copied.synchronize();  // the previous pass's copy has read the pinned rows
  s.host_positions.ensure(nbytes);
  std::memcpy(s.host_positions.as<int32_t>(), positions.data(), nbytes);
  int32_t* dst = s.positions.ensure<int32_t>(nbytes, s.compute);
  FERRY_CUDA_TRY(cudaMemcpyAsync(dst, s.host_positions.as<int32_t>(), nbytes,
                                 cudaMemcpyHostToDevice, s.compute.get()));
  s.host_positions_copied.record(s.compute);
}

// Embedding rows on the host into pinned memory (read from the checkpoint a row per token),
// then one copy.
void CudaBackend::embed(std::span<const int32_t> ids, float* x) {
  Impl& s = *impl_;
  const auto e = static_cast<std::size_t>(s.config.n_embd);
  const std::size_t nbytes = ids.size() * e * sizeof(float);
  if (nbytes == 0) return;
  s.host_x_copied.synchronize();
  s.host_x.ensure(nbytes);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    s.checkpoint.read_range(*s.embed_table, static_cast<uint64_t>(ids[i]) * s.embed_row.size(),
                            s.embed_row.size(), s.embed_row.data());
    kernels::cpu::convert_to_f32(s.embed_row.data(), s.embed_table->dtype, s.config.n_embd,
                                 s.host_x.as<float>() + i * e);
  }
  FERRY_CUDA_TRY(
      cudaMemcpyAsync(x, s.host_x.as<float>(), nbytes, cudaMemcpyHostToDevice, s.compute.get()));
  s.host_x_copied.record(s.compute);
}

UnitWeights CudaBackend::acquire_block(int layer) {
  return impl_->acquire(static_cast<std::size_t>(layer));
}
void CudaBackend::release_block(int layer) { impl_->release(static_cast<std::size_t>(layer)); }
UnitWeights CudaBackend::acquire_head() {
  return impl_->acquire(static_cast<std::size_t>(impl_->config.n_layer));
}
void CudaBackend::release_head() {
  impl_->release(static_cast<std::size_t>(impl_->config.n_layer));
}

void CudaBackend::norm(model::NormKind kind, const float* x, int64_t rows, int64_t n,
                       const float* gamma, const float* beta, float eps, float* y) {
  if (rows == 0) return;
  cudaStream_t cs = impl_->compute.get();
  if (kind == model::NormKind::rms_norm) {
    // In place (y == x, Qwen3's q/k norm) is safe for an f32 output: see kc::rms_norm.
    FERRY_CUDA_LAUNCH(kc::rms_norm(x, rows, n, gamma, eps, y, DType::f32, cs));
  } else {
    FERRY_EXPECT(x != y, "layer_norm on the GPU does not run in place");
    FERRY_CUDA_LAUNCH(kc::layer_norm(x, rows, n, gamma, beta, eps, y, DType::f32, cs));
  }
}

void CudaBackend::linear(const float* x, int64_t rows, const MatrixView& w, const float* bias,
                         float* y) {
  if (rows == 0) return;
  impl_->linear(x, rows, w, y);
  if (bias) FERRY_CUDA_LAUNCH(kc::add_bias(y, rows, w.rows, bias, impl_->compute.get()));
}

void CudaBackend::rotary(float* x, int64_t rows, int64_t n_head) {
  const Impl& s = *impl_;
  if (rows == 0) return;
  const int64_t hd = s.config.head_dim();
  const auto* pos = s.positions.buffer.as<const int32_t>();
  if (s.config.rope_style == model::RopeStyle::half) {
    FERRY_CUDA_LAUNCH(kc::rotary_half(x, rows, n_head * hd, n_head, hd, s.config.rotary_dim,
                                      s.inv_freq.as<const float>(), pos, s.compute.get()));
  } else if (s.config.is_llama_family()) {
    FERRY_CUDA_LAUNCH(kc::rotary_pairs(x, rows, n_head * hd, n_head, hd, s.config.rotary_dim,
                                       s.inv_freq.as<const float>(), pos, s.compute.get()));
  } else {
    FERRY_CUDA_LAUNCH(kc::rotary_interleaved(x, rows, n_head * hd, n_head, hd, s.config.rotary_dim,
                                             pos, s.compute.get()));
  }
}

void CudaBackend::attend(int layer, std::span<const SeqRows> seqs, const float* q, const float* k,
                         const float* v, float* out) {
  impl_->attend(layer, seqs, q, k, v, out);
}

void CudaBackend::gelu_new(float* x, int64_t n) {
  if (n > 0) FERRY_CUDA_LAUNCH(kc::gelu_new(x, n, impl_->compute.get()));
}

void CudaBackend::silu_mul(float* gate, const float* up, int64_t n) {
  if (n > 0) FERRY_CUDA_LAUNCH(kc::silu_mul(gate, up, n, impl_->compute.get()));
}

void CudaBackend::add(float* y, const float* x, int64_t n) {
  if (n > 0) FERRY_CUDA_LAUNCH(kc::add(y, x, n, impl_->compute.get()));
}

// Runs of consecutive rows go as one copy (all of a pass's rows, for LogitsFor::all).
void CudaBackend::gather_rows(const float* x, std::span<const int64_t> rows, int64_t n, float* y) {
  const std::size_t row_bytes = static_cast<std::size_t>(n) * sizeof(float);
  for (std::size_t i = 0; i < rows.size();) {
    std::size_t run = 1;
    while (i + run < rows.size() && rows[i + run] == rows[i] + static_cast<int64_t>(run)) ++run;
    FERRY_CUDA_TRY(cudaMemcpyAsync(y + static_cast<int64_t>(i) * n, x + rows[i] * n,
                                   run * row_bytes, cudaMemcpyDeviceToDevice,
                                   impl_->compute.get()));
    i += run;
  }
}

void CudaBackend::read(const float* x, int64_t n, std::vector<float>& out) {
  Impl& s = *impl_;
  const auto nbytes = static_cast<std::size_t>(n) * sizeof(float);
  s.host_out.ensure(std::max<std::size_t>(nbytes, 1));
  if (nbytes > 0)
    FERRY_CUDA_TRY(cudaMemcpyAsync(s.host_out.as<float>(), x, nbytes, cudaMemcpyDeviceToHost,
                                   s.compute.get()));
  s.compute.synchronize();  // the one host wait of a pass: its logits
  if (s.streamer) s.retire(*s.streamer, false, true);
  out.assign(s.host_out.as<float>(), s.host_out.as<float>() + n);
}

const CudaEngineStats& CudaBackend::stats() const { return impl_->stats; }

const offload::LayerStreamer* CudaBackend::host_streamer() const { return impl_->streamer.get(); }

std::string CudaBackend::device_name() const { return impl_->device.name(); }

std::string CudaBackend::describe() const {
  const Impl& s = *impl_;
  std::size_t on_device = 0;
  for (const auto& u : s.units) on_device += u.tier == Tier::device;
  std::string d = fmt::format(
      "{}: {} of {} units in VRAM ({}), KV cache {} {} ({} blocks of {} tokens) in {}",
      s.device.name(), on_device, s.units.size(), format_bytes(s.stats.device_weight_bytes),
      dtype_name(s.kv_dtype), format_bytes(s.kv_bytes), s.blocks.blocks_total(),
      Impl::kBlockTokens,
      s.options.kv_in_host_memory ? "host memory (mapped, read over PCIe)" : "VRAM");
  if (s.streamer)
    d += fmt::format("; {} through {} device slots ({}); host side: {}", s.units.size() - on_device,
                     s.device_slots.size(), format_bytes(s.stats.device_slot_bytes),
                     s.streamer->describe());
  return d;
}

std::unique_ptr<CudaBackend> make_cuda_backend(const model::ModelConfig& config,
                                               const offload::Checkpoint& checkpoint,
                                               const Placement& placement,
                                               CudaEngineOptions options) {
  return std::make_unique<CudaBackend>(config, checkpoint, placement, std::move(options));
}

}  // namespace ferry::cuda
