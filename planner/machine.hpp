// Machine: every figure the planner needs about the hardware it plans for — memory budgets and
// link bandwidths — each with where it came from (a probe, a cached measurement, a flag, a
// named profile). A profile replaces the probes, so ferry can plan for a machine it is not on.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::planner {

// A number and its provenance: "probe: /proc/meminfo", "--max-ram", "profile colab-t4",
// "cache 2026-11-20 (disk 254:0)", "default: no weights to probe; give --disk-bw".
struct Figure {
  double value = 0;
  std::string source;

  bool known() const { return !source.empty(); }
  uint64_t bytes() const { return value <= 0 ? 0 : static_cast<uint64_t>(value); }
};

struct GpuSpec {
  std::string name;                 // "NVIDIA T4"
  Figure vram_bytes;                // free for ferry: total less what the driver keeps
  Figure h2d_bytes_per_s;           // pinned host → device copies (PCIe)
  Figure compute_bytes_per_s;       // weight bytes/s of fp16 matrix–vector products
  // Weight bytes × rows per second that each row past the first of a many-row product costs
  // (batched decoding, verifying drafts): a GPU reads the weights once for all rows, so extra
  // rows are cheap. Unknown (0): 16 × compute_bytes_per_s.
  Figure row_bytes_per_s;
  uint64_t context_bytes = 0;       // VRAM the CUDA context and cuBLAS workspace take
  uint64_t host_context_bytes = 0;  // host RAM the CUDA driver maps into the process
};

struct Machine {
  std::string name;                   // "this machine", "colab-t4"
  Figure ram_bytes;                   // host RAM ferry may use
  Figure memlock_bytes;               // RLIMIT_MEMLOCK (locked staging slots); inf = none
  Figure disk_bytes_per_s;            // sequential O_DIRECT reads of the model's filesystem
  Figure cpu_compute_bytes_per_s;     // weight bytes/s of the CPU's matrix–vector product
  // Weight bytes × rows per second that each row past the first of a many-row product costs on
  // the CPU (the rest of a batch's decode step). Unknown (0): 2 × cpu_compute_bytes_per_s.
  Figure cpu_row_bytes_per_s;
  std::optional<GpuSpec> gpu;         // none: a CPU-only machine
  bool ram_is_explicit_cap = false;   // --max-ram (exact) rather than a probe (noisy)
};

// The rates extra rows of a product cost (see the fields), the defaults filled in.
double cpu_row_rate(const Machine& m);
double gpu_row_rate(const GpuSpec& g);

// The named profiles ferry ships: colab-t4, colab-cpu, kaggle-p100, laptop-8g.
std::vector<std::string> builtin_profiles();

// A builtin profile by name, or a JSON file of the same shape (see machine_to_json). Throws
// InvalidArgument naming the profile and the builtin names when it is neither.
Machine load_profile(std::string_view name_or_path);
Machine machine_from_json(const nlohmann::json& j, const std::string& source);
nlohmann::json machine_to_json(const Machine& m);

// RLIMIT_MEMLOCK of this process (infinity as 2^63).
Figure probe_memlock();

// One line per figure: "RAM 10.70 GiB (profile colab-t4)", for `ferry plan`.
std::vector<std::string> describe_machine(const Machine& m);

}  // namespace ferry::planner
