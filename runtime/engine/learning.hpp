// What a finished run teaches the planner: the rates it achieved (the disk's while streaming,
// the CPU's or the GPU's per weight byte while decoding), fed back into the probe cache so the
// next plan predicts from them, and the lines that compare them with the plan. `ferry run`,
// `ferry profile` and `ferry tune` share it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "runtime/engine/backend.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/loaded_model.hpp"

namespace ferry::engine {

// What a generation measured.
struct RunOutcome {
  GenerateStats stats;
  // stall_s(backend) when the prompt pass ended (read at the first token), so that decoding's
  // waits on the disk are told apart from the prompt's.
  double prompt_stall_s = 0;
  // The decode passes' compute seconds, when known better than their wall time less the
  // streamer's waits (a trace's spans); 0: not known, nothing learned about compute.
  std::optional<double> decode_compute_s;
  std::string how = "ferry run";  // who measured, for the probe cache's entries
};

// The host streamer's waits so far, in seconds (0 when nothing streams through one).
double stall_s(const Backend& backend);

// Learns from a run of m on backend and returns the lines that say what it found (no "ferry: "
// prefix): the plan's prediction against the measured s/token and peak RSS; the compute rate
// achieved (the CPU's; a GPU's only with every unit in VRAM and the decode not launch-bound);
// the disk's delivered rate when units streamed — each beside the plan's figure and the one the
// next plans use. Nothing when the placement was forced (no plan).
std::vector<std::string> learn_from_run(const LoadedModel& m, const Backend& backend,
                                        const RunOutcome& run);

}  // namespace ferry::engine
