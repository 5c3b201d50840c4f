// What a trace holds once recorded, and its Chrome trace event JSON: the format Perfetto and
// chrome://tracing open, and what the profile summary and HTML report are computed from.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string_view>
#include <vector>

#include "runtime/core/trace.hpp"

namespace ferry::trace {

// Everything recorded, copied out for writing and for analysis.
struct TraceData {
  std::vector<TrackInfo> tracks;
  std::vector<SpanEvent> spans;
  std::vector<CounterEvent> counters;
  nlohmann::json metadata = nlohmann::json::object();  // "plan", "io", "model", …
  int64_t duration_ns = 0;                             // start() to stop()
};

// {"traceEvents": [...], "displayTimeUnit": "ms", "metadata": {...}}: X spans (args: unit,
// bytes), C counters, M metadata naming the process and each track's rows. Spans that overlap
// without nesting on one track (reads in flight together on one I/O queue) are spread over
// lanes, each its own row named after the track.
nlohmann::json to_chrome_json(const TraceData& data);
// Writes to_chrome_json(data). Throws IoError naming the path when it cannot be written.
void write_chrome_trace(const TraceData& data, const std::filesystem::path& path);

// Writes text to path (replacing it whole: write_file_atomically); `what` names it in the error
// ("the trace"). Throws IoError naming the path when it cannot be written.
void write_text_file(const std::filesystem::path& path, std::string_view text,
                     std::string_view what);

// Lanes for the spans of one track, lanes[i] for spans[i]: the spans in a lane nest (as X events
// on one thread must), and the fewest lanes are used, lane 0 first.
std::vector<uint32_t> assign_lanes(const std::vector<const SpanEvent*>& spans);

}  // namespace ferry::trace
