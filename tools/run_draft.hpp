// ferry run --draft lookup|self-int4|self-int8|PATH [--draft-k K]: speculative decoding
// (runtime/engine/speculative.hpp) — the flags, the drafter they name, opened beside the target
// within the same --max-ram, and the acceptance line printed at the end.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "planner/plan.hpp"
#include "runtime/engine/drafts.hpp"
#include "runtime/engine/planning.hpp"
#include "runtime/engine/scheduler.hpp"
#include "runtime/engine/speculative.hpp"
#include "runtime/session/session.hpp"

namespace ferry::tools {

struct DraftFlags {
  std::string draft;  // empty: no speculation
  int k = 0;          // 0: chosen from the plan (kAutoMaxK at most), else kDefaultDraftK
};
inline constexpr int kDefaultDraftK = 4;  // without a plan to choose by
inline constexpr int kAutoMaxK = 8;

void add_draft_options(CLI::App* cmd, DraftFlags& flags);

// The target planned without the draft: the draft's resident bytes given back to it, so more of
// its layers may stay resident. Speculation pays only when it beats this, not just k 0 with the
// draft loaded (which is always slower).
struct AlonePlan {
  double s_per_token = 0;
  std::size_t resident_units = 0;
  std::size_t units = 0;
};
// None when the draft keeps nothing resident (lookup) or the plan cannot be made.
std::optional<AlonePlan> plan_without_draft(const planner::Plan& target,
                                            uint64_t draft_resident_bytes);

// The lines that show speculation's trade: the acceptance rate and its source, then the predicted
// tokens per pass and s/token for each k, the one used marked, then the target alone when a
// draft model takes part of its budget (and a plain word when alone is predicted faster).
std::vector<std::string> speculation_lines(const engine::Acceptance& acceptance,
                                           const std::vector<engine::SpeculationChoice>& choices,
                                           int k_used,
                                           const std::optional<AlonePlan>& alone = std::nullopt);

// The drafter's figures for a target plan: a draft's weights and KV cache stay resident (taken
// from the target's budget), and each drafted token costs its predicted s/token.
uint64_t draft_resident_bytes(const planner::Plan& draft_plan);

// ferry plan --draft: the draft planned on the same machine (a self pack in its format, a draft
// model from its files; nothing for lookup), and the speculation trade against the target plan.
struct DraftPlan {
  engine::DraftSpec spec;
  std::optional<planner::Plan> plan;  // none for lookup
  uint64_t resident_bytes = 0;
};
DraftPlan plan_draft(const engine::DraftSpec& spec, const model::ModelConfig& target_config,
                     const offload::Checkpoint* target_checkpoint, const planner::Machine& machine,
                     const engine::PlanOptions& options, const std::string& target_model);
// The lines `ferry plan --draft` prints under the plan; k 0: chosen. `choice` receives the k.
std::vector<std::string> plan_speculation(const DraftPlan& draft, const planner::Plan& target,
                                          const std::string& target_model, int k,
                                          engine::SpeculationChoice* choice = nullptr);

class DraftRun {
 public:
  // Opens what --draft names before the target's session: a self pack is converted into the
  // cache once; a draft model is loaded resident, with a cache slot per target sequence
  // (target.max_seqs), and its bytes come out of the target's --max-ram
  // (target.load.max_ram_bytes). Sizes the target's passes for every sequence's k + 1 rows.
  DraftRun(const DraftFlags& flags, session::SessionOptions& target, bool quiet);
  ~DraftRun();
  DraftRun(const DraftRun&) = delete;
  DraftRun& operator=(const DraftRun&) = delete;

  // After the target opened: a draft model must share its tokenizer (refused naming the first
  // token that differs); without --draft-k, k is chosen from the plans (0: no speculation).
  void check_against(const session::Session& target);
  // The trade the choice of k weighed: predicted s/token per k.
  std::vector<std::string> explain() const;
  // describe() and explain(), for the plan lines on stderr.
  std::vector<std::string> plan_lines() const;

  // generate() with the drafter: the same tokens, `stats` filled as generate() fills them
  // (decode_steps counts tokens, not passes) and the speculative counters kept for stats_line().
  std::vector<int32_t> generate(engine::ForwardPass& target, std::span<const int32_t> prompt,
                                const engine::GenerateOptions& options,
                                const engine::TokenCallback& on_token,
                                engine::GenerateStats& stats);

  engine::Drafter& drafter() { return *drafter_; }
  // For the scheduler (run --prompts, serve): draft_k (0: none pays off) and the drafters —
  // lookup per slot, or the draft model drafting for every sequence at once on its slots.
  engine::SchedulerOptions speculation();
  int k() const { return k_; }
  // Records a batched run's acceptance rate for the next plans (as generate() does).
  void learn(double acceptance);
  engine::SpeculativeOptions options() const { return {k_}; }
  // What was opened, for the plan lines ("draft: self-int4, 38 MiB resident, k 4").
  std::string describe() const;
  // The acceptance line printed at the end of the run.
  std::string stats_line() const;

 private:
  engine::DraftSpec spec_;
  int k_ = kDefaultDraftK;
  bool auto_k_ = false;
  std::filesystem::path target_path_;
  engine::Acceptance acceptance_;
  std::vector<engine::SpeculationChoice> predictions_;
  std::optional<AlonePlan> alone_;
  std::filesystem::path draft_path_;
  std::unique_ptr<session::Session> session_;  // a draft model's, else null
  std::unique_ptr<engine::Drafter> drafter_;
  uint64_t resident_bytes_ = 0;
  engine::SpeculativeStats stats_;
};

}  // namespace ferry::tools
