#include "runtime/profile/tune.hpp"

#include <algorithm>
#include <limits>

#include "runtime/core/error.hpp"
#include "runtime/profile/profile_run.hpp"

namespace ferry::profile {

namespace {

double score(const ProfileRun& r) {
  if (r.stats.decode_steps > 0) return r.stats.decode_s / static_cast<double>(r.stats.decode_steps);
  return r.stats.prompt_s;
}

// Paired rounds of the default and the winner that confirm a winner: the disk's speed drifts
// over minutes, so only a winner faster than the default run just before it, every round, stays.
constexpr int kConfirmRounds = 2;

// One more run of trial t's policy; its score is the best of its runs (the least disturbed).
// Returns this run's score, or a negative number when the policy failed.
double measure(const TuneOptions& o, Trial& t) {
  ProfileOptions po;
  po.model_dir = o.model_dir;
  po.load = o.load;
  apply_policy(t.policy, po.load);
  po.load.io.report_fallbacks = false;
  po.prompt = o.prompt;
  po.n_tokens = o.n_tokens;
  try {
    ProfileRun r = run_profile(po);
    const double s = score(r);
    if (t.runs == 0 || s < t.s_per_token) {
      t.s_per_token = s;
      t.summary = r.summary;
    }
    t.slots_used = r.slot_count;
    ++t.runs;
    return s;
  } catch (const Error& e) {  // a knob this machine refuses: skip the candidate
    t.error = e.what();
    return -1;
  }
}

bool better(const Trial& a, const Trial& b) {
  return a.error.empty() && a.runs > 0 && (b.runs == 0 || a.s_per_token < b.s_per_token);
}

}  // namespace

TuneResult tune(const TuneOptions& o, const TrialCallback& on_trial) {
  FERRY_EXPECT(o.trials >= 1, "--trials must be at least 1 (the default policy is trial 1); got {}",
               o.trials);
  TuneResult result;
  const int total = o.trials;
  int done = 0;
  const auto run = [&](const Policy& p) -> Trial& {
    Trial t;
    t.policy = p;
    measure(o, t);
    result.trials.push_back(std::move(t));
    ++done;
    if (on_trial) on_trial(done, total, result.trials.back());
    return result.trials.back();
  };

  const Trial baseline = run(default_policy());
  FERRY_EXPECT(baseline.error.empty(), "the default policy does not run: {}", baseline.error);
  Trial best = baseline;

  // Each knob in turn, from the best so far: the slot count first (it decides how far reads run
  // ahead), then the engine, the queue depth and the chunk size.
  using Mutation = Policy (*)(Policy, uint64_t);
  struct Knob {
    Mutation set;
    std::vector<uint64_t> values;
  };
  const std::vector<Knob> knobs = {
      {[](Policy p, uint64_t v) {
         p.slot_count = static_cast<std::size_t>(v);
         return p;
       },
       {4, 2, 3, 6}},
      {[](Policy p, uint64_t v) {
         p.io_backend = static_cast<offload::IoBackendKind>(v);
         return p;
       },
       {static_cast<uint64_t>(offload::IoBackendKind::pread),
        static_cast<uint64_t>(offload::IoBackendKind::uring)}},
      {[](Policy p, uint64_t v) {
         p.queue_depth = static_cast<uint32_t>(v);
         return p;
       },
       {32, 4, 64, 8}},
      {[](Policy p, uint64_t v) {
         p.chunk_bytes = v;
         return p;
       },
       {4ULL << 20, 256ULL << 10, 2ULL << 20, 512ULL << 10}},
  };
  std::size_t slots_refused = std::numeric_limits<std::size_t>::max();
  for (const Knob& knob : knobs) {
    const Policy from = best.policy;
    for (uint64_t v : knob.values) {
      if (done >= total) break;
      const Policy p = knob.set(from, v);
      if (p.same_knobs(from)) continue;
      // The planner's slot count under this budget is what the baseline used; more slots than
      // a count the budget refused are refused too.
      if (p.slot_count && !from.slot_count && *p.slot_count == baseline.slots_used) continue;
      if (p.slot_count && *p.slot_count >= slots_refused && p.slot_count != from.slot_count)
        continue;
      if (p.io_backend == offload::IoBackendKind::uring &&
          from.io_backend == offload::IoBackendKind::automatic)
        continue;  // auto is io_uring where the kernel allows it
      const Trial& t = run(p);
      if (!t.error.empty() && p.slot_count != from.slot_count)
        slots_refused = std::min(slots_refused, *p.slot_count);
      if (better(t, best)) best = t;
    }
  }

  // The default and the winner again, in alternating pairs: the winner stays only if it beats
  // the default of its own pair every time, so tuning never makes the run slower. The speedup is
  // the smallest of the pairs' ratios.
  Trial base = baseline;
  result.speedup = 1;
  if (!best.policy.same_knobs(baseline.policy)) {
    double worst_ratio = std::numeric_limits<double>::max();
    for (int round = 0; round < kConfirmRounds; ++round) {
      const double b = measure(o, base);
      const double w = measure(o, best);
      worst_ratio = w > 0 && b > 0 ? std::min(worst_ratio, b / w) : 0;
    }
    if (worst_ratio > 1) {
      result.speedup = worst_ratio;
    } else {
      best = base;
    }
  }
  result.baseline = base;
  result.winner = best;

  Policy p = best.policy;
  const Summary& s = best.summary;
  p.measured = {{"disk_read_gbps", s.links.empty() ? 0.0 : s.links[0].achieved_gbps},
                {"disk_read_busy_share", s.links.empty() ? 0.0 : s.links[0].busy_share},
                {"compute_s_per_token", s.decode.compute_s_per_pass},
                {"decode_s_per_token", best.s_per_token},
                {"default_decode_s_per_token", base.s_per_token},
                {"speedup_over_default", result.speedup},
                {"streamed_bytes_per_token", s.streamed_bytes_per_pass},
                {"slots_used", best.slots_used},
                {"trials", done},
                {"n_tokens", o.n_tokens},
                {"max_ram_bytes", o.load.max_ram_bytes ? *o.load.max_ram_bytes : 0},
                {"model", o.model_dir.string()}};
  result.best = p;
  return result;
}

}  // namespace ferry::profile
