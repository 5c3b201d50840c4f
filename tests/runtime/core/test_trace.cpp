// The tracer: nothing recorded while off, spans and counters while on, and Chrome trace JSON
// with a named row per track (lanes for overlapping reads), counters and metadata.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/core/trace.hpp"
#include "runtime/core/trace_export.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::trace {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;

TEST(Tracer, OffRecordsNothing) {
  tracer().stop();
  EXPECT_FALSE(enabled());
  { const ScopedSpan s(SpanKind::compute, 0); }
  tracer().counter("host RSS bytes", 1);
  EXPECT_TRUE(tracer().snapshot().spans.empty());
  EXPECT_TRUE(tracer().snapshot().counters.empty());
}

TEST(Tracer, RecordsSpansCountersAndMetadata) {
  Tracer& t = tracer();
  t.start({milliseconds(1)});
  ASSERT_TRUE(enabled());
  { const ScopedSpan s(SpanKind::compute, 3); }
  { const ScopedSpan s(SpanKind::compute, 4, "lm_head"); }
  t.counter("staging slots in use", 2);
  t.set_metadata("plan", {{"slot_count", 3}});
  t.stop();
  EXPECT_FALSE(enabled());
  const TraceData d = t.snapshot();
  ASSERT_EQ(d.spans.size(), 2u);
  EXPECT_EQ(d.spans[0].name, "compute layer 3");
  EXPECT_EQ(d.spans[1].name, "compute lm_head");
  EXPECT_LE(d.spans[0].begin_ns, d.spans[0].end_ns);
  bool rss = false;
  for (const auto& c : d.counters) rss |= c.name == "host RSS bytes" && c.value > 0;
  EXPECT_TRUE(rss) << "the sampler records host RSS";
  EXPECT_EQ(d.metadata["plan"]["slot_count"], 3);
  EXPECT_GT(host_rss_bytes(), 0u);
}

TEST(Tracer, LanesNestSpansAndSpreadOverlaps) {
  // Reads in flight together overlap without nesting; a pass encloses its layers.
  const std::vector<SpanEvent> spans = {{0, SpanKind::read, 0, 0, 10, 0, "a"},
                                        {0, SpanKind::read, 1, 5, 15, 0, "b"},
                                        {0, SpanKind::read, 2, 12, 20, 0, "c"},
                                        {0, SpanKind::pass, 1, 0, 100, 0, "p"},
                                        {0, SpanKind::compute, 0, 1, 50, 0, "x"}};
  std::vector<const SpanEvent*> ptrs;
  for (const auto& s : spans) ptrs.push_back(&s);
  const auto lanes = assign_lanes(ptrs);
  EXPECT_EQ(lanes[3], 0u);  // the enclosing pass comes first
  for (std::size_t i = 0; i < spans.size(); ++i)
    for (std::size_t j = 0; j < spans.size(); ++j) {
      if (i == j || lanes[i] != lanes[j]) continue;
      const auto& a = spans[i];
      const auto& b = spans[j];
      const bool disjoint = a.end_ns <= b.begin_ns || b.end_ns <= a.begin_ns;
      const bool nested = (a.begin_ns <= b.begin_ns && b.end_ns <= a.end_ns) ||
                          (b.begin_ns <= a.begin_ns && a.end_ns <= b.end_ns);
      EXPECT_TRUE(disjoint || nested) << a.name << " and " << b.name << " share lane " << lanes[i];
    }
}

TEST(Tracer, ChromeJsonNamesEveryRowAndCarriesEvents) {
  TraceData d;
  d.tracks = {{0, TrackKind::compute_stream, 0, "compute stream 0 (CPU)"},
              {1, TrackKind::io_queue, 0, "I/O queue 0 (uring)"},
              {2, TrackKind::copy_stream, 0, "copy stream 0"}};
  d.spans = {{1, SpanKind::read, 0, 0, 10'000, 4096, "read layer 0"},
             {1, SpanKind::read, 1, 5'000, 15'000, 4096, "read layer 1"},
             {0, SpanKind::compute, 0, 10'000, 20'000, 0, "compute layer 0"}};
  d.counters = {{"host RSS bytes", 0, 1e6}};
  d.metadata["plan"] = {{"slot_count", 3}};
  const json j = json::parse(to_chrome_json(d).dump());
  std::map<int, std::string> rows;
  int reads = 0;
  int counters = 0;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "thread_name") rows[e["tid"]] = e["args"]["name"];
    if (e["ph"] == "X" && e["cat"] == "read") {
      ++reads;
      EXPECT_EQ(e["args"]["bytes"], 4096);
    }
    if (e["ph"] == "C") ++counters;
  }
  EXPECT_EQ(reads, 2);
  EXPECT_EQ(counters, 1);
  // Rows in data-flow order; the overlapping reads take two lanes of the I/O queue.
  std::vector<std::string> names;
  for (const auto& [tid, name] : rows) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"I/O queue 0 (uring)", "I/O queue 0 (uring) · 2",
                                             "copy stream 0", "compute stream 0 (CPU)"}));
  EXPECT_EQ(j["metadata"]["plan"]["slot_count"], 3);
}

TEST(Tracer, WritingToAMissingDirectoryNamesThePath) {
  const test::TempDir tmp;
  try {
    write_chrome_trace(TraceData{}, tmp / "no-such-dir" / "t.json");
    FAIL() << "expected an IoError";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find("no-such-dir/t.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ferry::trace
