#include "tools/run_draft.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "offload/checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/model_files.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace fs = std::filesystem;

std::optional<AlonePlan> plan_without_draft(const planner::Plan& target,
                                            uint64_t draft_resident_bytes) {
  if (draft_resident_bytes == 0) return std::nullopt;
  planner::PlanRequest request = target.request;
  request.machine.ram_bytes.value += static_cast<double>(draft_resident_bytes);
  try {
    const planner::Plan alone = planner::make_plan(request);
    AlonePlan a;
    a.s_per_token = alone.chosen.predicted.s_per_token;
    a.units = alone.request.units.size();
    a.resident_units = a.units - std::min(a.units, alone.chosen.count(offload::Tier::disk));
    return a;
  } catch (const std::exception&) {
    return std::nullopt;  // the comparison is advice; a plan that cannot be made gives none
  }
}

std::vector<std::string> speculation_lines(const engine::Acceptance& acceptance,
                                           const std::vector<engine::SpeculationChoice>& choices,
                                           int k_used, const std::optional<AlonePlan>& alone) {
  std::vector<std::string> lines;
  if (choices.empty()) return lines;
  lines.push_back(fmt::format(
      "speculation: acceptance {:.2f} ({}); predicted per k:", acceptance.rate, acceptance.source));
  double best = choices.front().s_per_token;
  for (const engine::SpeculationChoice& c : choices) {
    lines.push_back(fmt::format("  k {}: {:.2f} tokens per target pass, {:.4f} s/token{}", c.k,
                                c.tokens_per_pass, c.s_per_token,
                                c.k == k_used ? "  <- used" : ""));
    best = std::min(best, c.s_per_token);
  }
  if (alone) {
    lines.push_back(fmt::format(
        "  without the draft: {:.4f} s/token, {} of {} units resident with the draft's memory "
        "given back",
        alone->s_per_token, alone->resident_units, alone->units));
    if (alone->s_per_token <= best)
      lines.push_back(fmt::format(
          "  speculation does not pay here: decoding without --draft is predicted faster "
          "({:.4f} against {:.4f} s/token at best); a smaller draft, --draft lookup or more "
          "--max-ram may change that",
          alone->s_per_token, best));
  }
  return lines;
}

uint64_t draft_resident_bytes(const planner::Plan& p) {
  uint64_t bytes = p.request.kv_bytes;
  for (const auto& u : p.request.units) bytes += u.bytes;
  return bytes;
}

namespace {

engine::SpeculationCosts costs_of(const planner::Plan& target, const planner::Plan* draft,
                                  double acceptance) {
  const planner::Prediction& p = target.chosen.predicted;
  engine::SpeculationCosts c;
  c.disk_s = p.disk_s;
  c.h2d_s = p.h2d_s;
  c.compute_s = p.compute_s;
  if (draft) c.draft_s_per_token = draft->chosen.predicted.s_per_token;
  c.acceptance = acceptance;
  return c;
}

}  // namespace

DraftPlan plan_draft(const engine::DraftSpec& spec, const model::ModelConfig& target_config,
                     const offload::Checkpoint* target_checkpoint, const planner::Machine& machine,
                     const engine::PlanOptions& options, const std::string& target_model) {
  DraftPlan d;
  d.spec = spec;
  if (spec.kind == engine::DraftSpec::Kind::lookup) return d;
  engine::PlanOptions po = options;
  po.max_seqs = 1;
  po.max_logit_rows = 1;
  if (spec.kind == engine::DraftSpec::Kind::self) {
    po.format = model::WeightFormat::parse(spec.quant);
    d.plan = planner::make_plan(engine::plan_request(target_config, target_checkpoint, machine, po,
                                                     target_model + " (" + spec.describe() + ")"));
  } else {
    const auto config = engine::read_model_config(spec.path);
    const auto gguf = engine::gguf_model_file(spec.path);
    const auto ck = offload::Checkpoint::open(gguf.value_or(spec.path));
    po.format.reset();
    d.plan = planner::make_plan(
        engine::plan_request(config, &ck, machine, po, spec.path.string() + " (draft)"));
  }
  FERRY_EXPECT(d.plan->chosen.count(offload::Tier::disk) == 0,
               "the draft {} does not fit in RAM ({}; its KV cache for {} tokens takes {}); a "
               "streamed draft costs more than it saves — raise --max-ram, plan a shorter "
               "context (--ctx: ferry run sizes it for the prompt and the new tokens), use a "
               "smaller draft, or --draft lookup",
               spec.describe(), d.plan->summary(), d.plan->request.context,
               format_bytes(d.plan->request.kv_bytes));
  d.resident_bytes = draft_resident_bytes(*d.plan);
  return d;
}

