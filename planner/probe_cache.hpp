// ProbeCache: measured bandwidths kept between runs, so `ferry plan` and `ferry run` do not
// re-measure the disk every time. One JSON file ($FERRY_CACHE_DIR, else $XDG_CACHE_HOME/ferry,
// else ~/.cache/ferry: probes.json), keyed by what was measured ("disk 259:1" for a block
// device, "cpu avx2 f16 2 threads"), each entry with its date. `ferry tune` writes the figures
// it measures here too.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace ferry::planner {

struct CachedFigure {
  double value = 0;
  std::string measured_at;  // ISO 8601 UTC
  std::string how;          // "O_DIRECT io_uring read of 256 MiB of model.safetensors"
  double age_days = 0;
};

class ProbeCache {
 public:
  // The default location (see above); FERRY_CACHE_DIR=off disables the cache.
  static std::optional<std::filesystem::path> default_path();

  explicit ProbeCache(std::optional<std::filesystem::path> path = default_path());

  // The figure under key, if measured within max_age_days; a corrupt file reads as empty.
  std::optional<CachedFigure> get(const std::string& key, double max_age_days = 30) const;
  // Records a figure now and writes the file (atomically); failures to write are ignored —
  // the cache is an optimisation, never a reason to stop.
  void put(const std::string& key, double value, const std::string& how);

  const std::optional<std::filesystem::path>& path() const { return path_; }

 private:
  std::optional<std::filesystem::path> path_;
};

// "disk 259:1": the block device holding path (st_dev), so every model on one filesystem
// shares a disk figure.
std::string disk_cache_key(const std::filesystem::path& path);

}  // namespace ferry::planner
