#include "planner/probe_cache.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

namespace ferry::planner {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

json read_json(const fs::path& p) {
  std::ifstream in(p);
  if (!in) return json::object();
  try {
    json j = json::parse(in);
    return j.is_object() ? j : json::object();
  } catch (const json::exception&) {
    return json::object();
  }
}

std::string now_iso() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", tm);
}

std::optional<std::time_t> parse_iso(const std::string& s) {
  std::tm tm{};
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm)) return std::nullopt;
  return timegm(&tm);
}

void write_json(const fs::path& path, const json& j) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  const fs::path tmp = path.string() + fmt::format(".{}.partial", ::getpid());
  {
    std::ofstream out(tmp);
    if (!out) return;
    out << j.dump(2) << "\n";
    if (!out) return;
  }
  fs::rename(tmp, path, ec);
  if (ec) fs::remove(tmp, ec);
}

}  // namespace

RateRange plausible_rate(const std::string& key) {
  auto is = [&](std::string_view prefix) { return key.rfind(prefix, 0) == 0; };
  if (is("disk ")) return {1e6, 2e11};
  if (is("cpu ")) return {1e7, 5e12};
  if (is("gpu ")) return {1e8, 2e13};
  if (is("h2d ")) return {1e8, 1e12};
  if (is("accept ")) return {0.0, 1.0};  // a drafter's acceptance rate (speculative decoding)
  return {1e3, 1e14};
}

std::optional<fs::path> ProbeCache::default_path() {
  if (const char* d = std::getenv("FERRY_CACHE_DIR"); d && *d) {
    if (std::string(d) == "off") return std::nullopt;
    return fs::path(d) / "probes.json";
  }
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x)
    return fs::path(x) / "ferry" / "probes.json";
  if (const char* h = std::getenv("HOME"); h && *h)
    return fs::path(h) / ".cache" / "ferry" / "probes.json";
  return std::nullopt;
}

ProbeCache::ProbeCache(std::optional<fs::path> path) : path_(std::move(path)) {}

std::optional<CachedFigure> ProbeCache::get(const std::string& key, double max_age_days) const {
  if (!path_) return std::nullopt;
  const json j = read_json(*path_);
  if (!j.contains(key) || !j[key].is_object()) return std::nullopt;
  const json& e = j[key];
  if (!e.contains("value") || !e["value"].is_number() || !e.contains("measured_at") ||
      !e["measured_at"].is_string())
    return std::nullopt;
  CachedFigure f;
  f.value = e["value"].get<double>();
  f.measured_at = e["measured_at"].get<std::string>();
  f.how = e.value("how", "");
  const auto when = parse_iso(f.measured_at);
  if (!when || !plausible_rate(key).contains(f.value)) return std::nullopt;
  f.age_days = std::difftime(std::time(nullptr), *when) / 86400.0;
  if (f.age_days > max_age_days || f.age_days < -1) return std::nullopt;
  return f;
}

void ProbeCache::put(const std::string& key, double value, const std::string& how) {
  if (!path_ || !plausible_rate(key).contains(value)) return;
  json j = read_json(*path_);
  j[key] = {{"value", value}, {"measured_at", now_iso()}, {"how", how}};
  write_json(*path_, j);
}

std::optional<double> ProbeCache::learn(const std::string& key, double sample,
                                        const std::string& how) {
  const RateRange range = plausible_rate(key);
  if (!path_ || !range.contains(sample)) return std::nullopt;
  json j = read_json(*path_);
  std::vector<double> samples;
  if (j.contains(key) && j[key].is_object()) {
    const json& e = j[key];
    if (e.contains("samples") && e["samples"].is_array()) {
      for (const json& v : e["samples"])
        if (v.is_number() && range.contains(v.get<double>())) samples.push_back(v.get<double>());
    } else if (get(key)) {
      samples.push_back(e["value"].get<double>());  // a probe's figure is the first sample
    }
  }
  samples.push_back(sample);
  if (samples.size() > kLearnedSamples)
    samples.erase(samples.begin(),
                  samples.begin() + static_cast<std::ptrdiff_t>(samples.size() - kLearnedSamples));
  double value = samples.back();
  if (samples.size() == 2) {
    const double a = samples[0];
    const double b = samples[1];
    value = std::max(a, b) <= 2 * std::min(a, b) ? 0.5 * (a + b) : a;
  } else if (samples.size() > 2) {
    std::vector<double> sorted = samples;
    std::sort(sorted.begin(), sorted.end());
    const std::size_t n = sorted.size();
    value = n % 2 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
  }
  j[key] = {{"value", value}, {"measured_at", now_iso()}, {"how", how}, {"samples", samples}};
  write_json(*path_, j);
  return value;
}

std::string disk_cache_key(const fs::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return "disk ?";
  return fmt::format("disk {}:{}", major(st.st_dev), minor(st.st_dev));
}

}  // namespace ferry::planner
