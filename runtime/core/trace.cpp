#include "runtime/core/trace.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/core/trace_export.hpp"

namespace ferry::trace {

std::string_view track_kind_name(TrackKind kind) {
  switch (kind) {
    case TrackKind::io_queue:
      return "io";
    case TrackKind::copy_stream:
      return "copy";
    case TrackKind::compute_stream:
      return "compute";
  }
  return "?";
}

std::string_view span_kind_name(SpanKind kind) {
  switch (kind) {
    case SpanKind::read:
      return "read";
    case SpanKind::copy:
      return "copy";
    case SpanKind::compute:
      return "compute";
    case SpanKind::wait:
      return "wait";
    case SpanKind::load:
      return "load";
    case SpanKind::pass:
      return "pass";
  }
  return "?";
}

struct Tracer::Impl {
  mutable std::mutex mu;
  Clock::time_point epoch = Clock::now();
  Clock::time_point stopped = epoch;
  bool running = false;
  std::vector<TrackInfo> tracks;
  std::vector<SpanEvent> spans;
  std::vector<CounterEvent> counters;
  nlohmann::json metadata = nlohmann::json::object();

  // The RSS sampler, when running.
  std::thread sampler;
  std::mutex sampler_mu;
  std::condition_variable sampler_cv;
  bool sampler_stop = false;

  int64_t ns(Clock::time_point t) const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t - epoch).count();
  }

  void stop_sampler() {
    if (!sampler.joinable()) return;
    {
      const std::lock_guard lock(sampler_mu);
      sampler_stop = true;
    }
    sampler_cv.notify_all();
    sampler.join();
  }
};

Tracer::Tracer() : impl_(std::make_unique<Impl>()) {}

Tracer::~Tracer() {
  detail::g_enabled.store(false, std::memory_order_relaxed);
  impl_->stop_sampler();
}

void Tracer::start(StartOptions options) {
  Impl& s = *impl_;
  s.stop_sampler();
  {
    const std::lock_guard lock(s.mu);
    s.tracks.clear();
    s.spans.clear();
    s.counters.clear();
    // Room for a long run up front, so recording rarely reallocates under the lock.
    s.spans.reserve(1 << 14);
    s.counters.reserve(1 << 14);
    s.epoch = Clock::now();
    s.running = true;
  }
  detail::g_enabled.store(true, std::memory_order_relaxed);
  if (options.rss_period.count() > 0) {
    s.sampler_stop = false;
    s.sampler = std::thread([this, period = options.rss_period] {
      Impl& st = *impl_;
      std::unique_lock lock(st.sampler_mu);
      while (!st.sampler_stop) {
        counter("host RSS bytes", static_cast<double>(host_rss_bytes()));
        st.sampler_cv.wait_for(lock, period, [&] { return st.sampler_stop; });
      }
    });
  }
}

void Tracer::stop() {
  Impl& s = *impl_;
  if (enabled()) counter("host RSS bytes", static_cast<double>(host_rss_bytes()));
  detail::g_enabled.store(false, std::memory_order_relaxed);
  s.stop_sampler();
  const std::lock_guard lock(s.mu);
  if (s.running) s.stopped = Clock::now();
  s.running = false;
}

uint32_t Tracer::track(TrackKind kind, uint32_t index, std::string_view label) {
  Impl& s = *impl_;
  const std::lock_guard lock(s.mu);
  for (const TrackInfo& t : s.tracks)
    if (t.kind == kind && t.index == index) return t.id;
  const auto id = static_cast<uint32_t>(s.tracks.size());
  s.tracks.push_back({id, kind, index, std::string(label)});
  return id;
}

void Tracer::span(uint32_t track, SpanKind kind, int32_t unit, std::string name,
                  Clock::time_point begin, Clock::time_point end, uint64_t nbytes) {
  Impl& s = *impl_;
  const std::lock_guard lock(s.mu);
  if (!s.running) return;
  s.spans.push_back({track, kind, unit, s.ns(begin), s.ns(end), nbytes, std::move(name)});
}

void Tracer::counter(std::string_view name, double value, Clock::time_point at) {
  Impl& s = *impl_;
  const std::lock_guard lock(s.mu);
  if (!s.running) return;
  s.counters.push_back({std::string(name), s.ns(at), value});
}

void Tracer::set_metadata(const std::string& key, nlohmann::json value) {
  const std::lock_guard lock(impl_->mu);
  impl_->metadata[key] = std::move(value);
}

TraceData Tracer::snapshot() const {
  const Impl& s = *impl_;
  const std::lock_guard lock(s.mu);
  TraceData d;
  d.tracks = s.tracks;
  d.spans = s.spans;
  d.counters = s.counters;
  d.metadata = s.metadata;
  d.duration_ns = s.ns(s.running ? Clock::now() : s.stopped);
  return d;
}

Tracer& tracer() {
  static Tracer t;
  return t;
}

uint32_t compute_track(uint32_t stream) {
  return tracer().track(TrackKind::compute_stream, stream,
                        stream == 0 ? std::string("compute stream 0 (CPU)")
                                    : fmt::format("compute stream {} (CPU)", stream));
}

