#include "planner/machine.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <sys/resource.h>

#include <cmath>
#include <fstream>
#include <string>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry::planner {

namespace {

using nlohmann::json;


// The shipped profiles, in the JSON shape a user's profile file has. Figures are what the
// machines offer a process: Colab's 12.7 GiB VM has ~2 GiB taken at boot; the T4 numbers are
// the ones FlexGen measured on that VM (PCIe 12.9 GB/s, disk 0.47 GB/s).
const char* builtin_json(std::string_view name) {
  if (name == "colab-t4")
    return R"({"name": "colab-t4",
      "note": "free Google Colab GPU runtime: T4 16 GB (15 GiB usable), 12.7 GiB RAM of which ~2 GiB is taken at boot",
      "ram_bytes": 11489037926, "disk_bytes_per_s": 4.7e8, "cpu_compute_bytes_per_s": 6e9,
      "gpu": {"name": "NVIDIA T4", "vram_bytes": 16106127360, "h2d_bytes_per_s": 1.29e10,
              "compute_bytes_per_s": 2.4e11, "context_bytes": 419430400,
              "host_context_bytes": 314572800}})";
  if (name == "colab-cpu")
    return R"({"name": "colab-cpu",
      "note": "free Google Colab CPU runtime: 2 vCPUs, 12.7 GiB RAM of which ~2 GiB is taken at boot",
      "ram_bytes": 11489037926, "disk_bytes_per_s": 4.7e8, "cpu_compute_bytes_per_s": 6e9})";
  if (name == "kaggle-p100")
    return R"({"name": "kaggle-p100",
      "note": "Kaggle GPU notebook: P100 16 GiB, 29 GiB RAM (~2.5 GiB taken), PCIe 3 x16",
      "ram_bytes": 28454158336, "disk_bytes_per_s": 5e8, "cpu_compute_bytes_per_s": 8e9,
      "gpu": {"name": "NVIDIA P100", "vram_bytes": 17071734784, "h2d_bytes_per_s": 1.1e10,
              "compute_bytes_per_s": 5.5e11, "context_bytes": 419430400,
              "host_context_bytes": 314572800}})";
  if (name == "laptop-8g")
    return R"({"name": "laptop-8g",
      "note": "an 8 GiB laptop with ~5.5 GiB free, NVMe SSD, no usable GPU",
      "ram_bytes": 5905580032, "disk_bytes_per_s": 2.5e9, "cpu_compute_bytes_per_s": 2e10})";
  return nullptr;
}

Figure figure(const json& j, const char* key, const std::string& source, bool required) {
  if (!j.contains(key)) {
    if (required)
      throw InvalidArgument(fmt::format("the machine profile {} has no \"{}\"; add it (a number)",
                                        source, key));
    return {};
  }
  if (!j[key].is_number() || j[key].get<double>() <= 0)
    throw InvalidArgument(fmt::format(
        "the machine profile {} has \"{}\": {}; it must be a positive number", source, key,
        j[key].dump()));
  return {j[key].get<double>(), source};
}

}  // namespace

double cpu_row_rate(const Machine& m) {
  return m.cpu_row_bytes_per_s.value > 0 ? m.cpu_row_bytes_per_s.value
                                         : 2 * m.cpu_compute_bytes_per_s.value;
}

double gpu_row_rate(const GpuSpec& g) {
  return g.row_bytes_per_s.value > 0 ? g.row_bytes_per_s.value : 16 * g.compute_bytes_per_s.value;
}

std::vector<std::string> builtin_profiles() {
  return {"colab-t4", "colab-cpu", "kaggle-p100", "laptop-8g"};
}

Machine machine_from_json(const json& j, const std::string& source) {
  if (!j.is_object())
    throw InvalidArgument(fmt::format("the machine profile {} is not a JSON object", source));
  Machine m;
  m.name = j.value("name", source);
  m.ram_bytes = figure(j, "ram_bytes", source, true);
  m.disk_bytes_per_s = figure(j, "disk_bytes_per_s", source, true);
  m.cpu_compute_bytes_per_s = figure(j, "cpu_compute_bytes_per_s", source, true);
  m.memlock_bytes = figure(j, "memlock_bytes", source, false);
  m.cpu_row_bytes_per_s = figure(j, "cpu_row_bytes_per_s", source, false);
  if (!m.memlock_bytes.known()) m.memlock_bytes = {std::ldexp(1.0, 63), source + " (unlimited)"};
  if (j.contains("gpu") && !j["gpu"].is_null()) {
    const json& g = j["gpu"];
    GpuSpec gpu;
    gpu.name = g.value("name", "GPU");
    gpu.vram_bytes = figure(g, "vram_bytes", source + " gpu", true);
    gpu.h2d_bytes_per_s = figure(g, "h2d_bytes_per_s", source + " gpu", true);
    gpu.compute_bytes_per_s = figure(g, "compute_bytes_per_s", source + " gpu", true);
    gpu.row_bytes_per_s = figure(g, "row_bytes_per_s", source + " gpu", false);
    if (gpu.row_bytes_per_s.known()) gpu.row_bytes_per_s.source = source;
    gpu.context_bytes = g.value("context_bytes", uint64_t{400} << 20);
    gpu.host_context_bytes = g.value("host_context_bytes", uint64_t{300} << 20);
    gpu.vram_bytes.source = source;
    gpu.h2d_bytes_per_s.source = source;
    gpu.compute_bytes_per_s.source = source;
    m.gpu = gpu;
  }
  return m;
}

