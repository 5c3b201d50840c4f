#include "planner/plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <tuple>

#include "planner/probe_cache.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry::planner {

namespace {

using nlohmann::json;

constexpr uint64_t kMiB = uint64_t{1} << 20;
// Fixed time per unit besides moving its bytes: thread hand-offs and small kernels on the CPU,
// launches on the GPU.
constexpr double kCpuUnitOverheadS = 30e-6;
constexpr double kGpuUnitOverheadS = 60e-6;
// Choices this close in predicted time count as equal. Among them, the ones reading least from
// disk go on, and of those the one that stays fastest if the disk reads kDiskDerate of its
// probed rate wins (the disk is the link whose rate moves most:
// other readers, the page cache, the device's own state; on an H100 machine a probed 2.56 GB/s
// came out at 1.84 in the run), then the one with less memory.
constexpr double kTieFraction = 0.005;
constexpr double kDiskDerate = 0.7;

// Kept free below the RAM budget. A cap the user gives is exact, so little is kept; a probed
// figure moves (other processes, page cache the kernel cannot drop), so more is.
uint64_t ram_margin(uint64_t budget, bool explicit_cap) {
  return explicit_cap ? std::max<uint64_t>(16 * kMiB, budget / 100)
                      : std::max<uint64_t>(256 * kMiB, budget / 20);
}
// The smallest budget whose usable part (budget less its margin) is at least need.
uint64_t budget_for(uint64_t need, bool explicit_cap) {
  const uint64_t b = explicit_cap ? std::max(need + 16 * kMiB, need + need / 99 + 1)
                                  : std::max(need + 256 * kMiB, need + need / 19 + 1);
  return (b + kMiB - 1) / kMiB * kMiB;
}
uint64_t vram_margin(uint64_t vram) { return std::max<uint64_t>(64 * kMiB, vram / 33); }

uint64_t largest_unit(const PlanRequest& r) {
  uint64_t m = 0;
  for (const auto& u : r.units) m = std::max(m, u.bytes);
  return m;
}

// The largest unit among those of the given tiers: what one staging slot must hold.
uint64_t largest_of(const PlanRequest& r, const Choice& c, std::initializer_list<Tier> tiers) {
  uint64_t m = 0;
  for (std::size_t i = 0; i < r.units.size(); ++i)
    if (std::find(tiers.begin(), tiers.end(), c.tiers[i]) != tiers.end())
      m = std::max(m, r.units[i].bytes);
  return m;
}

// k of the n positions, either the first k or spread evenly (so that resident units sit
// between streamed ones and the disk keeps reading while they compute).
std::vector<bool> pick(std::size_t n, std::size_t k, bool spread) {
  std::vector<bool> in(n, false);
  for (std::size_t i = 0; i < n; ++i) in[i] = spread ? ((i + 1) * k / n > i * k / n) : i < k;
  return in;
}

std::string fmt_s(double s) {
  return s >= 1 ? fmt::format("{:.2f} s", s) : fmt::format("{:.1f} ms", s * 1e3);
}

// A rate outside its physical range (planner/probe_cache.hpp) makes every prediction
// meaningless ("-nan s/token", 153,391,104 s/token): refused, naming where it came from.
void check_rate(const Figure& f, const char* what, const char* key_kind) {
  const RateRange range = plausible_rate(key_kind);
  if (!range.contains(f.value))
    throw PlanError(fmt::format(
        "the {} of {:g} bytes/s ({}) is not a physical rate (expected {:g} to {:g}); give a "
        "measured figure, or measure again with `ferry plan --reprobe`",
        what, f.value, f.source.empty() ? "unknown source" : f.source, range.lo, range.hi));
}

void check_machine(const Machine& m, Backend backend) {
  check_rate(m.disk_bytes_per_s, "disk read rate", "disk ");
  check_rate(m.cpu_compute_bytes_per_s, "CPU compute rate", "cpu ");
  if (backend == Backend::cuda && m.gpu) {
    check_rate(m.gpu->h2d_bytes_per_s, "host → device rate", "h2d ");
    check_rate(m.gpu->compute_bytes_per_s, "GPU compute rate", "gpu ");
  }
}

}  // namespace

uint64_t chunk_count(uint64_t bytes, uint64_t chunk_bytes) {
  if (chunk_bytes == 0 || bytes <= chunk_bytes) return 1;
  return (bytes + chunk_bytes - 1) / chunk_bytes;
}

double unit_overhead_s(Backend backend) {
  return backend == Backend::cuda ? kGpuUnitOverheadS : kCpuUnitOverheadS;
}

std::string_view backend_name(Backend b) { return b == Backend::cuda ? "cuda" : "cpu"; }

std::string_view kv_memory_name(KvMemory m) {
  switch (m) {
    case KvMemory::device:
      return "device";
    case KvMemory::host:
      return "host";
    case KvMemory::automatic:
      break;
  }
  return "auto";
}

KvMemory parse_kv_memory(std::string_view text) {
  if (text == "auto") return KvMemory::automatic;
  if (text == "device") return KvMemory::device;
  if (text == "host") return KvMemory::host;
  throw InvalidArgument(fmt::format(
      "--kv-memory '{}' is not auto, device or host (auto: the planner chooses; device: the KV "
      "pool in VRAM; host: in pinned host memory, read over PCIe)",
      text));
}

std::size_t Choice::count(Tier t) const {
  return static_cast<std::size_t>(std::count(tiers.begin(), tiers.end(), t));
}

uint64_t Choice::bytes(const PlanRequest& r, Tier t) const {
  uint64_t b = 0;
  for (std::size_t i = 0; i < tiers.size(); ++i)
    if (tiers[i] == t) b += r.units[i].bytes;
  return b;
}

std::size_t Choice::prefetch_depth() const {
  const std::size_t slots = device_slots > 0 ? device_slots : (count(Tier::disk) ? host_slots : 0);
  return slots > 0 ? slots - 1 : 0;
}

