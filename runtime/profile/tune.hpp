// tune: measures instead of predicting. Short profiled generations under the budget, one per
// candidate policy — staging slots, I/O engine, queue depth, chunk size, each varied in turn
// from the best so far (coordinate descent) — within a bounded number of trials; the winner is
// then run in alternating pairs with the default and kept only if it wins every pair, so a
// tuned policy is never slower than the default on the run it was tuned for.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "runtime/engine/loaded_model.hpp"
#include "runtime/profile/policy.hpp"
#include "runtime/profile/summary.hpp"

namespace ferry::profile {

struct TuneOptions {
  std::filesystem::path model_dir;
  engine::LoadOptions load;  // the budget (max_ram_bytes); I/O and slots come from each policy
  std::vector<int32_t> prompt;
  int64_t n_tokens = 8;  // per trial
  int trials = 12;       // candidate runs, the default's included; 2 pairs more confirm a winner
};

struct Trial {
  Policy policy;
  std::size_t slots_used = 0;  // what the planner granted (a budget may allow fewer)
  double s_per_token = 0;      // decode (prompt pass when nothing is decoded); best of its runs
  int runs = 0;
  std::string error;  // a candidate that failed (e.g. an engine refused); it is skipped
  Summary summary;    // of its best run
};

struct TuneResult {
  Policy best;                // with `measured` filled
  Trial baseline;             // the default policy
  Trial winner;               // the chosen one (the baseline when nothing beat it)
  std::vector<Trial> trials;  // in the order run
  double speedup = 1;         // default ÷ winner s/token, the least of the confirming pairs
};

// `on_trial(done, total, trial)` after each run, for progress.
using TrialCallback = std::function<void(int done, int total, const Trial& trial)>;

TuneResult tune(const TuneOptions& options, const TrialCallback& on_trial = {});

}  // namespace ferry::profile