ScopedSpan::~ScopedSpan() {
  if (!on_ || !enabled()) return;
  try {
    std::string name = kind_ == SpanKind::pass ? fmt::format("forward pass, {} tokens", unit_)
                       : unit_name_.empty()
                           ? fmt::format("{} layer {}", span_kind_name(kind_), unit_)
                           : fmt::format("{} {}", span_kind_name(kind_), unit_name_);
    tracer().span(compute_track(), kind_, unit_, std::move(name), begin_, Clock::now());
  } catch (...) {  // a trace point never takes the run down
  }
}

uint64_t host_rss_bytes() noexcept {
  const int fd = ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[128];
  const ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  unsigned long long size_pages = 0;
  unsigned long long resident_pages = 0;
  if (std::sscanf(buf, "%llu %llu", &size_pages, &resident_pages) != 2) return 0;
  return resident_pages * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

std::vector<uint32_t> assign_lanes(const std::vector<const SpanEvent*>& spans) {
  std::vector<std::size_t> order(spans.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    if (spans[a]->begin_ns != spans[b]->begin_ns) return spans[a]->begin_ns < spans[b]->begin_ns;
    return spans[a]->end_ns > spans[b]->end_ns;  // the enclosing span first
  });
  std::vector<std::vector<int64_t>> open_ends;  // per lane: ends of the spans still open
  std::vector<uint32_t> lanes(spans.size(), 0);
  for (std::size_t i : order) {
    const SpanEvent& e = *spans[i];
    std::size_t lane = 0;
    for (; lane < open_ends.size(); ++lane) {
      auto& stack = open_ends[lane];
      while (!stack.empty() && stack.back() <= e.begin_ns) stack.pop_back();
      if (stack.empty() || stack.back() >= e.end_ns) break;
    }
    if (lane == open_ends.size()) open_ends.emplace_back();
    open_ends[lane].push_back(e.end_ns);
    lanes[i] = static_cast<uint32_t>(lane);
  }
  return lanes;
}

nlohmann::json to_chrome_json(const TraceData& data) {
  using nlohmann::json;
  constexpr int kPid = 1;
  constexpr uint32_t kLanesPerTrack = 100;
  json events = json::array();
  events.push_back({{"name", "process_name"},
                    {"ph", "M"},
                    {"pid", kPid},
                    {"tid", 0},
                    {"args", {{"name", "ferry"}}}});

  // Rows in data-flow order: I/O queues, copy streams, compute streams.
  std::vector<const TrackInfo*> tracks;
  for (const TrackInfo& t : data.tracks) tracks.push_back(&t);
  std::stable_sort(tracks.begin(), tracks.end(), [](const TrackInfo* a, const TrackInfo* b) {
    return a->kind != b->kind ? a->kind < b->kind : a->index < b->index;
  });
  std::map<uint32_t, std::vector<const SpanEvent*>> by_track;
  for (const SpanEvent& e : data.spans) by_track[e.track].push_back(&e);

  for (std::size_t row = 0; row < tracks.size(); ++row) {
    const TrackInfo& t = *tracks[row];
    const auto& spans = by_track[t.id];
    const std::vector<uint32_t> lanes = assign_lanes(spans);
    const uint32_t n_lanes =
        lanes.empty() ? 1
                      : std::min(kLanesPerTrack, *std::max_element(lanes.begin(), lanes.end()) + 1);
    const auto base_tid = static_cast<uint32_t>((row + 1) * kLanesPerTrack);
    for (uint32_t lane = 0; lane < n_lanes; ++lane) {
      const std::string name = lane == 0 ? t.label : fmt::format("{} · {}", t.label, lane + 1);
      events.push_back({{"name", "thread_name"},
                        {"ph", "M"},
                        {"pid", kPid},
                        {"tid", base_tid + lane},
                        {"args", {{"name", name}}}});
      events.push_back({{"name", "thread_sort_index"},
                        {"ph", "M"},
                        {"pid", kPid},
                        {"tid", base_tid + lane},
                        {"args", {{"sort_index", base_tid + lane}}}});
    }
    for (std::size_t i = 0; i < spans.size(); ++i) {
      const SpanEvent& e = *spans[i];
      json args = {{"unit", e.unit}};
      if (e.nbytes) args["bytes"] = e.nbytes;
      events.push_back({{"name", e.name},
                        {"cat", span_kind_name(e.kind)},
                        {"ph", "X"},
                        {"ts", static_cast<double>(e.begin_ns) / 1e3},
                        {"dur", static_cast<double>(e.end_ns - e.begin_ns) / 1e3},
                        {"pid", kPid},
                        {"tid", base_tid + std::min(lanes[i], kLanesPerTrack - 1)},
                        {"args", std::move(args)}});
    }
  }
  for (const CounterEvent& c : data.counters)
    events.push_back({{"name", c.name},
                      {"cat", "memory"},
                      {"ph", "C"},
                      {"ts", static_cast<double>(c.t_ns) / 1e3},
                      {"pid", kPid},
                      {"args", {{"value", c.value}}}});
  return {
      {"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}, {"metadata", data.metadata}};
}

void write_text_file(const std::filesystem::path& path, std::string_view text,
                     std::string_view what) {
  write_file_atomically(path, text, what);
}

void write_chrome_trace(const TraceData& data, const std::filesystem::path& path) {
  write_text_file(path, to_chrome_json(data).dump(), "the trace");
}

}  // namespace ferry::trace
