// The plan: where every weight unit lives (device, host or disk), how many staging slots stream
// the rest and how deep the prefetch runs, where the KV cache lives, and what that costs —
// predicted peak RAM, VRAM and pinned memory and seconds per token, with the link that bounds
// it. make_plan searches every placement the budgets allow and keeps the fastest; the two
// next best are kept to explain the choice. A plan is JSON in and out (`ferry plan --json`,
// `ferry run --plan FILE`).
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "planner/machine.hpp"
#include "runtime/core/tier.hpp"

namespace ferry::planner {

// Where a unit's weights live between uses (runtime/core/tier.hpp). On the CPU backend the
// device is the host, so a resident unit is `host`; `disk` is read again for every token. The
// planner never chooses `mapped`.
using ferry::Tier;

enum class Backend { cpu, cuda };
std::string_view backend_name(Backend b);

enum class KvPlace { host, device };

// Where a CUDA plan may put the KV pool (--kv-memory): `automatic` tries VRAM and host memory and
// keeps the faster plan. In host memory the pool is mapped pinned memory that attention reads
// over PCIe, so it costs RAM instead of VRAM and link time every step instead of resident layers.
enum class KvMemory { automatic, device, host };
std::string_view kv_memory_name(KvMemory m);  // "auto", "device", "host"
// "auto" | "device" | "host"; InvalidArgument naming the value and the choices otherwise.
KvMemory parse_kv_memory(std::string_view text);

// One unit of weights, in compute order: a transformer block, or the head (final norm and
// lm_head). Units can differ in size; the search does not assume they are uniform.
struct PlanUnit {
  std::string name;            // "layer 3", "head"
  uint64_t bytes = 0;          // as read and as resident (4 KiB-aligned ranges)
  uint64_t kv_read_bytes = 0;  // KV bytes its attention reads per decoded token of one sequence
};

// Everything the planner needs to know about one request, in bytes and machine figures.
struct PlanRequest {
  std::string model;  // for messages: the model directory or config
  std::vector<PlanUnit> units;
  Backend backend = Backend::cpu;
  Machine machine;
  int64_t context = 0;                      // KV cache tokens per sequence
  int batch = 1;                            // sequences
  uint64_t kv_bytes = 0;                    // the whole KV cache, as the backend stores it
  uint64_t kv_bytes_per_context_token = 0;  // kv_bytes / context, to suggest a smaller --ctx
  // How the user shortens the context, for refusals: empty means the --ctx flag; `ferry run`
  // (which has none: its context is the prompt plus -n) says "generate fewer tokens (-n) …".
  std::string context_hint;
  uint64_t host_fixed_bytes = 0;    // runtime, activations, norms and biases on the host
  uint64_t device_fixed_bytes = 0;  // activations and workspace on the GPU (cuda)
  uint32_t io_queue_depth = 16;
  std::size_t max_host_slots = 4;     // the search tries 2 … max_host_slots
  std::size_t forced_host_slots = 0;  // non-zero: a tuned policy fixes the slot count
  // Tokens the KV pool holds, all sequences together (for the plan's text; 0: context × batch).
  int64_t kv_tokens = 0;
  // CUDA: where the search may put the KV pool (the CPU backend's is always in host memory).
  KvMemory kv_memory = KvMemory::automatic;
  // The weights are already int4 (nothing smaller to suggest), int8 (int4 is), or neither.
  enum class Compression { none, int8, int4 } compression = Compression::none;
};

struct Prediction {
  uint64_t peak_ram_bytes = 0;
  uint64_t peak_vram_bytes = 0;
  uint64_t host_slot_bytes = 0;  // one host staging slot: the largest unit (or chunk) it carries
  uint64_t device_slot_bytes = 0;
  uint64_t peak_pinned_bytes = 0;  // locked (CPU) or page-locked for DMA (CUDA) host memory
  // One decode step, steady state, prefetch overlapped: every sequence of the batch gets one
  // token per step, so this is each sequence's time per token.
  double s_per_token = 0;
  double tokens_per_s = 0;  // all sequences together: batch / s_per_token
  double disk_s = 0;        // busy time per token of each link
  double h2d_s = 0;
  double compute_s = 0;
  uint64_t disk_bytes_per_token = 0;
  uint64_t h2d_bytes_per_token = 0;
  std::string bound;  // the busiest link: "disk → host", "host → device", "compute"
  // s_per_token with the disk at 70% of its probed rate; set for the choices that tie on
  // s_per_token (make_plan breaks ties with it), else 0.
  double slow_disk_s_per_token = 0;
};

// One placement and its predicted cost.
struct Choice {
  std::vector<Tier> tiers;       // one per unit
  std::size_t host_slots = 0;    // staging slots in host RAM (disk-tier units; CUDA load ring)
  std::size_t device_slots = 0;  // staging slots in VRAM for host/disk-tier units (CUDA)
  KvPlace kv = KvPlace::host;
  // CPU: disk-tier units stream in pieces of at most this many bytes (a big matrix in row
  // chunks), so a staging slot holds a piece, not a unit; 0 streams whole units. The search
  // chunks only when whole units cannot fit the budget (the largest chunk that fits).
  uint64_t chunk_bytes = 0;
  std::string arrangement;  // "prefix" or "spread": which units of a tier were chosen
  Prediction predicted;