Machine load_profile(std::string_view name_or_path) {
  if (const char* text = builtin_json(name_or_path))
    return machine_from_json(json::parse(text), fmt::format("profile {}", name_or_path));
  const std::filesystem::path path(name_or_path);
  std::ifstream in(path);
  if (!in)
    throw InvalidArgument(fmt::format(
        "no machine profile named '{}': use one of {} or a JSON file (see `ferry plan --help`)",
        name_or_path, fmt::join(builtin_profiles(), ", ")));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw InvalidArgument(
        fmt::format("the machine profile {} is not valid JSON: {}", path.string(), e.what()));
  }
  return machine_from_json(j, fmt::format("profile {}", path.string()));
}

json machine_to_json(const Machine& m) {
  json j = {{"name", m.name},
            {"ram_bytes", m.ram_bytes.bytes()},
            {"disk_bytes_per_s", m.disk_bytes_per_s.value},
            {"cpu_compute_bytes_per_s", m.cpu_compute_bytes_per_s.value},
            {"memlock_bytes", m.memlock_bytes.bytes()},
            {"sources",
             {{"ram_bytes", m.ram_bytes.source},
              {"disk_bytes_per_s", m.disk_bytes_per_s.source},
              {"cpu_compute_bytes_per_s", m.cpu_compute_bytes_per_s.source},
              {"memlock_bytes", m.memlock_bytes.source}}}};
  if (m.cpu_row_bytes_per_s.known()) {
    j["cpu_row_bytes_per_s"] = m.cpu_row_bytes_per_s.value;
    j["sources"]["cpu_row_bytes_per_s"] = m.cpu_row_bytes_per_s.source;
  }
  if (m.gpu) {
    j["gpu"] = {{"name", m.gpu->name},
                {"vram_bytes", m.gpu->vram_bytes.bytes()},
                {"h2d_bytes_per_s", m.gpu->h2d_bytes_per_s.value},
                {"compute_bytes_per_s", m.gpu->compute_bytes_per_s.value},
                {"context_bytes", m.gpu->context_bytes},
                {"host_context_bytes", m.gpu->host_context_bytes}};
    j["sources"]["vram_bytes"] = m.gpu->vram_bytes.source;
    j["sources"]["h2d_bytes_per_s"] = m.gpu->h2d_bytes_per_s.source;
    j["sources"]["gpu_compute_bytes_per_s"] = m.gpu->compute_bytes_per_s.source;
    if (m.gpu->row_bytes_per_s.known()) {
      j["gpu"]["row_bytes_per_s"] = m.gpu->row_bytes_per_s.value;
      j["sources"]["gpu_row_bytes_per_s"] = m.gpu->row_bytes_per_s.source;
    }
  } else {
    j["gpu"] = nullptr;
  }
  return j;
}

Figure probe_memlock() {
  // CAP_IPC_LOCK (bit 14 of the effective set; root has it) lifts the limit.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("CapEff:", 0) == 0 && (std::stoull(line.substr(7), nullptr, 16) >> 14) & 1)
      return {std::ldexp(1.0, 63), "CAP_IPC_LOCK (no memlock limit)"};
  rlimit r{};
  if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return {0, "getrlimit(RLIMIT_MEMLOCK) failed"};
  if (r.rlim_cur == RLIM_INFINITY) return {std::ldexp(1.0, 63), "RLIMIT_MEMLOCK (unlimited)"};
  return {static_cast<double>(r.rlim_cur), "RLIMIT_MEMLOCK"};
}

std::vector<std::string> describe_machine(const Machine& m) {
  auto rate = [](const Figure& f) {
    return f.known() ? fmt::format("{:.2f} GB/s ({})", f.value / 1e9, f.source)
                     : std::string("unknown");
  };
  std::vector<std::string> lines;
  lines.push_back(fmt::format("RAM for ferry  {} ({})", format_bytes(m.ram_bytes.bytes()),
                              m.ram_bytes.source));
  if (m.memlock_bytes.known())
    lines.push_back(fmt::format(
        "memlock        {} ({})",
        m.memlock_bytes.value >= std::ldexp(1.0, 62) ? std::string("unlimited")
                                                     : format_bytes(m.memlock_bytes.bytes()),
        m.memlock_bytes.source));
  lines.push_back("disk → host    " + rate(m.disk_bytes_per_s));
  lines.push_back("CPU mat-vec    " + rate(m.cpu_compute_bytes_per_s));
  if (m.cpu_row_bytes_per_s.known())
    lines.push_back("CPU extra rows " + rate(m.cpu_row_bytes_per_s) + " (weight bytes × rows)");
  if (m.gpu) {
    lines.push_back(fmt::format("GPU            {}: {} VRAM ({}), {} for the CUDA context",
                                m.gpu->name, format_bytes(m.gpu->vram_bytes.bytes()),
                                m.gpu->vram_bytes.source, format_bytes(m.gpu->context_bytes)));
    lines.push_back("host → device  " + rate(m.gpu->h2d_bytes_per_s));
    lines.push_back("GPU mat-vec    " + rate(m.gpu->compute_bytes_per_s));
    if (m.gpu->row_bytes_per_s.known())
      lines.push_back("GPU extra rows " + rate(m.gpu->row_bytes_per_s) + " (weight bytes × rows)");
  }
  return lines;
}

}  // namespace ferry::planner