Prediction predict(const PlanRequest& r, const Choice& c) {
  FERRY_EXPECT(c.tiers.size() == r.units.size(), "a placement needs one tier per unit ({} != {})",
               c.tiers.size(), r.units.size());
  const bool cuda = r.backend == Backend::cuda;
  FERRY_EXPECT(!cuda || r.machine.gpu, "a CUDA plan needs a machine with a GPU");
  // Host slots hold disk-tier units (on CUDA they also carry every unit once, at load);
  // device slots hold the units that are not resident on the device.
  uint64_t host_slot = cuda ? largest_unit(r) : largest_of(r, c, {Tier::disk});
  // A streamed piece is at most a chunk; matrices are cut at row boundaries, so a piece can
  // fall short of the chunk but never exceed it (the engine checks).
  if (!cuda && c.chunk_bytes > 0) host_slot = std::min(host_slot, c.chunk_bytes);
  const uint64_t dev_slot = cuda ? largest_of(r, c, {Tier::host, Tier::disk}) : 0;
  Prediction p;
  p.host_slot_bytes = c.host_slots > 0 ? host_slot : 0;
  p.device_slot_bytes = c.device_slots > 0 ? dev_slot : 0;

  // Memory: what each tier holds, the slots, the KV cache and the fixed parts.
  const uint64_t dev_res = c.bytes(r, Tier::device);
  const uint64_t host_res = c.bytes(r, Tier::host);
  if (!cuda) {
    p.peak_ram_bytes =
        r.host_fixed_bytes + r.kv_bytes + dev_res + host_res + c.host_slots * host_slot;
    p.peak_pinned_bytes =
        std::min<uint64_t>(c.host_slots * host_slot, r.machine.memlock_bytes.bytes());
  } else {
    const uint64_t kv_host = c.kv == KvPlace::host ? r.kv_bytes : 0;
    p.peak_ram_bytes = r.host_fixed_bytes + r.machine.gpu->host_context_bytes + host_res +
                       c.host_slots * host_slot + kv_host;
    p.peak_pinned_bytes = host_res + c.host_slots * host_slot + kv_host;
    p.peak_vram_bytes = r.machine.gpu->context_bytes + r.device_fixed_bytes + dev_res +
                        c.device_slots * dev_slot + (c.kv == KvPlace::device ? r.kv_bytes : 0);
  }

  // Time: every link is a queue working at its bandwidth; a unit's read waits for a free host
  // slot, its copy for a free device slot, its compute for its bytes; slots come back in the
  // order they were taken. Simulate a few tokens and keep the steady state.
  const double disk_bw = r.machine.disk_bytes_per_s.value;
  const double h2d_bw = cuda ? r.machine.gpu->h2d_bytes_per_s.value : 0;
  const double comp_bw =
      cuda ? r.machine.gpu->compute_bytes_per_s.value : r.machine.cpu_compute_bytes_per_s.value;
  FERRY_EXPECT(disk_bw > 0 && comp_bw > 0 && (!cuda || h2d_bw > 0),
               "the machine figures need positive bandwidths to predict time");
  const double overhead = cuda ? kGpuUnitOverheadS : kCpuUnitOverheadS;
  // A step of a batch reads each weight once for all its sequences; each row past the first
  // costs its bytes at the extra-row rate, and each sequence reads its own KV cache.
  const double batch = std::max(1, r.batch);
  const double row_bw = cuda ? gpu_row_rate(*r.machine.gpu) : cpu_row_rate(r.machine);
  const auto compute_s = [&](uint64_t weight_bytes) {
    return static_cast<double>(weight_bytes) / comp_bw +
           (batch - 1) * static_cast<double>(weight_bytes) / row_bw;
  };
  std::vector<double> host_slot_free(std::max<std::size_t>(c.host_slots, 1), 0.0);
  std::vector<double> dev_slot_free(std::max<std::size_t>(c.device_slots, 1), 0.0);
  std::size_t host_uses = 0;
  std::size_t dev_uses = 0;
  double disk_free = 0;
  double h2d_free = 0;
  double comp_free = 0;
  constexpr int kTokens = 6;
  std::vector<double> token_end;
  for (int t = 0; t < kTokens; ++t) {
    double disk_s = 0;
    double h2d_s = 0;
    double comp_s = 0;
    uint64_t disk_b = 0;
    uint64_t h2d_b = 0;
    for (std::size_t i = 0; i < r.units.size(); ++i) {
      const PlanUnit& u = r.units[i];
      const Tier tier = c.tiers[i];
      double ready = 0;
      double* hold_host = nullptr;
      double* hold_dev = nullptr;
      if (!cuda && tier == Tier::disk && chunk_count(u.bytes, c.chunk_bytes) > 1) {
        // Pieces: each read into its own slot, computed as soon as it is in, its slot freed
        // when its part of the product is done.
        const uint64_t pieces = chunk_count(u.bytes, c.chunk_bytes);
        for (uint64_t k = 0; k < pieces; ++k) {
          const uint64_t b = u.bytes / pieces + (k < u.bytes % pieces ? 1 : 0);
          double& slot = host_slot_free[host_uses++ % host_slot_free.size()];
          const double dt = static_cast<double>(b) / disk_bw;
          disk_free = std::max(disk_free, slot) + dt;
          disk_s += dt;
          const double ct = compute_s(b) + overhead;
          comp_free = std::max(comp_free, disk_free) + ct;
          comp_s += ct;
          slot = comp_free;
        }
        disk_b += u.bytes;
        const double kt = batch * static_cast<double>(u.kv_read_bytes) / comp_bw;
        comp_free += kt;
        comp_s += kt;
        continue;
      }
      if (tier == Tier::disk) {
        hold_host = &host_slot_free[host_uses++ % host_slot_free.size()];
        const double start = std::max(disk_free, *hold_host);
        const double dt = static_cast<double>(u.bytes) / disk_bw;
        disk_free = ready = start + dt;
        disk_s += dt;
        disk_b += u.bytes;
      }
      if (cuda && tier != Tier::device) {
        hold_dev = &dev_slot_free[dev_uses++ % dev_slot_free.size()];
        const double start = std::max({h2d_free, ready, *hold_dev});
        const double dt = static_cast<double>(u.bytes) / h2d_bw;
        h2d_free = ready = start + dt;
        h2d_s += dt;
        h2d_b += u.bytes;
        if (hold_host) *hold_host = ready;  // the copy is done with the host slot
        hold_host = nullptr;
      }
      // KV in host memory (CUDA): mapped pinned memory that attention reads over PCIe, every
      // sequence's attended tokens every step. The reads start when the layer does (its weights
      // in, the previous layer done), take the link in turn with the copies (the next layer's
      // copy goes after them, beside this layer's compute), and the layer's compute ends after
      // them; the new tokens' K and V written back are a few KiB and left out.
      const bool kv_over_link = cuda && c.kv == KvPlace::host && u.kv_read_bytes > 0;
      const double kv_read = batch * static_cast<double>(u.kv_read_bytes);
      if (kv_over_link) {
        const double kt = kv_read / h2d_bw;
        h2d_free = std::max({h2d_free, ready, comp_free}) + kt;
        ready = h2d_free;
        h2d_s += kt;
        h2d_b += static_cast<uint64_t>(batch) * u.kv_read_bytes;
      }
      const double dt = compute_s(u.bytes) + (kv_over_link ? 0 : kv_read / comp_bw) + overhead;
      comp_free = std::max(comp_free, ready) + dt;
      comp_s += dt;
      if (hold_host) *hold_host = comp_free;
      if (hold_dev) *hold_dev = comp_free;
    }
    token_end.push_back(comp_free);
    p.disk_s = disk_s;
    p.h2d_s = h2d_s;
    p.compute_s = comp_s;
    p.disk_bytes_per_token = disk_b;
    p.h2d_bytes_per_token = h2d_b;
  }
  p.s_per_token = (token_end[kTokens - 1] - token_end[kTokens - 4]) / 3.0;
  p.tokens_per_s = p.s_per_token > 0 ? batch / p.s_per_token : 0;
  p.bound = "compute";
  double busiest = p.compute_s;
  if (p.disk_s > busiest) {
    busiest = p.disk_s;
    p.bound = "disk → host";
  }
  if (p.h2d_s > busiest) p.bound = "host → device";
  return p;
}