  std::size_t count(Tier t) const;
  uint64_t bytes(const PlanRequest& r, Tier t) const;
  std::size_t prefetch_depth() const;  // units in flight ahead of compute
};

struct Plan {
  PlanRequest request;
  uint64_t ram_budget_bytes = 0;  // what the machine figure allows
  uint64_t ram_margin_bytes = 0;  // kept free for what the model cannot see
  uint64_t vram_budget_bytes = 0;
  uint64_t vram_margin_bytes = 0;
  uint64_t slot_bytes = 0;  // one host staging slot of the chosen placement
  Choice chosen;
  std::vector<Choice> runners_up;  // the next best two, for --explain
  // CUDA with the KV place searched both ways: the fastest placement that fits with the KV pool
  // in the other memory (none: nothing fits there), so the plan can say what it traded.
  std::optional<Choice> kv_alternative;

  // "28 layers + head: 6 host, 23 disk through 3 slots of 384 MiB (prefetch 2); peak RAM
  // 3.7 GiB of 4.0 GiB; 0.41 s/token, bound by disk → host"
  std::string summary() const;
  // The table `ferry plan` prints: per tier layers and bytes, staging, KV, peaks, s/token.
  std::string table() const;
  // The chosen plan against the next best two, and why.
  std::string explain() const;
  // Where the KV pool lives and why: "KV pool: 4096 tokens (512 MiB) in host memory (pinned,
  // read over PCIe: 96 MiB a step); in VRAM it would leave 20 of 29 units on the device for
  // 3.10 tokens/s"
  std::string kv_line() const;
};

// The chunk sizes the search tries, largest first, when whole units do not fit (CPU backend).
inline constexpr uint64_t kChunkSizes[] = {uint64_t{512} << 20, uint64_t{256} << 20,
                                           uint64_t{128} << 20, uint64_t{64} << 20,
                                           uint64_t{32} << 20,  uint64_t{16} << 20};
// How many pieces a unit of `bytes` streams as with pieces of at most chunk_bytes (0: one).
uint64_t chunk_count(uint64_t bytes, uint64_t chunk_bytes);

// The fixed cost per unit per pass that the time model adds to its bytes ÷ rate (launches and
// synchronisation), so that a rate learned from a run can leave it out.
double unit_overhead_s(Backend backend);

// Searches every placement: for each count of units per tier (all counts, so the result is
// exact for uniform layers), the two arrangements (a prefix, or spread evenly so the disk
// reads while resident layers compute), each staging slot count and each KV place; keeps the
// fastest that fits the budgets less their margins. Throws PlanError naming the smallest
// budget that works and the cheapest change when nothing fits.
Plan make_plan(const PlanRequest& request);

// The cost of one placement: peak memory from the bytes each tier and slot holds, and time
// per token by simulating the pipeline (disk → host slot → device slot → compute, each link a
// queue at its bandwidth, slots freed when their unit is done) until it repeats.
Prediction predict(const PlanRequest& request, const Choice& choice);

nlohmann::json plan_to_json(const Plan& plan);
// Throws InvalidArgument naming the field when the JSON is not a plan ferry wrote.
Plan plan_from_json(const nlohmann::json& j);

}  // namespace ferry::planner
