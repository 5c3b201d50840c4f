// The HTML report of a profiled run: one self-contained file (inline SVG and CSS, no scripts,
// nothing fetched) with the timeline of the first forward passes — a row per I/O queue, copy
// stream and compute stream, as in the trace — memory per tier over time, and the summary
// table; small enough for a notebook to display inline.
#pragma once

#include <filesystem>
#include <string>

#include "runtime/core/trace_export.hpp"
#include "runtime/profile/summary.hpp"

namespace ferry::profile {

struct ReportOptions {
  std::string title = "ferry profile";
  int timeline_passes = 4;  // forward passes shown on the timeline (the prompt, then tokens)
};

std::string render_html_report(const trace::TraceData& trace, const Summary& summary,
                               const ReportOptions& options = {});
// Throws IoError naming the path when it cannot be written.
void write_html_report(const std::filesystem::path& path, const trace::TraceData& trace,
                       const Summary& summary, const ReportOptions& options = {});

// Text made safe inside HTML elements and attributes.
std::string html_escape(std::string_view text);

}  // namespace ferry::profile
