#include "runtime/profile/summary.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <map>

#include "runtime/core/units.hpp"

namespace ferry::profile {

namespace {

constexpr double kNs = 1e-9;

double ratio(double num, double den) { return den > 0 ? num / den : 0; }

bool inside(const trace::SpanEvent& e, int64_t lo, int64_t hi) {
  return e.begin_ns >= lo && e.begin_ns < hi;
}

// The disk's rate within [lo, hi): the bytes of the reads (each counted by the share of it inside
// the window) over the time at least one was in flight. A phase's own rate, since the disk's
// speed varies (the load's reads compete with the first pass's).
double read_gbps_within(const std::vector<const trace::SpanEvent*>& reads, int64_t lo, int64_t hi) {
  double bytes = 0;
  std::vector<std::pair<int64_t, int64_t>> spans;
  for (const auto* r : reads) {
    const int64_t b = std::max(r->begin_ns, lo);
    const int64_t e = std::min(r->end_ns, hi);
    if (e <= b) continue;
    bytes += static_cast<double>(r->nbytes) * static_cast<double>(e - b) /
             static_cast<double>(std::max<int64_t>(1, r->end_ns - r->begin_ns));
    spans.emplace_back(b, e);
  }
  return ratio(bytes * 1e-9, union_seconds(std::move(spans), lo, hi));
}

void fill_phase(PhaseSummary& p, int64_t tokens, double wall_s,
                const std::vector<const trace::SpanEvent*>& passes,
                const std::vector<const trace::SpanEvent*>& compute,
                const std::vector<const trace::SpanEvent*>& reads, uint64_t bytes_per_pass) {
  p.tokens = tokens;
  p.passes = static_cast<int64_t>(passes.size());
  p.wall_s = wall_s;
  p.s_per_token = ratio(wall_s, static_cast<double>(tokens));
  p.s_per_pass = ratio(wall_s, static_cast<double>(p.passes));
  double compute_s = 0;
  for (const auto* c : compute)
    for (const auto* pass : passes)
      if (inside(*c, pass->begin_ns, pass->end_ns)) {
        compute_s += static_cast<double>(c->end_ns - c->begin_ns) * kNs;
        break;
      }
  p.compute_s_per_pass = ratio(compute_s, static_cast<double>(p.passes));
  if (p.passes == 0) return;
  p.read_gbps = read_gbps_within(reads, passes.front()->begin_ns, passes.back()->end_ns);
  p.read_s_per_pass = ratio(static_cast<double>(bytes_per_pass) * 1e-9, p.read_gbps);
  p.bound_s_per_pass = std::max(p.read_s_per_pass, p.compute_s_per_pass);
  p.overlap_efficiency = ratio(p.bound_s_per_pass, p.s_per_pass);
}

}  // namespace

double union_seconds(std::vector<std::pair<int64_t, int64_t>> intervals, int64_t lo, int64_t hi) {
  std::sort(intervals.begin(), intervals.end());
  int64_t covered = 0;
  int64_t cur_b = 0;
  int64_t cur_e = std::numeric_limits<int64_t>::min();
  for (auto [b, e] : intervals) {
    b = std::max(b, lo);
    e = std::min(e, hi);
    if (e <= b) continue;
    if (b > cur_e) {
      if (cur_e > cur_b) covered += cur_e - cur_b;
      cur_b = b;
      cur_e = e;
    } else {
      cur_e = std::max(cur_e, e);
    }
  }
  if (cur_e > cur_b) covered += cur_e - cur_b;
  return static_cast<double>(covered) * kNs;
}

Summary summarize(const trace::TraceData& trace, const engine::GenerateStats& stats,
                  const SummaryInputs& inputs) {
  Summary s;
  std::vector<const trace::SpanEvent*> passes;
  std::vector<const trace::SpanEvent*> compute;
  std::vector<std::pair<int64_t, int64_t>> reads;
  std::vector<const trace::SpanEvent*> read_spans;
  std::vector<std::pair<int64_t, int64_t>> computing;
  uint64_t read_bytes = 0;
  std::map<int32_t, UnitStall> stalls;
  for (const auto& e : trace.spans) {
    switch (e.kind) {
      case trace::SpanKind::pass:
        passes.push_back(&e);
        break;
      case trace::SpanKind::compute:
        compute.push_back(&e);
        computing.emplace_back(e.begin_ns, e.end_ns);
        break;
      case trace::SpanKind::read:
        reads.emplace_back(e.begin_ns, e.end_ns);
        read_spans.push_back(&e);
        read_bytes += e.nbytes;
        break;
      case trace::SpanKind::wait: {
        UnitStall& u = stalls[e.unit];
        u.unit = e.unit;
        u.name = e.name.substr(e.name.find(' ') + 1);  // "wait layer 3" → "layer 3"
        ++u.count;
        u.total_s += static_cast<double>(e.end_ns - e.begin_ns) * kNs;
        break;
      }
      default:
        break;
    }
  }
  std::sort(passes.begin(), passes.end(),
            [](const auto* a, const auto* b) { return a->begin_ns < b->begin_ns; });
  const int64_t lo = passes.empty() ? 0 : passes.front()->begin_ns;
  const int64_t hi = passes.empty() ? trace.duration_ns : passes.back()->end_ns;
  s.wall_s = passes.empty() ? stats.prompt_s + stats.decode_s : static_cast<double>(hi - lo) * kNs;

  // Only the reads of the generation count: resident loads are `load` spans, not `read` ones.
  const double read_busy = union_seconds(reads, std::numeric_limits<int64_t>::min(),
                                         std::numeric_limits<int64_t>::max());
  LinkSummary read{"disk → host (read)", read_bytes, read_busy, 0,
                   ratio(static_cast<double>(read_bytes) * 1e-9, read_busy)};
  read.busy_share = ratio(union_seconds(reads, lo, hi), s.wall_s);
  const double compute_busy = union_seconds(computing, lo, hi);
  LinkSummary comp{"compute (CPU)", 0, compute_busy, ratio(compute_busy, s.wall_s), 0};
  s.links = {read, comp};

  s.streamed_bytes_per_pass =
      passes.empty() ? 0 : read_bytes / static_cast<uint64_t>(passes.size());
  s.planner_s_per_token = inputs.planner_s_per_token;

  // The generation loop runs one prompt pass, then one pass per decoded token after the first.
  const std::vector<const trace::SpanEvent*> prompt_passes(
      passes.begin(), passes.begin() + std::min<std::ptrdiff_t>(1, std::ssize(passes)));
  const std::vector<const trace::SpanEvent*> decode_passes(
      passes.begin() + static_cast<std::ptrdiff_t>(prompt_passes.size()), passes.end());
  fill_phase(s.prompt, stats.prompt_tokens, stats.prompt_s, prompt_passes, compute, read_spans,
             s.streamed_bytes_per_pass);
  fill_phase(s.decode, stats.decode_steps, stats.decode_s, decode_passes, compute, read_spans,
             s.streamed_bytes_per_pass);

  for (auto& [unit, st] : stalls) {
    s.stalls += st.count;
    s.stall_s += st.total_s;
    s.top_stalls.push_back(st);
  }
  std::sort(s.top_stalls.begin(), s.top_stalls.end(),
            [](const UnitStall& a, const UnitStall& b) { return a.total_s > b.total_s; });
  if (s.top_stalls.size() > 5) s.top_stalls.resize(5);

  for (const auto& c : trace.counters) {
    const auto v = static_cast<uint64_t>(std::max(0.0, c.value));
    if (c.name == "host RSS bytes") s.peak_rss_bytes = std::max(s.peak_rss_bytes, v);
    if (c.name == "resident weight bytes") s.resident_weight_bytes = v;
    if (c.name == "staging bytes") s.staging_bytes = v;
    if (c.name == "pinned bytes") s.pinned_bytes = v;
  }
  return s;
}

nlohmann::json to_json(const Summary& s) {
  using nlohmann::json;
  const auto phase = [](const PhaseSummary& p) {
    return json{{"tokens", p.tokens},
                {"passes", p.passes},
                {"wall_s", p.wall_s},
                {"s_per_token", p.s_per_token},
                {"s_per_pass", p.s_per_pass},
                {"compute_s_per_pass", p.compute_s_per_pass},
                {"read_gbps", p.read_gbps},
                {"read_s_per_pass", p.read_s_per_pass},
                {"bound_s_per_pass", p.bound_s_per_pass},
                {"overlap_efficiency", p.overlap_efficiency}};
  };
  json links = json::array();
  for (const auto& l : s.links)
    links.push_back({{"name", l.name},
                     {"bytes", l.nbytes},
                     {"busy_s", l.busy_s},
                     {"busy_share", l.busy_share},
                     {"achieved_gbps", l.achieved_gbps}});
  json top = json::array();
  for (const auto& u : s.top_stalls)
    top.push_back({{"unit", u.unit}, {"name", u.name}, {"count", u.count}, {"total_s", u.total_s}});
  return {{"wall_s", s.wall_s},
          {"prompt", phase(s.prompt)},
          {"decode", phase(s.decode)},
          {"links", links},
          {"stalls", {{"count", s.stalls}, {"total_s", s.stall_s}, {"top", top}}},
          {"prediction",
           {{"source",
             "this run's link rates: max(streamed bytes ÷ the decode's read rate, "
             "compute) per pass"},
            {"streamed_bytes_per_pass", s.streamed_bytes_per_pass},
            {"s_per_token", s.decode.bound_s_per_pass},
            {"planner_s_per_token",
             s.planner_s_per_token ? json(*s.planner_s_per_token) : json(nullptr)},
            {"planner_over_measured", s.planner_s_per_token && s.decode.s_per_token > 0
                                          ? json(*s.planner_s_per_token / s.decode.s_per_token)
                                          : json(nullptr)}}},
          {"memory",
           {{"peak_rss_bytes", s.peak_rss_bytes},
            {"resident_weight_bytes", s.resident_weight_bytes},
            {"staging_bytes", s.staging_bytes},
            {"pinned_bytes", s.pinned_bytes}}}};
}

std::string format_summary(const Summary& s) {
  std::string out;
  auto line = [&out](const std::string& l) { out += l + "\n"; };
  const bool traced = !s.links.empty();
  line(fmt::format("profile: {:.3f} s of generation{}", s.wall_s,
                   traced ? "" : " (not traced: timings only)"));
  const auto phase = [&](const char* what, const PhaseSummary& p) {
    if (p.passes == 0) return;
    std::string l =
        fmt::format("  {:<7} {:>4} tokens  {:>4} passes  {:9.4f} s/token  {:9.4f} s/pass", what,
                    p.tokens, p.passes, p.s_per_token, p.s_per_pass);
    if (traced)
      l += fmt::format("  bound {:9.4f} s/pass  overlap efficiency {:5.1f}%", p.bound_s_per_pass,
                       100 * p.overlap_efficiency);
    line(l);
  };
  phase("prompt", s.prompt);
  phase("decode", s.decode);
  if (!traced) return out;
  line("  link                  bytes        busy       share   achieved");
  for (const auto& l : s.links)
    line(fmt::format("  {:<20} {:>11} {:9.3f} s  {:5.1f}%  {}", l.name,
                     l.nbytes ? format_bytes(l.nbytes) : std::string("-"), l.busy_s,
                     100 * l.busy_share,
                     l.nbytes ? fmt::format("{:.2f} GB/s", l.achieved_gbps) : std::string("-")));
  const PhaseSummary& d = s.decode.passes ? s.decode : s.prompt;
  line(
      fmt::format("  bound ({}): {} streamed per pass ÷ {:.2f} GB/s = {:.4f} s, against "
                  "compute {:.4f} s/pass",
                  s.decode.passes ? "decode" : "prompt", format_bytes(s.streamed_bytes_per_pass),
                  d.read_gbps, d.read_s_per_pass, d.compute_s_per_pass));
  if (s.planner_s_per_token)
    line(fmt::format("  planner predicted {:.4f} s/token; measured {:.4f} ({:.0f}% of it)",
                     *s.planner_s_per_token, s.decode.s_per_token,
                     100 * ratio(s.decode.s_per_token, *s.planner_s_per_token)));
  std::string top;
  for (const auto& u : s.top_stalls)
    top += fmt::format("{}{} {:.4f} s ({}×)", top.empty() ? "" : ", ", u.name, u.total_s, u.count);
  line(fmt::format("  stalls: {} totalling {:.4f} s{}{}", s.stalls, s.stall_s,
                   top.empty() ? "" : "; most: ", top));
  line(fmt::format("  memory: peak RSS {}, resident weights {}, staging {} ({} pinned)",
                   format_bytes(s.peak_rss_bytes), format_bytes(s.resident_weight_bytes),
                   format_bytes(s.staging_bytes), format_bytes(s.pinned_bytes)));
  return out;
}

}  // namespace ferry::profile
