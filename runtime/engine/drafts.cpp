#include "runtime/engine/drafts.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>

#include "planner/probe_cache.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/engine/convert.hpp"

namespace ferry::engine {

namespace fs = std::filesystem;

DraftSpec DraftSpec::parse(std::string_view text) {
  DraftSpec s;
  if (text == "lookup") return s;
  if (text == "self-int4" || text == "self-int8") {
    s.kind = Kind::self;
    s.quant = std::string(text.substr(5));
    return s;
  }
  std::error_code ec;
  FERRY_EXPECT(!text.empty() && fs::exists(fs::path(text), ec),
               "--draft '{}' is neither lookup, self-int4, self-int8 nor an existing model path; "
               "give one of those or the directory (or GGUF file) of a model that shares the "
               "target's tokenizer",
               text);
  s.kind = Kind::model;
  s.path = fs::path(text);
  return s;
}

std::string DraftSpec::describe() const {
  switch (kind) {
    case Kind::lookup:
      return "lookup";
    case Kind::self:
      return "self-" + quant;
    case Kind::model:
      return "model " + path.string();
  }
  return {};
}

std::optional<fs::path> drafts_cache_dir() {
  const auto probes = planner::ProbeCache::default_path();
  if (!probes) return std::nullopt;
  return probes->parent_path() / "drafts";
}

namespace {

// FNV-1a, 64 bits: a stable name for the cache (std::hash may differ between builds).
uint64_t fnv1a(std::string_view s) {
  uint64_t h = 14695981039346656037ull;
  for (const char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

fs::path self_draft_dir(const fs::path& model, std::string_view quant, const fs::path& cache_dir) {
  fs::path abs = fs::absolute(model).lexically_normal();
  if (!abs.has_filename()) abs = abs.parent_path();
  // The model's files (one level: a directory's checkpoint, config and tokenizer; or the file).
  uint64_t bytes = 0;
  int64_t latest_ns = 0;
  const auto note = [&](const fs::directory_entry& e) {
    std::error_code ec;
    if (!e.is_regular_file(ec)) return;
    bytes += e.file_size(ec);
    const auto t = e.last_write_time(ec);
    latest_ns = std::max<int64_t>(
        latest_ns,
        std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count());
  };
  std::error_code ec;
  if (fs::is_directory(abs, ec)) {
    for (const auto& e : fs::directory_iterator(abs, ec)) note(e);
  } else {
    note(fs::directory_entry(abs, ec));
  }
  const std::string key = fmt::format("{}|{}|{}|{}", abs.string(), bytes, latest_ns, quant);
  return cache_dir / fmt::format("{}-{}-{:016x}", abs.filename().string(), quant, fnv1a(key));
}

fs::path ensure_self_draft(const fs::path& model, std::string_view quant,
                           std::optional<fs::path> cache_dir,
                           const std::function<void(const fs::path&)>& on_convert) {
  FERRY_EXPECT(quant == "int4" || quant == "int8", "a self-draft is an int4 or int8 pack, not '{}'",
               quant);
  FERRY_EXPECT(cache_dir.has_value(),
               "--draft self-{} keeps its pack in ferry's cache directory, but there is none "
               "(FERRY_CACHE_DIR=off, or no HOME); set FERRY_CACHE_DIR, or make the pack with "
               "`ferry convert -m {} -o DIR --quant {}` and give --draft DIR",
               quant, model.string(), quant);
  const fs::path dir = self_draft_dir(model, quant, *cache_dir);
  fs::create_directories(*cache_dir);
  // One conversion when two runs start at once: the second waits and finds the pack.
  const FileLock lock(*cache_dir / fmt::format(".{}.draft-lock", dir.filename().string()));
  std::error_code ec;
  if (fs::exists(dir / "model.ferry", ec) && fs::exists(dir / "config.json", ec)) return dir;
  if (on_convert) on_convert(dir);
  ConvertOptions co;
  co.format = model::WeightFormat::parse(quant);
  // The embedding and lm_head stay 16-bit, as `ferry convert --quant` leaves them: quantizing
  // them too saves GPT-J-6B's 0.8 GB but halved the acceptance rate on a 1024-wide random model
  // (int4: 13% of drafts accepted, 6.5% with both quantized).
  convert_model(model, dir, co);
  return dir;
}

std::vector<SpeculationChoice> predict_speculation(const SpeculationCosts& c, int max_k) {
  std::vector<SpeculationChoice> out;
  const double a = std::clamp(c.acceptance, 0.0, 1.0);
  for (int k = 0; k <= max_k; ++k) {
    const double compute = c.compute_s * (1.0 + c.extra_row_compute * k);
    // The links overlap (prefetch), so a pass takes as long as the busiest.
    const double pass_s = std::max({c.disk_s, c.h2d_s, compute});
    const double tokens = a >= 1.0 ? k + 1.0 : (1.0 - std::pow(a, k + 1)) / (1.0 - a);
    SpeculationChoice ch;
    ch.k = k;
    ch.tokens_per_pass = tokens;
    ch.s_per_token = (pass_s + k * c.draft_s_per_token) / tokens;
    out.push_back(ch);
  }
  return out;
}

SpeculationChoice best_speculation(const std::vector<SpeculationChoice>& choices) {
  FERRY_EXPECT(!choices.empty(), "no speculation choices to pick from");
  SpeculationChoice best = choices.front();
  for (const SpeculationChoice& c : choices)
    if (c.s_per_token < best.s_per_token) best = c;
  return best;
}

double default_acceptance(const DraftSpec& spec) {
  switch (spec.kind) {
    case DraftSpec::Kind::lookup:
      return 0.3;
    case DraftSpec::Kind::self:
      return spec.quant == "int8" ? 0.8 : 0.6;
    case DraftSpec::Kind::model:
      return 0.5;
  }
  return 0.3;
}

std::string acceptance_key(const fs::path& target, const DraftSpec& spec) {
  fs::path abs = fs::absolute(target).lexically_normal();
  if (!abs.has_filename()) abs = abs.parent_path();
  std::string draft = spec.describe();
  if (spec.kind == DraftSpec::Kind::model) {
    fs::path d = fs::absolute(spec.path).lexically_normal();
    if (!d.has_filename()) d = d.parent_path();
    draft = "model " + d.string();
  }
  return fmt::format("accept {} {}", abs.string(), draft);
}

Acceptance planned_acceptance(const fs::path& target, const DraftSpec& spec) {
  const planner::ProbeCache cache;
  if (const auto c = cache.get(acceptance_key(target, spec), 90))
    return {c->value, fmt::format("learned from earlier runs ({})", c->measured_at)};
  return {default_acceptance(spec), fmt::format("default guess for {}", spec.describe())};
}

void learn_acceptance(const fs::path& target, const DraftSpec& spec, double rate) {
  planner::ProbeCache cache;
  cache.learn(acceptance_key(target, spec), rate, "ferry run --draft");
}

}  // namespace ferry::engine