namespace {

struct Budgets {
  uint64_t ram = 0;
  uint64_t vram = 0;
};

bool fits(const Prediction& p, const Budgets& b, bool cuda) {
  return p.peak_ram_bytes <= b.ram && (!cuda || p.peak_vram_bytes <= b.vram);
}

[[noreturn]] void refuse(const PlanRequest& r, const Plan& plan) {
  const bool cuda = r.backend == Backend::cuda;
  const bool exact = r.machine.ram_is_explicit_cap;
  const uint64_t slot = largest_unit(r);
  const std::string& ram_source = r.machine.ram_bytes.source;
  if (!cuda && r.forced_host_slots > 2) {
    // The slot count was fixed (--slots, a tuned policy): say how many fit, if any does.
    const uint64_t forced =
        budget_for(r.host_fixed_bytes + r.kv_bytes + r.forced_host_slots * slot, exact);
    const uint64_t usable = plan.ram_budget_bytes - plan.ram_margin_bytes;
    const uint64_t other = r.host_fixed_bytes + r.kv_bytes;
    const uint64_t fit = usable > other ? (usable - other) / slot : 0;
    if (fit >= 2)
      throw PlanError(fmt::format(
          "{} staging slots of {} (--slots or the policy's slot count) need {} of RAM but {} "
          "allows {}; use --slots {}{} (or drop the fixed count and let the planner choose), or "
          "raise --max-ram to at least {}",
          r.forced_host_slots, format_bytes(slot), format_bytes(forced), ram_source,
          format_bytes(plan.ram_budget_bytes), std::min<uint64_t>(fit, r.forced_host_slots - 1),
          fit > 2 ? " or fewer" : "", format_bytes(forced)));
  }
  if (!cuda) {
    // Every layer streamed in the smallest pieces the search tries.
    const uint64_t piece =
        r.forced_host_slots > 0 ? slot : std::min(slot, std::end(kChunkSizes)[-1]);
    const uint64_t min_ram = r.host_fixed_bytes + r.kv_bytes + 2 * piece;
    const uint64_t need = budget_for(min_ram, exact);
    std::string msg = fmt::format(
        "{} needs at least {} of RAM with every layer streamed ({} for 2 staging slots of {}, "
        "{} of KV cache for a context of {} tokens, {} for activations and the runtime, and a "
        "margin of {}) "
        "but {} allows {}; raise --max-ram to at least {}",
        r.model, format_bytes(need), format_bytes(2 * piece),
        piece < slot ? fmt::format("{} pieces of the layers", format_bytes(piece))
                     : std::string("the largest unit"),
        format_bytes(r.kv_bytes), r.context, format_bytes(r.host_fixed_bytes),
        format_bytes(need - min_ram), ram_source, format_bytes(plan.ram_budget_bytes),
        format_bytes(need));
    const uint64_t usable = plan.ram_budget_bytes - plan.ram_margin_bytes;
    const uint64_t other = r.host_fixed_bytes + 2 * piece;
    if (r.kv_bytes_per_context_token > 0 && usable > other) {
      const auto ctx = static_cast<int64_t>((usable - other) / r.kv_bytes_per_context_token);
      if (ctx >= 1 && ctx < r.context) {
        msg += r.context_hint.empty()
                   ? fmt::format(", or use a smaller --ctx (--ctx {} fits)", ctx)
                   : fmt::format(", or {} (a context of {} tokens fits; this needs {})",
                                 r.context_hint, ctx, r.context);
      }
    }
    if (r.compression == PlanRequest::Compression::none)
      msg += ", or use a compressed pack (ferry convert --quant int8 or int4)";
    else if (r.compression == PlanRequest::Compression::int8)
      msg += ", or use an int4 pack (ferry convert --quant int4)";
    throw PlanError(msg);
  }
  const GpuSpec& g = *r.machine.gpu;
  // The least each memory can hold: every layer streamed, the KV pool where --kv-memory puts it
  // (automatic: in host memory, which needs the least VRAM).
  const bool kv_in_vram = r.kv_memory == KvMemory::device;
  const uint64_t min_vram =
      g.context_bytes + r.device_fixed_bytes + 2 * slot + (kv_in_vram ? r.kv_bytes : 0);
  const uint64_t min_ram =
      r.host_fixed_bytes + g.host_context_bytes + 2 * slot + (kv_in_vram ? 0 : r.kv_bytes);
  if (plan.vram_budget_bytes - plan.vram_margin_bytes < min_vram)
    throw PlanError(fmt::format(
        "{} needs at least {} of VRAM with every layer streamed ({} for the CUDA context, {} "
        "for activations, {} for 2 device slots; {}) but {} allows {}; raise --max-vram, {}or "
        "run on the CPU with --device cpu",
        r.model, format_bytes(min_vram + vram_margin(min_vram)), format_bytes(g.context_bytes),
        format_bytes(r.device_fixed_bytes), format_bytes(2 * slot),
        kv_in_vram
            ? fmt::format("{} of KV pool in VRAM (--kv-memory device)", format_bytes(r.kv_bytes))
            : std::string("KV pool in host memory"),
        g.vram_bytes.source, format_bytes(plan.vram_budget_bytes),
        kv_in_vram ? "put the KV pool in host memory (--kv-memory auto or host), " : ""));
  if (kv_in_vram)
    throw PlanError(fmt::format(
        "{} needs at least {} of RAM on a GPU machine with every layer streamed ({} for the CUDA "
        "driver, {} for 2 pinned staging slots, {} for the runtime; KV pool in VRAM) but {} "
        "allows {}; raise --max-ram to at least {}",
        r.model, format_bytes(budget_for(min_ram, exact)), format_bytes(g.host_context_bytes),
        format_bytes(2 * slot), format_bytes(r.host_fixed_bytes), ram_source,
        format_bytes(plan.ram_budget_bytes), format_bytes(budget_for(min_ram, exact))));
  throw PlanError(fmt::format(
      "{} needs at least {} of RAM on a GPU machine with every layer streamed ({} for the CUDA "
      "driver, {} for 2 pinned staging slots, {} of KV cache for a context of {} tokens when VRAM "
      "cannot hold "
      "it, {} for the runtime) but {} allows {}; raise --max-ram to at least {}, or {}{}",
      r.model, format_bytes(budget_for(min_ram, exact)), format_bytes(g.host_context_bytes),
      format_bytes(2 * slot), format_bytes(r.kv_bytes), r.context, format_bytes(r.host_fixed_bytes),
      ram_source, format_bytes(plan.ram_budget_bytes), format_bytes(budget_for(min_ram, exact)),
      r.context_hint.empty() ? "use a smaller --ctx" : r.context_hint,
      r.kv_memory == KvMemory::host ? ", or let the KV pool use VRAM (--kv-memory auto)" : ""));
}

}  // namespace

