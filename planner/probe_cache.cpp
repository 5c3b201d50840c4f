#include "planner/probe_cache.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>

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

}  // namespace

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
  if (!when || f.value <= 0) return std::nullopt;
  f.age_days = std::difftime(std::time(nullptr), *when) / 86400.0;
  if (f.age_days > max_age_days || f.age_days < -1) return std::nullopt;
  return f;
}

void ProbeCache::put(const std::string& key, double value, const std::string& how) {
  if (!path_) return;
  std::error_code ec;
  fs::create_directories(path_->parent_path(), ec);
  json j = read_json(*path_);
  j[key] = {{"value", value}, {"measured_at", now_iso()}, {"how", how}};
  const fs::path tmp = path_->string() + fmt::format(".{}.partial", ::getpid());
  {
    std::ofstream out(tmp);
    if (!out) return;
    out << j.dump(2) << "\n";
    if (!out) return;
  }
  fs::rename(tmp, *path_, ec);
  if (ec) fs::remove(tmp, ec);
}

std::string disk_cache_key(const fs::path& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) return "disk ?";
  return fmt::format("disk {}:{}", major(st.st_dev), minor(st.st_dev));
}

}  // namespace ferry::planner
