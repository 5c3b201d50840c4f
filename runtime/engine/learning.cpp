#include "runtime/engine/learning.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "offload/layer_streamer.hpp"
#include "runtime/core/process.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/planning.hpp"

namespace ferry::engine {

namespace {

// The bytes one decode pass reads, as the planner counts its work: every unit's weights and the
// KV cache its attention reads.
uint64_t pass_bytes(const planner::Plan& plan) {
  uint64_t bytes = 0;
  const auto seqs = static_cast<uint64_t>(std::max(1, plan.request.batch));
  for (const auto& u : plan.request.units) bytes += u.bytes + seqs * u.kv_read_bytes;
  return bytes;
}

// A pass over fewer bytes than this is timed mostly by what does not scale with the weights
// (sampling, thread hand-offs, small kernels): `ferry run` on a 13 MB model "achieved"
// 0.91 GB/s and taught the cache that. Such runs report their rate but teach nothing.
constexpr uint64_t kMinLearnPassBytes = uint64_t{64} << 20;

std::string next_plans(const std::optional<double>& learned, int digits) {
  return learned ? fmt::format("; next plans use {:.{}f}", *learned / 1e9, digits) : std::string();
}

std::string prediction_line(const planner::Plan& plan, const GenerateStats& stats) {
  const auto& p = plan.chosen.predicted;
  const auto rss = peak_rss_bytes();
  return fmt::format(
      "predicted {:.3f} s/token, peak RAM {}{}; measured {}, peak RSS {} (VmHWM)", p.s_per_token,
      format_bytes(p.peak_ram_bytes),
      plan.request.backend == planner::Backend::cuda
          ? fmt::format(", peak VRAM {}", format_bytes(p.peak_vram_bytes))
          : std::string(),
      stats.decode_steps > 0
          ? fmt::format("{:.3f} s/token", stats.decode_s / static_cast<double>(stats.decode_steps))
          : std::string("no decode steps"),
      rss ? format_bytes(*rss) : std::string("unknown"));
}

// The CPU's rate per weight byte while decoding, as the planner counts its work.
std::optional<std::string> learn_cpu(const LoadedModel& m, int64_t steps, double compute_s,
                                     const std::string& how) {
  if (steps <= 0 || compute_s <= 0) return std::nullopt;
  const planner::Plan& plan = *m.plan;
  const uint64_t bytes = pass_bytes(plan) * static_cast<uint64_t>(steps);
  if (pass_bytes(plan) < kMinLearnPassBytes)
    return fmt::format(
        "compute achieved {:.2f} GB/s of weights (planned with {:.2f}); not learned: a pass of {} "
        "is too small to time the mat-vec",
        static_cast<double>(bytes) / compute_s / 1e9,
        plan.request.machine.cpu_compute_bytes_per_s.value / 1e9, format_bytes(pass_bytes(plan)));
  const auto learned = learn_cpu_rate(weight_dtype(m.config, m.checkpoint.get()), m.config.n_embd,
                                      bytes, compute_s, "decode compute in " + how);
  return fmt::format("compute achieved {:.2f} GB/s of weights (planned with {:.2f}){}",
                     static_cast<double>(bytes) / compute_s / 1e9,
                     plan.request.machine.cpu_compute_bytes_per_s.value / 1e9,
                     next_plans(learned, 2));
}

// Every unit in VRAM: the decode time is the GPU's compute alone, so its rate per weight byte
// (less the planner's per-unit overhead) goes into the probe cache for this GPU, and the next
// plan predicts this GPU rather than a default.
std::optional<std::string> learn_gpu(const LoadedModel& m, const Backend& backend, int64_t steps,
                                     double compute_s, const std::string& how) {
  const planner::Plan& plan = *m.plan;
  if (steps <= 0 || plan.chosen.count(planner::Tier::device) != plan.chosen.tiers.size())
    return std::nullopt;
  const double overhead_s = static_cast<double>(steps) *
                            static_cast<double>(plan.request.units.size()) *
                            planner::unit_overhead_s(planner::Backend::cuda);
  const double busy_s = compute_s - overhead_s;
  if (busy_s < 0.5 * compute_s || pass_bytes(plan) < kMinLearnPassBytes)
    return std::nullopt;  // launch-bound or too small: the bytes say nothing
  const uint64_t bytes = pass_bytes(plan) * static_cast<uint64_t>(steps);
  const auto learned =
      learn_gpu_rate(backend.device_name(), weight_dtype(m.config, m.checkpoint.get()), bytes,
                     busy_s, "decode compute in " + how + ", all in VRAM");
  const double planned =
      plan.request.machine.gpu ? plan.request.machine.gpu->compute_bytes_per_s.value : 0;
  return fmt::format("GPU compute achieved {:.1f} GB/s of weights (planned with {:.1f}){}",
                     static_cast<double>(bytes) / busy_s / 1e9, planned / 1e9,
                     next_plans(learned, 1));
}

// When units streamed from disk: the rate the disk delivered (bytes of the units read ÷ the time
// reads were outstanding), kept where the next plan of this model looks for it.
std::optional<std::string> learn_disk(const LoadedModel& m, const offload::StreamerStats* st,
                                      const std::string& how) {
  if (!st || st->bytes_acquired == 0 || st->units_acquired == 0 || st->read_busy_s <= 0)
    return std::nullopt;
  const double achieved = static_cast<double>(st->bytes_acquired) / st->read_busy_s;
  const auto learned =
      learn_disk_rate(m.config, *m.checkpoint, st->bytes_acquired, st->read_busy_s, how);
  return fmt::format("disk → host achieved {:.2f} GB/s over {} (planned with {:.2f}){}",
                     achieved / 1e9, format_bytes(st->bytes_acquired),
                     m.plan->request.machine.disk_bytes_per_s.value / 1e9, next_plans(learned, 2));
}

}  // namespace

double stall_s(const Backend& backend) {
  const offload::StreamerStats* st = backend.streamer_stats();
  return st ? st->stall_s : 0;
}

std::vector<std::string> learn_from_run(const LoadedModel& m, const Backend& backend,
                                        const RunOutcome& run) {
  if (!m.plan) return {};
  std::vector<std::string> lines = {prediction_line(*m.plan, run.stats)};
  const int64_t steps = run.stats.decode_steps;
  const double compute_s =
      run.decode_compute_s.value_or(run.stats.decode_s - (stall_s(backend) - run.prompt_stall_s));
  const auto compute = m.plan->request.backend == planner::Backend::cuda
                           ? learn_gpu(m, backend, steps, compute_s, run.how)
                           : learn_cpu(m, steps, compute_s, run.how);
  if (compute) lines.push_back(*compute);
  if (const auto disk = learn_disk(m, backend.streamer_stats(), run.how)) lines.push_back(*disk);
  return lines;
}

}  // namespace ferry::engine
