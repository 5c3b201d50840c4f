// ProbeCache: measured bandwidths kept between runs, so `ferry plan` and `ferry run` do not
// re-measure the disk every time. One JSON file ($FERRY_CACHE_DIR, else $XDG_CACHE_HOME/ferry,
// else ~/.cache/ferry: probes.json), keyed by what was measured ("disk 259:1" for a block
// device, "cpu avx2 f16 2 threads"), each entry with its date. `ferry tune` writes the figures
// it measures here too.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace ferry::planner {

// The physical range of a rate kept under key (bytes/s), by the key's kind: "disk …" 1 MB/s to
// 200 GB/s, "cpu …" 10 MB/s to 5 TB/s, "gpu …" 100 MB/s to 20 TB/s, "h2d …" 100 MB/s to 1 TB/s.
// A figure outside it is no measurement (a broken clock, a hand-edited file, a run too small to
// time) and is neither read nor learned.
struct RateRange {
  double lo = 0;
  double hi = 0;
  bool contains(double v) const { return v >= lo && v <= hi; }
};
RateRange plausible_rate(const std::string& key);

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

  // The figure under key, if measured within max_age_days and within plausible_rate(key); a
  // corrupt file reads as empty.
  std::optional<CachedFigure> get(const std::string& key, double max_age_days = 30) const;
  // Records a figure now and writes the file (atomically); failures to write are ignored —
  // the cache is an optimisation, never a reason to stop. A value outside plausible_rate(key)
  // is not written. A put is a fresh measurement: the samples learned before are dropped.
  void put(const std::string& key, double value, const std::string& how);
  // Learns a rate a run achieved: the figure becomes the median of the last kLearnedSamples
  // samples (an outlier is outvoted instead of averaged in); with only two, their mean if they
  // agree within a factor of 2, else the older stands until a third sample decides. A sample
  // outside plausible_rate(key) is dropped. Returns the figure now kept, if any.
  std::optional<double> learn(const std::string& key, double sample, const std::string& how);
  static constexpr std::size_t kLearnedSamples = 5;

  const std::optional<std::filesystem::path>& path() const { return path_; }

 private:
  std::optional<std::filesystem::path> path_;
};

// "disk 259:1": the block device holding path (st_dev), so every model on one filesystem
// shares a disk figure.
std::string disk_cache_key(const std::filesystem::path& path);

}  // namespace ferry::planner
