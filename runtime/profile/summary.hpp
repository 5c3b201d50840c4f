// The profile summary of a traced generation: how busy each link was and at what rate, how long
// compute waited on layers (and which), measured seconds per token for the prompt and the
// decode, the bound the link rates allow, and overlap efficiency (bound ÷ measured) — the
// figures Nsight Systems' summary gives for a GPU timeline, for ferry's streams.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "runtime/core/trace_export.hpp"
#include "runtime/engine/generate.hpp"

namespace ferry::profile {

// One link data crosses (disk → host reads, host → device copies, compute) over the run.
struct LinkSummary {
  std::string name;          // "disk → host (read)", "compute (CPU)"
  uint64_t nbytes = 0;       // bytes carried (0 for compute)
  double busy_s = 0;         // time at least one span of the link was open
  double busy_share = 0;     // busy_s ÷ the generation's wall time
  double achieved_gbps = 0;  // nbytes ÷ busy_s, in GB/s (1e9)
};

struct UnitStall {
  int32_t unit = -1;
  std::string name;  // "layer 3"
  uint64_t count = 0;
  double total_s = 0;
};

// The prompt pass or the decode passes.
struct PhaseSummary {
  int64_t tokens = 0;  // prompt tokens, or decoded tokens
  int64_t passes = 0;
  double wall_s = 0;       // as the generation loop measured it
  double s_per_token = 0;  // wall_s ÷ tokens
  double s_per_pass = 0;   // wall_s ÷ passes
  double compute_s_per_pass = 0;
  double read_gbps = 0;           // the disk's rate during this phase
  double read_s_per_pass = 0;     // streamed bytes per pass ÷ read_gbps
  double bound_s_per_pass = 0;    // max(read, compute) per pass: the slowest link
  double overlap_efficiency = 0;  // bound ÷ measured, per pass (1 = perfect overlap)
};

struct Summary {
  double wall_s = 0;  // first pass start to last pass end
  PhaseSummary prompt;
  PhaseSummary decode;
  std::vector<LinkSummary> links;  // read, then compute
  uint64_t stalls = 0;
  double stall_s = 0;
  std::vector<UnitStall> top_stalls;  // most stalled first, at most 5
  // The bound's bytes: what every pass streams (each phase has its own read rate).
  uint64_t streamed_bytes_per_pass = 0;
  std::optional<double> planner_s_per_token;  // the planner's prediction, when there is a plan
  // Memory over the run.
  uint64_t peak_rss_bytes = 0;
  uint64_t resident_weight_bytes = 0;
  uint64_t staging_bytes = 0;
  uint64_t pinned_bytes = 0;
};

struct SummaryInputs {
  // The planner's s/token prediction, reported beside the measured bound when given.
  std::optional<double> planner_s_per_token;
};

// Reads the trace's spans and counters and the generation loop's timings. The trace must have
// been recorded around exactly the generation `stats` describes.
Summary summarize(const trace::TraceData& trace, const engine::GenerateStats& stats,
                  const SummaryInputs& inputs = {});

nlohmann::json to_json(const Summary& s);
// The summary as aligned text lines, for a terminal.
std::string format_summary(const Summary& s);

// Seconds covered by at least one of the intervals [begin_ns, end_ns), clipped to [lo, hi).
double union_seconds(std::vector<std::pair<int64_t, int64_t>> intervals, int64_t lo, int64_t hi);

}  // namespace ferry::profile