Plan make_plan(const PlanRequest& r) {
  FERRY_EXPECT(!r.units.empty(), "nothing to plan: the model has no weight units");
  for (const auto& u : r.units)
    FERRY_EXPECT(u.bytes > 0, "weight unit '{}' has no bytes; the model is malformed", u.name);
  FERRY_EXPECT(r.machine.ram_bytes.known() && r.machine.disk_bytes_per_s.known() &&
                   r.machine.cpu_compute_bytes_per_s.known(),
               "the machine figures are incomplete (RAM, disk and CPU rates are needed)");
  const bool cuda = r.backend == Backend::cuda;
  if (cuda && !r.machine.gpu)
    throw PlanError(fmt::format(
        "--device cuda asks for a GPU but {} has none; use --device cpu or a GPU profile "
        "(--profile colab-t4)",
        r.machine.name));
  check_machine(r.machine, r.backend);

  Plan plan;
  plan.request = r;
  plan.ram_budget_bytes = r.machine.ram_bytes.bytes();
  plan.ram_margin_bytes = std::min(
      plan.ram_budget_bytes, ram_margin(plan.ram_budget_bytes, r.machine.ram_is_explicit_cap));
  if (cuda) {
    plan.vram_budget_bytes = r.machine.gpu->vram_bytes.bytes();
    plan.vram_margin_bytes = std::min(plan.vram_budget_bytes, vram_margin(plan.vram_budget_bytes));
  }
  const Budgets budget{plan.ram_budget_bytes - plan.ram_margin_bytes,
                       plan.vram_budget_bytes - plan.vram_margin_bytes};

  const std::size_t n = r.units.size();
  auto slot_range = [&](bool streams) -> std::pair<std::size_t, std::size_t> {
    if (r.forced_host_slots) return {r.forced_host_slots, r.forced_host_slots};
    if (!streams) return {2, 2};
    return {2, std::max<std::size_t>(2, r.max_host_slots)};
  };
  std::vector<Choice> feasible;
  uint64_t chunk = 0;  // 0 first: whole units; then smaller and smaller pieces (CPU)
  auto consider = [&](Choice c) {
    c.chunk_bytes = c.count(Tier::disk) > 0 ? chunk : 0;
    c.predicted = predict(r, c);
    if (fits(c.predicted, budget, cuda)) feasible.push_back(std::move(c));
  };
  const auto search = [&] {
    for (std::size_t fast = 0; fast <= n; ++fast) {  // units on the device (CPU: resident)
      for (bool spread_fast : {false, true}) {
        if (spread_fast && (fast == 0 || fast == n)) continue;
        const std::vector<bool> is_fast = pick(n, fast, spread_fast);
        if (!cuda) {
          Choice c;
          c.arrangement = spread_fast ? "spread" : "prefix";
          c.tiers.assign(n, Tier::disk);
          for (std::size_t i = 0; i < n; ++i)
            if (is_fast[i]) c.tiers[i] = Tier::host;
          if (fast == n) {
            consider(c);  // nothing streams: no slots
            continue;
          }
          const auto [lo, hi] = slot_range(true);
          for (std::size_t s = lo; s <= hi; ++s) {
            c.host_slots = s;
            consider(c);
          }
          continue;
        }
        // CUDA: of the rest, some stay in pinned host memory, the others on disk.
        const std::size_t rest = n - fast;
        for (std::size_t host = 0; host <= rest; ++host) {
          for (bool spread_host : {false, true}) {
            if (spread_host && (host == 0 || host == rest)) continue;
            const std::vector<bool> is_host = pick(rest, host, spread_host);
            Choice c;
            c.arrangement = fmt::format("{}/{}", spread_fast ? "spread" : "prefix",
                                        spread_host ? "spread" : "prefix");
            c.tiers.assign(n, Tier::disk);
            for (std::size_t i = 0, j = 0; i < n; ++i) {
              if (is_fast[i]) {
                c.tiers[i] = Tier::device;
              } else if (is_host[j++]) {
                c.tiers[i] = Tier::host;
              }
            }
            const bool streams = c.count(Tier::disk) > 0;
            const auto [lo, hi] = slot_range(streams);
            for (std::size_t hs = lo; hs <= hi; ++hs) {
              for (std::size_t ds : {2, 3}) {
                if (fast == n && ds == 3) continue;
                for (KvPlace kv : {KvPlace::device, KvPlace::host}) {
                  if (kv == KvPlace::host && r.kv_memory == KvMemory::device) continue;
                  if (kv == KvPlace::device && r.kv_memory == KvMemory::host) continue;
                  c.host_slots = hs;
                  c.device_slots = fast == n ? 0 : ds;
                  c.kv = kv;
                  consider(c);
                }
              }
            }
          }
        }
      }
    }
  };
  search();
  // Whole units do not fit: stream the largest pieces that do (a unit bigger than the chunk is
  // read and computed a row chunk at a time), so the floor is set by the chunk, not the largest
  // tensor.
  // (Not with a forced slot count: a tuned policy measured whole units.)
  if (!cuda && r.forced_host_slots == 0) {
    for (const uint64_t c : kChunkSizes) {
      if (!feasible.empty()) break;
      if (c >= largest_unit(r)) continue;
      chunk = c;
      search();
    }
  }
  if (feasible.empty()) refuse(r, plan);

  // Best per distinct shape (counts per tier, slots, KV place), fastest first.
  using Key =
      std::tuple<std::size_t, std::size_t, std::size_t, std::size_t, std::size_t, int, uint64_t>;
  std::map<Key, Choice> best;
  for (auto& c : feasible) {
    const Key k{c.count(Tier::device), c.count(Tier::host),    c.count(Tier::disk), c.host_slots,
                c.device_slots,        static_cast<int>(c.kv), c.chunk_bytes};
    auto it = best.find(k);
    if (it == best.end() || c.predicted.s_per_token < it->second.predicted.s_per_token)
      best[k] = std::move(c);
  }
  std::vector<Choice> ranked;
  for (auto& [k, c] : best) ranked.push_back(std::move(c));
  auto memory = [](const Choice& c) {
    return c.predicted.peak_ram_bytes + c.predicted.peak_vram_bytes;
  };
  std::sort(ranked.begin(), ranked.end(), [&](const Choice& a, const Choice& b) {
    if (a.predicted.s_per_token != b.predicted.s_per_token)
      return a.predicted.s_per_token < b.predicted.s_per_token;
    return memory(a) < memory(b);
  });
  // Among the choices within kTieFraction of the fastest: those reading least from disk, of
  // those the fastest with the disk slower (kDiskDerate), and among those again within
  // kTieFraction, the one that uses least memory.
  const double limit = ranked[0].predicted.s_per_token * (1 + kTieFraction);
  std::size_t tied = 1;
  while (tied < ranked.size() && ranked[tied].predicted.s_per_token <= limit) ++tied;
  PlanRequest slow_disk = r;
  slow_disk.machine.disk_bytes_per_s.value *= kDiskDerate;
  for (std::size_t i = 0; i < tied; ++i)
    ranked[i].predicted.slow_disk_s_per_token = ranked[i].count(Tier::disk) > 0
                                                    ? predict(slow_disk, ranked[i]).s_per_token
                                                    : ranked[i].predicted.s_per_token;
  // Streaming that looks hidden under compute is still a bet on the disk's rate, the least
  // certain figure (a low learned CPU rate hides any stream): among the tied choices those that
  // read least from disk go on, so what fits stays resident. (Seen: 4 of GPT-J's 29 units
  // streamed with 23 GiB free, for 1.5 GiB less memory.)
  uint64_t least_disk = ranked[0].predicted.disk_bytes_per_token;
  for (std::size_t i = 1; i < tied; ++i)
    least_disk = std::min(least_disk, ranked[i].predicted.disk_bytes_per_token);
  auto in_tie = [&](std::size_t i) {
    return ranked[i].predicted.disk_bytes_per_token == least_disk;
  };
  double fastest_slow = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < tied; ++i)
    if (in_tie(i)) fastest_slow = std::min(fastest_slow, ranked[i].predicted.slow_disk_s_per_token);
  std::size_t pick_i = tied;
  for (std::size_t i = 0; i < tied; ++i) {
    if (!in_tie(i)) continue;
    if (ranked[i].predicted.slow_disk_s_per_token > fastest_slow * (1 + kTieFraction)) continue;
    if (pick_i == tied || memory(ranked[i]) < memory(ranked[pick_i])) pick_i = i;
  }
  plan.chosen = ranked[pick_i];
  plan.slot_bytes = plan.chosen.predicted.host_slot_bytes;
  for (std::size_t i = 0; i < ranked.size() && plan.runners_up.size() < 2; ++i)
    if (i != pick_i) plan.runners_up.push_back(ranked[i]);
  if (cuda && r.kv_memory == KvMemory::automatic)
    for (const Choice& c : ranked)
      if (c.kv != plan.chosen.kv) {
        plan.kv_alternative = c;
        break;
      }
  return plan;
}

