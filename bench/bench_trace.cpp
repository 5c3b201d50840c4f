// What a trace point costs: off (one relaxed load and a branch) and on (a span recorded under the
// tracer's lock), against the work it brackets — a streamed layer takes milliseconds, so a few
// spans per layer at these costs are far below the 2% budget of the issue.
#include <benchmark/benchmark.h>

#include "runtime/core/trace.hpp"

namespace {

using ferry::trace::ScopedSpan;
using ferry::trace::SpanKind;

void BM_ScopedSpanOff(benchmark::State& state) {
  ferry::trace::tracer().stop();
  int32_t layer = 0;
  for (auto _ : state) {
    const ScopedSpan span(SpanKind::compute, layer++ & 31);
    benchmark::DoNotOptimize(layer);
  }
}
BENCHMARK(BM_ScopedSpanOff);

void BM_ScopedSpanOn(benchmark::State& state) {
  ferry::trace::tracer().start();
  int32_t layer = 0;
  for (auto _ : state) {
    const ScopedSpan span(SpanKind::compute, layer++ & 31);
    benchmark::DoNotOptimize(layer);
    if ((layer & 0xffff) == 0) {  // keep the buffer from growing without bound
      state.PauseTiming();
      ferry::trace::tracer().start();
      state.ResumeTiming();
    }
  }
  ferry::trace::tracer().stop();
}
BENCHMARK(BM_ScopedSpanOn);

void BM_CounterOn(benchmark::State& state) {
  ferry::trace::tracer().start();
  double v = 0;
  for (auto _ : state) {
    ferry::trace::tracer().counter("staging slots in use", v);
    v += 1;
    if ((static_cast<int64_t>(v) & 0xffff) == 0) {
      state.PauseTiming();
      ferry::trace::tracer().start();
      state.ResumeTiming();
    }
  }
  ferry::trace::tracer().stop();
}
BENCHMARK(BM_CounterOn);

// The RSS sampler's cost per sample (one every 5 ms while tracing).
void BM_HostRssSample(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(ferry::trace::host_rss_bytes());
}
BENCHMARK(BM_HostRssSample);

}  // namespace

BENCHMARK_MAIN();
