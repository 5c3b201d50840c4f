#include "planner/memory_probe.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "runtime/core/units.hpp"

namespace ferry::planner {

namespace fs = std::filesystem;

namespace {

std::optional<std::string> read_first_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  return line;
}

std::optional<uint64_t> read_number(const fs::path& p) {
  const auto line = read_first_line(p);
  if (!line || line->empty() || *line == "max") return std::nullopt;
  try {
    return std::stoull(*line);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// A "key value" line of memory.stat (or "Key: value kB" of meminfo, with the unit applied).
std::optional<uint64_t> read_keyed(const fs::path& p, const std::string& key) {
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string k;
    uint64_t v = 0;
    std::string unit;
    if (!(ls >> k >> v)) continue;
    if (!k.empty() && k.back() == ':') k.pop_back();
    if (k != key) continue;
    ls >> unit;
    return unit == "kB" ? v * 1024 : v;
  }
  return std::nullopt;
}

// Limits above this are cgroup v1's way of saying "no limit".
constexpr uint64_t kNoLimit = uint64_t{1} << 60;

struct Bound {
  uint64_t available;
  uint64_t limit;
  fs::path dir;
};

// Walks from dir up to root, keeping the tightest limit − usage (file cache that the kernel
// can drop is not counted as used).
std::optional<Bound> tightest(const fs::path& root, fs::path rel, const char* limit_file,
                              const char* usage_file, const char* inactive_key) {
  std::optional<Bound> best;
  for (;;) {
    const fs::path dir = rel.empty() || rel == "/" ? root : root / rel.relative_path();
    const auto limit = read_number(dir / limit_file);
    const auto usage = read_number(dir / usage_file);
    if (limit && usage && *limit < kNoLimit) {
      const uint64_t inactive = read_keyed(dir / "memory.stat", inactive_key).value_or(0);
      const uint64_t used = *usage > inactive ? *usage - inactive : 0;
      const uint64_t avail = *limit > used ? *limit - used : 0;
      if (!best || avail < best->available) best = Bound{avail, *limit, dir};
    }
    if (rel.empty() || rel == "/" || !rel.has_relative_path()) break;
    rel = rel.parent_path();
  }
  return best;
}

}  // namespace

uint64_t RamProbe::available_bytes() const {
  return cgroup_available_bytes ? std::min(mem_available_bytes, *cgroup_available_bytes)
                                : mem_available_bytes;
}

std::string RamProbe::describe() const {
  std::string d = fmt::format("{} available (MemAvailable {}", format_bytes(available_bytes()),
                              format_bytes(mem_available_bytes));
  if (cgroup_available_bytes)
    d += fmt::format("; cgroup v{} {}: limit {}, {} free", cgroup_version, cgroup_path,
                     format_bytes(*cgroup_limit_bytes), format_bytes(*cgroup_available_bytes));
  return d + ")";
}

RamProbe probe_ram(const fs::path& proc_root, const fs::path& cgroup_root) {
  RamProbe p;
  p.mem_available_bytes = read_keyed(proc_root / "meminfo", "MemAvailable").value_or(0);
  std::ifstream in(proc_root / "self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    // "0::/user.slice/x" (v2) or "7:memory:/x" / "4:cpu,memory:/x" (v1).
    const auto c1 = line.find(':');
    const auto c2 = line.find(':', c1 + 1);
    if (c1 == std::string::npos || c2 == std::string::npos) continue;
    const std::string controllers = line.substr(c1 + 1, c2 - c1 - 1);
    const fs::path rel = line.substr(c2 + 1);
    std::optional<Bound> b;
    int version = 0;
    if (controllers.empty()) {
      b = tightest(cgroup_root, rel, "memory.max", "memory.current", "inactive_file");
      version = 2;
    } else if (("," + controllers + ",").find(",memory,") != std::string::npos) {
      b = tightest(cgroup_root / "memory", rel, "memory.limit_in_bytes", "memory.usage_in_bytes",
                   "total_inactive_file");
      version = 1;
    }
    if (b && (!p.cgroup_available_bytes || b->available < *p.cgroup_available_bytes)) {
      p.cgroup_available_bytes = b->available;
      p.cgroup_limit_bytes = b->limit;
      p.cgroup_path = b->dir.string();
      p.cgroup_version = version;
    }
  }
  return p;
}

}  // namespace ferry::planner