namespace {

std::string choice_line(const Plan& plan, const Choice& c) {
  const PlanRequest& r = plan.request;
  const bool cuda = r.backend == Backend::cuda;
  std::string tiers;
  for (Tier t : {Tier::device, Tier::host, Tier::disk}) {
    if (!cuda && t == Tier::device) continue;
    if (!tiers.empty()) tiers += ", ";
    tiers += fmt::format("{} {}", c.count(t), tier_name(t));
  }
  std::string s = fmt::format("{} units: {}", r.units.size(), tiers);
  if (c.count(Tier::disk) > 0 || (cuda && c.device_slots > 0)) {
    s += fmt::format("; {} host slot{}", c.host_slots, c.host_slots == 1 ? "" : "s");
    if (cuda) s += fmt::format(", {} device slots", c.device_slots);
    s += fmt::format(" of {} (prefetch {})", format_bytes(c.predicted.host_slot_bytes),
                     c.prefetch_depth());
    if (c.chunk_bytes > 0)
      s += fmt::format(", layers read in pieces of {}", format_bytes(c.chunk_bytes));
  }
  if (cuda) s += fmt::format("; KV in {}", c.kv == KvPlace::device ? "VRAM" : "host memory");
  s += fmt::format("; peak RAM {}", format_bytes(c.predicted.peak_ram_bytes));
  if (cuda) s += fmt::format(", VRAM {}", format_bytes(c.predicted.peak_vram_bytes));
  s += fmt::format("; {:.3f} s/token, bound by {}", c.predicted.s_per_token, c.predicted.bound);
  return s;
}

}  // namespace

