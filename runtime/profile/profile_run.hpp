// A profiled generation: the model loaded under a budget with the tracer on, a prompt run and
// n tokens decoded, and the trace and summary of it. `ferry profile` and `ferry tune` run it;
// `ferry run --trace` uses the metadata and writing helpers.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "runtime/core/trace_export.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/profile/summary.hpp"

namespace ferry::profile {

struct ProfileOptions {
  std::filesystem::path model_dir;
  // Budget, I/O and slots; context and batch sizes are set from the prompt and n_tokens.
  engine::LoadOptions load;
  std::vector<int32_t> prompt;
  int64_t n_tokens = 16;  // decoded greedily, end-of-text ignored, so every run is n long
  bool trace = true;      // off: only the generation loop's timings (no spans, no summary links)
  std::function<void(int64_t done_tokens, int64_t total_tokens)> on_token;  // progress
};

struct ProfileRun {
  engine::GenerateStats stats;
  std::vector<int32_t> tokens;
  trace::TraceData trace;
  Summary summary;
  std::string placement;       // the streamer's one-line description
  std::size_t slot_count = 0;  // staging slots really used (0: nothing streams)
  double load_s = 0;
  std::optional<double> planner_s_per_token;  // the plan's prediction (none: placement forced)
};

ProfileRun run_profile(const ProfileOptions& options);

// The loaded model's placement (as its backend and host streamer have it), its plan (the
// planner's JSON) and model shape, for a trace's metadata.
nlohmann::json load_metadata(const engine::LoadedModel& m, const engine::Backend& backend);
// Puts load_metadata(m, backend) into the process tracer's metadata.
void trace_load_metadata(const engine::LoadedModel& m, const engine::Backend& backend);

// Stops the process tracer, adds `extra` to its metadata and writes the Chrome trace to path.
// Returns what was recorded.
trace::TraceData finish_trace(const std::filesystem::path& path,
                              const nlohmann::json& extra = nlohmann::json::object());

}  // namespace ferry::profile
