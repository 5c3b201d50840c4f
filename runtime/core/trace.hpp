// Tracer: what the runtime did over time — spans on tracks (one per I/O queue, copy stream and
// compute stream), counters (host RSS, staging slots in use, pinned bytes) and metadata (the
// plan) — kept in memory and written at the end as Chrome trace event JSON, which Perfetto and
// chrome://tracing open. One process-wide tracer, off by default: a trace point then costs one
// relaxed atomic load and a branch, as Perfetto's TRACE_EVENT costs when its category is off.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::trace {

using Clock = std::chrono::steady_clock;

// What a track is: its rows sort in this order (I/O first, as data flows disk → host → device →
// compute).
enum class TrackKind : uint8_t { io_queue, copy_stream, compute_stream };
std::string_view track_kind_name(TrackKind kind);  // "io", "copy", "compute"

// What a span measures. `read`: a unit's bytes from submit to completion; `copy`: host →
// device; `compute`: a unit's computation; `wait`: compute blocked on a unit that was not
// ready; `load`: reading a resident unit at load time; `pass`: one forward pass (a prompt or
// a decoded token), enclosing the layers' spans.
enum class SpanKind : uint8_t { read, copy, compute, wait, load, pass };
std::string_view span_kind_name(SpanKind kind);

struct TrackInfo {
  uint32_t id = 0;
  TrackKind kind = TrackKind::compute_stream;
  uint32_t index = 0;  // queue / stream number within its kind
  std::string label;   // "I/O queue 0 (io_uring)", "compute stream 0 (CPU)"
};

struct SpanEvent {
  uint32_t track = 0;
  SpanKind kind = SpanKind::compute;
  int32_t unit = -1;     // the weight unit (layer index; n_layer is the head), or the pass number
  int64_t begin_ns = 0;  // since the trace started
  int64_t end_ns = 0;
  uint64_t nbytes = 0;  // reads and copies
  std::string name;     // "read layer 3", "compute lm_head", "prompt (7 tokens)"
};

struct CounterEvent {
  std::string name;  // "host RSS bytes", "staging slots in use", "pinned bytes"
  int64_t t_ns = 0;
  double value = 0;
};

struct TraceData;  // trace_export.hpp

namespace detail {
inline std::atomic<bool> g_enabled{false};
}

// The fast check every trace point makes first.
inline bool enabled() noexcept { return detail::g_enabled.load(std::memory_order_relaxed); }

struct StartOptions {
  // Host RSS is sampled from /proc/self/statm by a background thread this often; 0: never.
  std::chrono::milliseconds rss_period{5};
};

// The process-wide recorder. Thread-safe: any thread may record while another starts or stops.
class Tracer {
 public:
  Tracer();
  ~Tracer();
  Tracer(const Tracer&) = delete;
  Tracer& operator=(const Tracer&) = delete;

  // Clears what an earlier trace recorded, starts the clock and turns recording on.
  void start(StartOptions options = {});
  // Turns recording off (the last RSS sample is taken first); what was recorded stays until
  // the next start().
  void stop();

  // The track of a kind and index, made on first use with this label (later labels ignored).
  uint32_t track(TrackKind kind, uint32_t index, std::string_view label);
  void span(uint32_t track, SpanKind kind, int32_t unit, std::string name, Clock::time_point begin,
            Clock::time_point end, uint64_t nbytes = 0);
  void counter(std::string_view name, double value, Clock::time_point at = Clock::now());
  // Any JSON under a key of the trace's metadata (the plan, the I/O options, the model): a later
  // value replaces an earlier one. Kept across start() until replaced.
  void set_metadata(const std::string& key, nlohmann::json value);

  TraceData snapshot() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

Tracer& tracer();

// The compute stream a forward pass runs on (the CPU backend has one).
uint32_t compute_track(uint32_t stream = 0);

// Records a span on the compute track from construction to destruction, when tracing is on.
// Its name is "<kind> layer <unit>", or "<kind> <unit_name>" when one is given; a pass's unit
// is its token count ("forward pass, 7 tokens").
class ScopedSpan {
 public:
  ScopedSpan(SpanKind kind, int32_t unit, std::string_view unit_name = {}) noexcept
      : on_(enabled()), kind_(kind), unit_(unit), unit_name_(unit_name) {
    if (on_) begin_ = Clock::now();
  }
  ~ScopedSpan();
  ScopedSpan(const ScopedSpan&) = delete;
  ScopedSpan& operator=(const ScopedSpan&) = delete;

 private:
  bool on_;
  SpanKind kind_;
  int32_t unit_;
  std::string_view unit_name_;
  Clock::time_point begin_;
};

// Host resident set size from /proc/self/statm; 0 where it cannot be read.
uint64_t host_rss_bytes() noexcept;

}  // namespace ferry::trace