std::string Plan::summary() const {
  std::string s = choice_line(*this, chosen);
  s += fmt::format(" (RAM budget {} from {}", format_bytes(ram_budget_bytes),
                   request.machine.ram_bytes.source);
  if (request.backend == Backend::cuda)
    s += fmt::format(", VRAM {} from {}", format_bytes(vram_budget_bytes),
                     request.machine.gpu->vram_bytes.source);
  return s + ")";
}

std::string Plan::table() const {
  const PlanRequest& r = request;
  const Choice& c = chosen;
  const Prediction& p = c.predicted;
  const bool cuda = r.backend == Backend::cuda;
  std::string t = fmt::format("plan for {} on {} ({} backend), context {} × {} sequence{}\n",
                              r.model, r.machine.name, backend_name(r.backend), r.context, r.batch,
                              r.batch == 1 ? "" : "s");
  t += fmt::format("  {:<13}{:>6} {:>12}\n", "tier", "units", "bytes");
  for (Tier tier : {Tier::device, Tier::host, Tier::disk}) {
    if (!cuda && tier == Tier::device) continue;
    t += fmt::format("  {:<13}{:>6} {:>12}\n", tier_name(tier), c.count(tier),
                     format_bytes(c.bytes(r, tier)));
  }
  std::string map;
  for (Tier tier : c.tiers) map += tier == Tier::device ? 'D' : tier == Tier::host ? 'H' : '.';
  t += fmt::format("  {:<13}{}  (D device, H host, . disk; {})\n", "layout", map, c.arrangement);
  t += fmt::format("  {:<13}{} host slot{} of {}", "staging", c.host_slots,
                   c.host_slots == 1 ? "" : "s", format_bytes(p.host_slot_bytes));
  if (cuda && c.device_slots > 0)
    t += fmt::format(", {} device slots of {}", c.device_slots, format_bytes(p.device_slot_bytes));
  if (c.chunk_bytes > 0)
    t += fmt::format(" (streamed units read and computed in pieces of at most {})",
                     format_bytes(c.chunk_bytes));
  t += fmt::format("; prefetch depth {}; I/O queue depth {}\n", c.prefetch_depth(),
                   r.io_queue_depth);
  t += fmt::format("  {:<13}{}\n", "KV cache", kv_line());
  t += fmt::format("  {:<13}{} of {} (margin {} kept free; budget from {})\n", "peak RAM",
                   format_bytes(p.peak_ram_bytes), format_bytes(ram_budget_bytes),
                   format_bytes(ram_margin_bytes), r.machine.ram_bytes.source);
  if (cuda)
    t += fmt::format("  {:<13}{} of {} (margin {}; {} CUDA context)\n", "peak VRAM",
                     format_bytes(p.peak_vram_bytes), format_bytes(vram_budget_bytes),
                     format_bytes(vram_margin_bytes), format_bytes(r.machine.gpu->context_bytes));
  t += fmt::format("  {:<13}{}\n", "peak pinned", format_bytes(p.peak_pinned_bytes));
  if (r.batch > 1)
    t += fmt::format(
        "  {:<13}{:.3f} s/token for each of {} sequences ({:.2f} tokens/s together), bound by "
        "{}\n",
        "predicted", p.s_per_token, r.batch, p.tokens_per_s, p.bound);
  else
    t += fmt::format("  {:<13}{:.3f} s/token ({:.2f} tokens/s), bound by {}\n", "predicted",
                     p.s_per_token, p.s_per_token > 0 ? 1 / p.s_per_token : 0.0, p.bound);
  t += fmt::format("  {:<13}disk → host {} ({} at {:.2f} GB/s)",
                   r.batch > 1 ? "per step" : "per token", fmt_s(p.disk_s),
                   format_bytes(p.disk_bytes_per_token), r.machine.disk_bytes_per_s.value / 1e9);
  if (cuda)
    t += fmt::format("; host → device {} ({} at {:.2f} GB/s)", fmt_s(p.h2d_s),
                     format_bytes(p.h2d_bytes_per_token),
                     r.machine.gpu->h2d_bytes_per_s.value / 1e9);
  t += fmt::format("; compute {}\n", fmt_s(p.compute_s));
  return t;
}

std::string Plan::kv_line() const {
  const PlanRequest& r = request;
  const int64_t tokens = r.kv_tokens > 0 ? r.kv_tokens : r.context * std::max(1, r.batch);
  std::string s = fmt::format("{} tokens ({}) in ", tokens, format_bytes(r.kv_bytes));
  if (r.backend != Backend::cuda) return s + "host memory";
  uint64_t read = 0;
  for (const auto& u : r.units) read += u.kv_read_bytes;
  read *= static_cast<uint64_t>(std::max(1, r.batch));
  s += chosen.kv == KvPlace::host
           ? fmt::format("host memory (pinned, read over PCIe: {} a step)", format_bytes(read))
           : std::string("VRAM");
  if (r.kv_memory != KvMemory::automatic)
    return s + fmt::format(" (--kv-memory {})", kv_memory_name(r.kv_memory));
  const char* other = chosen.kv == KvPlace::host ? "VRAM" : "host memory";
  if (!kv_alternative) return s + fmt::format("; in {} nothing fits the budgets", other);
  const Choice& a = *kv_alternative;
  const double mine = chosen.predicted.tokens_per_s;
  const double theirs = a.predicted.tokens_per_s;
  return s + fmt::format("; in {} it would leave {} of {} units in VRAM for {:.3g} tokens/s {}",
                         other, a.count(Tier::device), a.tiers.size(), theirs,
                         theirs * (1 + kTieFraction) >= mine
                             ? std::string("(as fast; this needs less memory or reads less from "
                                           "disk)")
                             : fmt::format("against {:.3g}", mine));
}