std::vector<std::string> plan_speculation(const DraftPlan& draft, const planner::Plan& target,
                                          const std::string& target_model, int k,
                                          engine::SpeculationChoice* choice) {
  const engine::Acceptance a = engine::planned_acceptance(target_model, draft.spec);
  const auto choices = engine::predict_speculation(
      costs_of(target, draft.plan ? &*draft.plan : nullptr, a.rate), k > 0 ? k : kAutoMaxK);
  const engine::SpeculationChoice used = k > 0 ? choices.back() : engine::best_speculation(choices);
  if (choice) *choice = used;
  // Decoding alone means without the draft's resident bytes taken from the budget.
  const std::optional<AlonePlan> alone = plan_without_draft(target, draft.resident_bytes);
  const double alone_s = alone ? alone->s_per_token : choices.front().s_per_token;
  std::vector<std::string> lines;
  lines.push_back(fmt::format(
      "draft: {}{}; {}", draft.spec.describe(),
      draft.plan ? fmt::format(", {} resident (weights and KV, out of the budget), {:.4f} s per "
                               "drafted token",
                               format_bytes(draft.resident_bytes),
                               draft.plan->chosen.predicted.s_per_token)
                 : std::string(", no model"),
      used.k == 0 ? fmt::format("no speculation pays off: {:.4f} s/token alone", alone_s)
                  : fmt::format("k {}: {:.4f} s/token, {:.2f} tokens per pass ({:.2f}x "
                                "decoding alone)",
                                used.k, used.s_per_token, used.tokens_per_pass,
                                alone_s / used.s_per_token)));
  for (std::string& l : speculation_lines(a, choices, used.k, alone)) lines.push_back(std::move(l));
  return lines;
}

void add_draft_options(CLI::App* cmd, DraftFlags& flags) {
  cmd->add_option("--draft", flags.draft,
                  "speculative decoding: draft with lookup (n-grams of the text so far), "
                  "self-int4 / self-int8 (a pack of this model, converted once into ferry's "
                  "cache, kept resident), or the PATH of a smaller model sharing the tokenizer; "
                  "the output is the same as without");
  cmd->add_option("--draft-k", flags.k,
                  fmt::format("tokens drafted per target pass (default {})", kDefaultDraftK))
      ->check(whole_number(1, engine::SpeculativeOptions::kMaxK));
}

DraftRun::DraftRun(const DraftFlags& flags, session::SessionOptions& target, bool quiet)
    : spec_(engine::DraftSpec::parse(flags.draft)),
      k_(flags.k > 0 ? flags.k : kAutoMaxK),
      auto_k_(flags.k == 0),
      target_path_(target.model) {
  engine::SpeculativeOptions{k_}.validate();
  // The target scores each sequence's last token and k drafts in one pass (beside the prompt
  // chunks of a batch).
  if (target.max_seqs > 1) {
    target.max_batch_rows += int64_t{target.max_seqs} * k_;
  } else {
    target.max_batch_rows = std::max<int64_t>(target.max_batch_rows, k_ + 1);
  }
  target.max_logit_rows =
      std::max<int64_t>(target.max_logit_rows, int64_t{target.max_seqs} * (k_ + 1));
  if (spec_.kind == engine::DraftSpec::Kind::lookup) {
    drafter_ = std::make_unique<engine::LookupDrafter>();
    return;
  }
  draft_path_ = spec_.path;
  if (spec_.kind == engine::DraftSpec::Kind::self) {
    draft_path_ = engine::ensure_self_draft(target.model, spec_.quant, engine::drafts_cache_dir(),
                                            [&](const fs::path& dir) {
                                              if (!quiet)
                                                eprint(
                                                    "ferry: converting the {} draft into {} "
                                                    "(once; later runs reuse it)\n",
                                                    spec_.quant, dir.string());
                                            });
  }
  // The draft model: resident, on the target's device, sized like the target's run.
  const auto config = engine::read_model_config(draft_path_);
  session::SessionOptions d;
  d.model = draft_path_;
  d.device = target.device;
  d.load = target.load;
  d.load.plan.reset();
  d.load.placement.reset();
  d.load.max_ram_source = target.load.max_ram_source + " (the draft's share)";
  d.max_vram_bytes = target.max_vram_bytes;
  d.mmap = target.mmap;
  d.context = std::min<int64_t>(model::max_context(config), target.context + k_);
  d.max_batch_rows = std::max<int64_t>(target.max_batch_rows, 1);
  d.max_logit_rows = 1;
  d.max_seqs = target.max_seqs;  // one cache slot per target sequence
  session_ = std::make_unique<session::Session>(std::move(d));
  const engine::LoadedModel& m = session_->model();
  if (m.plan) {
    FERRY_EXPECT(m.plan->chosen.count(offload::Tier::disk) == 0,
                 "the draft {} does not fit in RAM beside the target ({}); a streamed draft "
                 "costs more than it saves — raise --max-ram, use a smaller draft, or "
                 "--draft lookup",
                 spec_.describe(), m.plan->summary());
    resident_bytes_ = draft_resident_bytes(*m.plan);
  }
  // The draft's resident bytes come out of the target's budget (without --max-ram the target
  // plans for the memory the machine still has free, the draft's already taken).
  if (target.load.max_ram_bytes) {
    FERRY_EXPECT(resident_bytes_ < *target.load.max_ram_bytes,
                 "the draft {} keeps {} resident, all of --max-ram {}; raise --max-ram or use "
                 "--draft lookup",
                 spec_.describe(), format_bytes(resident_bytes_),
                 format_bytes(*target.load.max_ram_bytes));
    *target.load.max_ram_bytes -= resident_bytes_;
    target.load.max_ram_source =
        fmt::format("{} less the draft's {} resident", target.load.max_ram_source,
                    format_bytes(resident_bytes_));
  }
  drafter_ = std::make_unique<engine::ModelDrafter>(session_->engine(), spec_.describe(), 0,
                                                    resident_bytes_);
}

