// How much host memory ferry may use: the smallest of what the kernel reports available and
// what every enclosing memory cgroup (v1 or v2) still allows, each figure with its source.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace ferry::planner {

struct RamProbe {
  uint64_t mem_available_bytes = 0;  // /proc/meminfo MemAvailable
  // The tightest cgroup along the path from this process's cgroup to the root.
  std::optional<uint64_t> cgroup_available_bytes;  // limit − (usage − inactive file cache)
  std::optional<uint64_t> cgroup_limit_bytes;
  std::string cgroup_path;  // the directory whose limit binds
  int cgroup_version = 0;   // 1 or 2; 0 when no memory cgroup limits this process

  uint64_t available_bytes() const;
  // "7.81 GiB available (cgroup v2 /sys/fs/cgroup/user.slice: limit 8.00 GiB)"
  std::string describe() const;
};

// Reads /proc and /sys/fs/cgroup, or the same layout under other roots (for tests).
RamProbe probe_ram(const std::filesystem::path& proc_root = "/proc",
                   const std::filesystem::path& cgroup_root = "/sys/fs/cgroup");

}  // namespace ferry::planner