namespace {

// Why a runner-up that ties with the chosen placement lost the tie ("" if it did not tie).
std::string tie_reason(const Choice& chosen, const Choice& c, double slower) {
  if (!(slower <= 1 + kTieFraction)) return "";
  const double slow = c.predicted.slow_disk_s_per_token;
  const double chosen_slow = chosen.predicted.slow_disk_s_per_token;
  const uint64_t disk = c.predicted.disk_bytes_per_token;
  const uint64_t chosen_disk = chosen.predicted.disk_bytes_per_token;
  if (disk > chosen_disk) {
    std::string why = fmt::format(
        "; as fast within 0.5%, but reads {} a token from disk where the chosen reads {} (the "
        "disk's rate is the least certain figure)",
        format_bytes(disk), format_bytes(chosen_disk));
    if (slow > chosen_slow * (1 + kTieFraction))
      why += fmt::format("; {:.3f} s/token against {:.3f} if the disk reads at 70% of its probed "
                         "rate",
                         slow, chosen_slow);
    return why;
  }
  if (slow > chosen_slow * (1 + kTieFraction))
    return fmt::format(
        "; as fast within 0.5%, but {:.3f} s/token against {:.3f} if the disk "
        "reads at 70% of its probed rate",
        slow, chosen_slow);
  return "; as fast within 0.5%, but needs more memory";
}

}  // namespace

std::string Plan::explain() const {
  std::string e = "chosen:   " + choice_line(*this, chosen) + "\n";
  for (std::size_t i = 0; i < runners_up.size(); ++i) {
    const Choice& c = runners_up[i];
    const double slower = chosen.predicted.s_per_token > 0
                              ? c.predicted.s_per_token / chosen.predicted.s_per_token
                              : 1.0;
    e += fmt::format("next {}:   {}\n          ({:.2f}× the chosen time{})\n", i + 1,
                     choice_line(*this, c), slower, tie_reason(chosen, c, slower));
  }
  if (runners_up.empty()) e += "no other placement fits the budgets\n";
  e += fmt::format(
      "why:      the search tried every count of units per tier, prefix and spread layouts, "
      "{}–{} staging slots{}, and kept the fastest within RAM {} (budget {} less a {} "
      "margin){}\n",
      2, std::max<std::size_t>(2, request.max_host_slots),
      request.backend != Backend::cuda           ? ""
      : request.kv_memory == KvMemory::automatic ? " and the KV pool in VRAM or in host memory"
      : request.kv_memory == KvMemory::device
          ? " with the KV pool in VRAM (--kv-memory device)"
          : " with the KV pool in host memory (--kv-memory host)",
      format_bytes(ram_budget_bytes - ram_margin_bytes), format_bytes(ram_budget_bytes),
      format_bytes(ram_margin_bytes),
      request.backend == Backend::cuda
          ? fmt::format(" and VRAM {}", format_bytes(vram_budget_bytes - vram_margin_bytes))
          : "");
  return e;
}

json plan_to_json(const Plan& plan) {
  const PlanRequest& r = plan.request;
  const Choice& c = plan.chosen;
  const Prediction& p = c.predicted;
  json layers = json::array();
  for (std::size_t i = 0; i < r.units.size(); ++i)
    layers.push_back({{"name", r.units[i].name},
                      {"tier", tier_name(c.tiers[i])},
                      {"bytes", r.units[i].bytes},
                      {"kv_read_bytes", r.units[i].kv_read_bytes}});
  json tiers = json::object();
  for (Tier t : {Tier::device, Tier::host, Tier::disk})
    tiers[std::string(tier_name(t))] = {{"layers", c.count(t)}, {"bytes", c.bytes(r, t)}};
  auto choice_json = [&](const Choice& ch) {
    return json{{"s_per_token", ch.predicted.s_per_token},
                {"bound", ch.predicted.bound},
                {"peak_ram_bytes", ch.predicted.peak_ram_bytes},
                {"peak_vram_bytes", ch.predicted.peak_vram_bytes},
                {"device", ch.count(Tier::device)},
                {"host", ch.count(Tier::host)},
                {"disk", ch.count(Tier::disk)},
                {"host_slots", ch.host_slots},
                {"device_slots", ch.device_slots},
                {"kv_cache", ch.kv == KvPlace::device ? "device" : "host"}};
  };
  json runners = json::array();
  for (const auto& ch : plan.runners_up) runners.push_back(choice_json(ch));
  json kv = {{"place", c.kv == KvPlace::device ? "device" : "host"},
             {"memory", kv_memory_name(r.kv_memory)},
             {"bytes", r.kv_bytes},
             {"tokens", r.kv_tokens},
             {"bytes_per_context_token", r.kv_bytes_per_context_token},
             {"why", plan.kv_line()}};
  if (plan.kv_alternative) {
    const Choice& a = *plan.kv_alternative;
    kv["alternative"] = choice_json(a);
    kv["alternative"]["tokens_per_s"] = a.predicted.tokens_per_s;
  }
  return {{"ferry_plan", 1},
          {"model", r.model},
          {"backend", backend_name(r.backend)},
          {"machine", machine_to_json(r.machine)},
          {"context", r.context},
          {"batch", r.batch},
          {"layers", layers},
          {"tiers", tiers},
          {"arrangement", c.arrangement},
          {"staging",
           {{"host_slots", c.host_slots},
            {"device_slots", c.device_slots},
            {"slot_bytes", plan.slot_bytes},
            {"chunk_bytes", c.chunk_bytes}}},
          {"prefetch_depth", c.prefetch_depth()},
          {"io_queue_depth", r.io_queue_depth},
          {"kv_cache", kv},
          {"host_fixed_bytes", r.host_fixed_bytes},
          {"device_fixed_bytes", r.device_fixed_bytes},
          {"ram_budget_bytes", plan.ram_budget_bytes},
          {"ram_margin_bytes", plan.ram_margin_bytes},
          {"vram_budget_bytes", plan.vram_budget_bytes},
          {"vram_margin_bytes", plan.vram_margin_bytes},
          {"peak_ram_bytes", p.peak_ram_bytes},
          {"peak_vram_bytes", p.peak_vram_bytes},
          {"peak_pinned_bytes", p.peak_pinned_bytes},
          {"s_per_token", p.s_per_token},
          {"tokens_per_s", p.tokens_per_s},
          {"bound", p.bound},
          {"links",
           {{"disk_s", p.disk_s},
            {"disk_bytes_per_token", p.disk_bytes_per_token},
            {"h2d_s", p.h2d_s},
            {"h2d_bytes_per_token", p.h2d_bytes_per_token},
            {"compute_s", p.compute_s}}},
          {"runners_up", runners}};
}