DraftRun::~DraftRun() = default;

engine::SchedulerOptions DraftRun::speculation() {
  engine::SchedulerOptions so;
  so.draft_k = k_;
  if (k_ == 0) return so;
  if (session_) {
    so.batch_drafter = std::make_shared<engine::BatchModelDrafter>(
        session_->engine(), spec_.describe(), resident_bytes_);
  } else {
    so.make_drafter = [](int) -> std::unique_ptr<engine::Drafter> {
      return std::make_unique<engine::LookupDrafter>();
    };
  }
  return so;
}

void DraftRun::learn(double acceptance) {
  engine::learn_acceptance(target_path_, spec_, acceptance);
}

void DraftRun::check_against(const session::Session& target) {
  // The trade: the plan's figures for one target pass and one draft token.
  acceptance_ = engine::planned_acceptance(target_path_, spec_);
  const engine::LoadedModel& m = target.model();
  if (m.plan) {
    const planner::Plan* draft_plan =
        session_ && session_->model().plan ? &*session_->model().plan : nullptr;
    predictions_ = engine::predict_speculation(costs_of(*m.plan, draft_plan, acceptance_.rate),
                                               auto_k_ ? kAutoMaxK : k_);
    alone_ = plan_without_draft(*m.plan, resident_bytes_);
    if (auto_k_) k_ = engine::best_speculation(predictions_).k;
  } else if (auto_k_) {
    k_ = kDefaultDraftK;
  }
  if (!session_) return;
  const int64_t tv = target.config().vocab_size;
  const int64_t dv = session_->config().vocab_size;
  const text::Tokenizer* a = target.tokenizer();
  const text::Tokenizer* b = session_->tokenizer();
  if (a && b) {
    engine::check_same_vocabulary(*a, *b, draft_path_.string());
    return;
  }
  // Without both tokenizers, the ids must at least mean the same number of tokens.
  FERRY_EXPECT(tv == dv,
               "the draft model {} has a vocabulary of {} tokens but the target's has {}; a draft "
               "model must share the target's tokenizer (use --draft lookup or self-int4 instead)",
               draft_path_.string(), dv, tv);
}

std::string DraftRun::describe() const {
  const std::string k = k_ == 0 ? std::string("k 0: no speculation pays off, decoding alone")
                                : fmt::format("k {}{}", k_, auto_k_ ? " (chosen)" : "");
  if (!session_) return fmt::format("draft: {}, {}", spec_.describe(), k);
  return fmt::format("draft: {} ({}), {} resident, {}", spec_.describe(), draft_path_.string(),
                     format_bytes(resident_bytes_), k);
}

std::vector<std::string> DraftRun::explain() const {
  return speculation_lines(acceptance_, predictions_, k_, alone_);
}

std::vector<std::string> DraftRun::plan_lines() const {
  std::vector<std::string> lines{describe()};
  for (std::string& l : explain()) lines.push_back(std::move(l));
  return lines;
}

std::vector<int32_t> DraftRun::generate(engine::ForwardPass& target,
                                        std::span<const int32_t> prompt,
                                        const engine::GenerateOptions& go,
                                        const engine::TokenCallback& on_token,
                                        engine::GenerateStats& stats) {
  if (k_ == 0) return engine::generate(target, 0, prompt, go, on_token, &stats);
  auto out =
      engine::generate_speculative(target, *drafter_, 0, prompt, go, options(), on_token, &stats_);
  if (stats_.accepted + stats_.rejected > 0)
    engine::learn_acceptance(target_path_, spec_, stats_.acceptance());
  stats.prompt_tokens = static_cast<int64_t>(prompt.size());
  stats.prompt_s = stats_.prompt_s;
  stats.new_tokens = stats_.new_tokens;
  stats.decode_steps = std::max<int64_t>(stats_.new_tokens - 1, 0);
  stats.decode_s = stats_.draft_s + stats_.verify_s;
  return out;
}

std::string DraftRun::stats_line() const {
  const engine::SpeculativeStats& s = stats_;
  if (k_ == 0)
    return fmt::format("speculative ({}): not used, k 0 predicted fastest", spec_.describe());
  return fmt::format(
      "speculative ({}, k {}): {} target passes after the prompt, {} of {} drafts judged were "
      "accepted ({:.1f}%; {} drafted), {:.2f} tokens per pass; drafting {:.3f} s, verifying "
      "{:.3f} s",
      spec_.describe(), k_, s.rounds, s.accepted, s.accepted + s.rejected, 100.0 * s.acceptance(),
      s.drafted, s.tokens_per_pass(), s.draft_s, s.verify_s);
}

}  // namespace ferry::tools
