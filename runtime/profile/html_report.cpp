#include "runtime/profile/html_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "runtime/core/units.hpp"

namespace ferry::profile {

namespace {

constexpr double kLabelPx = 230;
constexpr double kPlotPx = 940;
constexpr double kRowPx = 20;

const char* colour(trace::SpanKind k) {
  switch (k) {
    case trace::SpanKind::read:
      return "#4e79a7";
    case trace::SpanKind::load:
      return "#76b7b2";
    case trace::SpanKind::copy:
      return "#f28e2b";
    case trace::SpanKind::compute:
      return "#59a14f";
    case trace::SpanKind::wait:
      return "#e15759";
    case trace::SpanKind::pass:
      return "#d4ccc6";
  }
  return "#999";
}

// The timeline of [lo, hi): one row per lane of every track.
std::string timeline_svg(const trace::TraceData& t, int64_t lo, int64_t hi) {
  std::vector<const trace::TrackInfo*> tracks;
  for (const auto& tr : t.tracks) tracks.push_back(&tr);
  std::stable_sort(tracks.begin(), tracks.end(), [](const auto* a, const auto* b) {
    return a->kind != b->kind ? a->kind < b->kind : a->index < b->index;
  });
  const double span_ns = static_cast<double>(std::max<int64_t>(1, hi - lo));
  const auto x_of = [&](int64_t ns) {
    return kLabelPx + kPlotPx * static_cast<double>(std::clamp(ns, lo, hi) - lo) / span_ns;
  };
  std::string rows;
  std::string labels;
  int row = 0;
  for (const auto* tr : tracks) {
    std::vector<const trace::SpanEvent*> spans;
    for (const auto& e : t.spans)
      if (e.track == tr->id && e.end_ns > lo && e.begin_ns < hi) spans.push_back(&e);
    const std::vector<uint32_t> lanes = trace::assign_lanes(spans);
    const uint32_t n_lanes = lanes.empty() ? 1 : *std::max_element(lanes.begin(), lanes.end()) + 1;
    for (uint32_t lane = 0; lane < n_lanes; ++lane) {
      const double y = 24 + (row + lane) * kRowPx;
      labels += fmt::format(
          "<text x=\"4\" y=\"{:.1f}\" class=\"lbl\">{}</text>\n", y + 14,
          html_escape(lane == 0 ? tr->label : fmt::format("{} · {}", tr->label, lane + 1)));
      rows +=
          fmt::format("<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" class=\"grid\"/>\n",
                      kLabelPx, kLabelPx + kPlotPx, y + kRowPx, y + kRowPx);
    }
    for (std::size_t i = 0; i < spans.size(); ++i) {
      const auto& e = *spans[i];
      const double x0 = x_of(e.begin_ns);
      const double w = std::max(0.5, x_of(e.end_ns) - x0);
      const double y = 24 + (row + lanes[i]) * kRowPx + 2;
      std::string tip =
          fmt::format("{}: {:.3f} ms", e.name, static_cast<double>(e.end_ns - e.begin_ns) / 1e6);
      if (e.nbytes) tip += ", " + format_bytes(e.nbytes);
      rows += fmt::format(
          "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{}\" fill=\"{}\">"
          "<title>{}</title></rect>\n",
          x0, y, w, kRowPx - 4, colour(e.kind), html_escape(tip));
    }
    row += static_cast<int>(n_lanes);
  }
  const double height = 24 + row * kRowPx + 24;
  std::string axis;
  for (int k = 0; k <= 10; ++k) {
    const double x = kLabelPx + kPlotPx * k / 10.0;
    axis += fmt::format(
        "<line x1=\"{0:.1f}\" x2=\"{0:.1f}\" y1=\"20\" y2=\"{1:.1f}\" class=\"grid\"/>"
        "<text x=\"{0:.1f}\" y=\"14\" class=\"tick\">{2:.1f} ms</text>\n",
        x, height - 20, span_ns * k / 10.0 / 1e6);
  }
  return fmt::format(
      "<svg width=\"{}\" height=\"{:.0f}\" "
      "role=\"img\" aria-label=\"timeline\">\n{}{}{}</svg>\n",
      kLabelPx + kPlotPx + 10, height, axis, labels, rows);
}

// Memory counters over the whole trace, as step lines.
std::string memory_svg(const trace::TraceData& t) {
  const char* series[][2] = {{"host RSS bytes", "#4e79a7"},
                             {"resident weight bytes", "#59a14f"},
                             {"staging bytes", "#f28e2b"},
                             {"pinned bytes", "#e15759"}};
  std::map<std::string, std::vector<std::pair<int64_t, double>>> points;
  double y_max = 1;
  for (const auto& c : t.counters) {
    points[c.name].emplace_back(c.t_ns, c.value);
    for (const auto& s : series)
      if (c.name == s[0]) y_max = std::max(y_max, c.value);
  }
  const double h = 180;
  const double end_ns = static_cast<double>(std::max<int64_t>(1, t.duration_ns));
  const auto x_of = [&](int64_t ns) {
    return kLabelPx + kPlotPx * static_cast<double>(ns) / end_ns;
  };
  const auto y_of = [&](double v) { return 20 + h - h * v / y_max; };
  std::string out;
  double legend_y = 40;
  for (const auto& s : series) {
    auto it = points.find(s[0]);
    if (it == points.end() || it->second.empty()) continue;
    std::string pts;
    double prev = it->second.front().second;
    for (const auto& [ns, v] : it->second) {
      pts += fmt::format("{:.1f},{:.1f} {:.1f},{:.1f} ", x_of(ns), y_of(prev), x_of(ns), y_of(v));
      prev = v;
    }
    pts += fmt::format("{:.1f},{:.1f}", kLabelPx + kPlotPx, y_of(prev));
    out += fmt::format(
        "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n"
        "<text x=\"4\" y=\"{:.0f}\" class=\"lbl\" fill=\"{}\">{} (max {})</text>\n",
        s[1], pts, legend_y, s[1], html_escape(s[0]), format_bytes(static_cast<uint64_t>([&] {
          double m = 0;
          for (const auto& p : it->second) m = std::max(m, p.second);
          return m;
        }())));
    legend_y += 18;
  }
  std::string axis = fmt::format(
      "<text x=\"{:.0f}\" y=\"14\" class=\"tick\">{}</text>"
      "<text x=\"{:.0f}\" y=\"{:.0f}\" class=\"tick\">0</text>"
      "<text x=\"{:.0f}\" y=\"{:.0f}\" class=\"tick\">{:.2f} s</text>\n",
      kLabelPx, format_bytes(static_cast<uint64_t>(y_max)), kLabelPx, 20 + h + 14,
      kLabelPx + kPlotPx - 40, 20 + h + 14, end_ns / 1e9);
  return fmt::format(
      "<svg width=\"{}\" height=\"{:.0f}\" "
      "role=\"img\" aria-label=\"memory\">\n<rect x=\"{}\" y=\"20\" width=\"{}\" height=\"{}\" "
      "class=\"frame\"/>\n{}{}</svg>\n",
      kLabelPx + kPlotPx + 10, h + 44, kLabelPx, kPlotPx, h, axis, out);
}

std::string summary_table(const Summary& s) {
  std::string rows;
  const auto row = [&rows](const std::string& k, const std::string& v) {
    rows += fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", html_escape(k), html_escape(v));
  };
  const auto phase = [&](const char* name, const PhaseSummary& p) {
    if (p.passes == 0) return;
    row(fmt::format("{} s/token", name),
        fmt::format("{:.4f} s ({} tokens, {} passes, {:.4f} s/pass)", p.s_per_token, p.tokens,
                    p.passes, p.s_per_pass));
    row(fmt::format("{} bound / overlap efficiency", name),
        fmt::format("{:.4f} s/pass / {:.1f}%", p.bound_s_per_pass, 100 * p.overlap_efficiency));
  };
  phase("prompt", s.prompt);
  phase("decode", s.decode);
  for (const auto& l : s.links)
    row(l.name, fmt::format("busy {:.3f} s ({:.1f}%){}", l.busy_s, 100 * l.busy_share,
                            l.nbytes ? fmt::format(", {} at {:.2f} GB/s", format_bytes(l.nbytes),
                                                   l.achieved_gbps)
                                     : std::string()));
  row("streamed per pass", format_bytes(s.streamed_bytes_per_pass));
  if (s.planner_s_per_token)
    row("planner predicted", fmt::format("{:.4f} s/token", *s.planner_s_per_token));
  std::string top;
  for (const auto& u : s.top_stalls)
    top += fmt::format("{}{} {:.4f} s ({}×)", top.empty() ? "" : ", ", u.name, u.total_s, u.count);
  row("stalls", fmt::format("{} totalling {:.4f} s{}{}", s.stalls, s.stall_s,
                            top.empty() ? "" : "; most: ", top));
  row("peak RSS", format_bytes(s.peak_rss_bytes));
  row("resident weights / staging / pinned",
      fmt::format("{} / {} / {}", format_bytes(s.resident_weight_bytes),
                  format_bytes(s.staging_bytes), format_bytes(s.pinned_bytes)));
  return "<table>\n" + rows + "</table>\n";
}

}  // namespace

std::string html_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string render_html_report(const trace::TraceData& trace, const Summary& summary,
                               const ReportOptions& options) {
  std::vector<const trace::SpanEvent*> passes;
  for (const auto& e : trace.spans)
    if (e.kind == trace::SpanKind::pass) passes.push_back(&e);
  std::sort(passes.begin(), passes.end(),
            [](const auto* a, const auto* b) { return a->begin_ns < b->begin_ns; });
  int64_t lo = 0;
  int64_t hi = trace.duration_ns;
  if (!passes.empty()) {
    lo = passes.front()->begin_ns;
    const auto n = std::min<std::size_t>(
        passes.size(), static_cast<std::size_t>(std::max(1, options.timeline_passes)));
    hi = passes[n - 1]->end_ns;
  }
  const std::string legend =
      "<p class=\"legend\"><span style=\"background:#4e79a7\"></span>read "
      "<span style=\"background:#76b7b2\"></span>load <span "
      "style=\"background:#f28e2b\"></span>copy "
      "<span style=\"background:#59a14f\"></span>compute <span style=\"background:#e15759\"></span>"
      "wait <span style=\"background:#d4ccc6\"></span>forward pass</p>\n";
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>{0}</title>\n"
      "<style>\nbody{{font:13px system-ui,sans-serif;margin:16px;color:#222}}"
      "h1{{font-size:18px}}h2{{font-size:15px;margin-top:22px}}"
      "table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:3px 8px;"
      "text-align:left;font-weight:normal}}th{{background:#f4f4f4}}"
      ".lbl{{font-size:11px}}.tick{{font-size:10px;fill:#666}}.grid{{stroke:#eee}}"
      ".frame{{fill:none;stroke:#ccc}}.legend span{{display:inline-block;width:12px;height:10px;"
      "margin:0 3px 0 10px}}\n</style></head><body>\n<h1>{0}</h1>\n"
      "<h2>Summary</h2>\n{1}"
      "<h2>Timeline of the first {2} forward passes</h2>\n{3}{4}"
      "<h2>Memory over time</h2>\n{5}</body></html>\n",
      html_escape(options.title), summary_table(summary),
      passes.empty()
          ? 0
          : std::min<std::size_t>(passes.size(), static_cast<std::size_t>(options.timeline_passes)),
      legend, timeline_svg(trace, lo, hi), memory_svg(trace));
}

void write_html_report(const std::filesystem::path& path, const trace::TraceData& trace,
                       const Summary& summary, const ReportOptions& options) {
  trace::write_text_file(path, render_html_report(trace, summary, options), "the report");
}

}  // namespace ferry::profile