namespace {

template <typename T>
T field(const json& j, const char* key, const char* where) {
  if (!j.is_object() || !j.contains(key))
    throw InvalidArgument(fmt::format(
        "the plan has no \"{}\"{}; write plans with `ferry plan --json -o FILE`", key, where));
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    throw InvalidArgument(
        fmt::format("the plan's \"{}\"{} has the wrong type: {}", key, where, j.at(key).dump()));
  }
}

}  // namespace

Plan plan_from_json(const json& j) {
  if (!j.is_object() || !j.contains("ferry_plan"))
    throw InvalidArgument(
        "not a ferry plan (no \"ferry_plan\" version); write one with `ferry plan --json -o FILE`");
  const int version = field<int>(j, "ferry_plan", "");
  if (version != 1)
    throw InvalidArgument(fmt::format(
        "the plan has version {}; this ferry reads version 1 — make the plan again with "
        "`ferry plan`",
        version));
  Plan plan;
  PlanRequest& r = plan.request;
  r.model = field<std::string>(j, "model", "");
  const auto backend = field<std::string>(j, "backend", "");
  if (backend != "cpu" && backend != "cuda")
    throw InvalidArgument(fmt::format("the plan's backend '{}' is not cpu or cuda", backend));
  r.backend = backend == "cuda" ? Backend::cuda : Backend::cpu;
  r.machine = machine_from_json(field<json>(j, "machine", ""), "the plan's machine");
  r.context = field<int64_t>(j, "context", "");
  r.batch = field<int>(j, "batch", "");
  r.io_queue_depth = field<uint32_t>(j, "io_queue_depth", "");
  r.host_fixed_bytes = field<uint64_t>(j, "host_fixed_bytes", "");
  r.device_fixed_bytes = field<uint64_t>(j, "device_fixed_bytes", "");
  const json kv = field<json>(j, "kv_cache", "");
  r.kv_bytes = field<uint64_t>(kv, "bytes", " of kv_cache");
  r.kv_bytes_per_context_token = field<uint64_t>(kv, "bytes_per_context_token", " of kv_cache");
  const auto kv_place = field<std::string>(kv, "place", " of kv_cache");
  if (kv_place != "host" && kv_place != "device")
    throw InvalidArgument(
        fmt::format("the plan's kv_cache place '{}' is not host or device", kv_place));
  Choice& c = plan.chosen;
  c.kv = kv_place == "device" ? KvPlace::device : KvPlace::host;
  // Plans written before --kv-memory have neither.
  if (kv.contains("tokens")) r.kv_tokens = field<int64_t>(kv, "tokens", " of kv_cache");
  if (kv.contains("memory")) {
    const auto memory = field<std::string>(kv, "memory", " of kv_cache");
    if (memory != "auto" && memory != "device" && memory != "host")
      throw InvalidArgument(
          fmt::format("the plan's kv_cache memory '{}' is not auto, device or host", memory));
    r.kv_memory = parse_kv_memory(memory);
  }
  const json layers = field<json>(j, "layers", "");
  if (!layers.is_array() || layers.empty())
    throw InvalidArgument("the plan's \"layers\" must be a non-empty array");
  for (const json& l : layers) {
    PlanUnit u;
    u.name = field<std::string>(l, "name", " of a layer");
    u.bytes = field<uint64_t>(l, "bytes", " of a layer");
    u.kv_read_bytes = l.value("kv_read_bytes", uint64_t{0});
    r.units.push_back(u);
    c.tiers.push_back(parse_tier(field<std::string>(l, "tier", " of a layer")));
  }
  const json staging = field<json>(j, "staging", "");
  c.host_slots = field<std::size_t>(staging, "host_slots", " of staging");
  c.device_slots = field<std::size_t>(staging, "device_slots", " of staging");
  plan.slot_bytes = field<uint64_t>(staging, "slot_bytes", " of staging");
  c.chunk_bytes = staging.value("chunk_bytes", uint64_t{0});
  c.arrangement = j.value("arrangement", "");
  plan.ram_budget_bytes = field<uint64_t>(j, "ram_budget_bytes", "");
  plan.ram_margin_bytes = field<uint64_t>(j, "ram_margin_bytes", "");
  plan.vram_budget_bytes = field<uint64_t>(j, "vram_budget_bytes", "");
  plan.vram_margin_bytes = field<uint64_t>(j, "vram_margin_bytes", "");
  if (c.count(Tier::disk) > 0 && c.host_slots < 2)
    throw InvalidArgument("the plan streams layers from disk with fewer than 2 staging slots");
  // What the search never writes, a hand-edited plan must not ask for either: a piece smaller
  // than the smallest chunk (a plan of 1-byte pieces), staging beyond the search's range, a
  // device tier on the CPU backend.
  constexpr uint64_t kSmallestChunk = std::end(kChunkSizes)[-1];
  if (c.chunk_bytes != 0 && (c.chunk_bytes < kSmallestChunk || c.chunk_bytes % 4096 != 0))
    throw InvalidArgument(fmt::format(
        "the plan's chunk_bytes {} is not 0 or a multiple of 4 KiB of at least {}; make the plan "
        "again with `ferry plan`",
        c.chunk_bytes, format_bytes(kSmallestChunk)));
  if (c.host_slots > 64 || c.device_slots > 64)
    throw InvalidArgument(fmt::format(
        "the plan asks for {} host and {} device staging slots; at most 64 of each", c.host_slots,
        c.device_slots));
  if (r.backend == Backend::cpu && c.count(Tier::device) > 0)
    throw InvalidArgument(
        "the plan puts layers on the device tier but is for the cpu backend; make the plan again "
        "with `ferry plan`");
  if (r.backend == Backend::cuda && !r.machine.gpu)
    throw InvalidArgument("the plan is for the cuda backend but its machine has no \"gpu\"");
  check_machine(r.machine, r.backend);
  c.predicted = predict(r, c);
  return plan;
}

}  // namespace ferry::planner
