// ferry plan: will the model fit, how fast will it run, and what to change if it does not —
// answered before loading, from config.json alone (weights, when present, give exact sizes).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "offload/checkpoint.hpp"
#include "planner/machine.hpp"
#include "planner/plan.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/core/json_parse.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/planning.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/model/weight_format.hpp"
#include "runtime/session/plan.hpp"
#include "tools/commands.hpp"
#include "tools/run_draft.hpp"

namespace ferry::tools {

namespace fs = std::filesystem;

namespace {

// "2.5GB/s", "500MB/s", "2.5e9" → bytes per second.
double parse_rate(std::string text, const char* flag) {
  if (text.size() > 2 && text.substr(text.size() - 2) == "/s") text.resize(text.size() - 2);
  try {
    const uint64_t v = parse_size(text);
    FERRY_EXPECT(v > 0, "zero");
    return static_cast<double>(v);
  } catch (const Error&) {
    throw InvalidArgument(
        fmt::format("{} '{}' is not a rate; write it like 2.5GB/s, 500MB/s or 12e9", flag, text));
  }
}

struct PlanFlags {
  std::string model;
  std::string profile;
  std::string device;
  std::string max_ram;
  std::string max_vram;
  std::string disk_bw;
  std::string cpu_bw;
  std::string h2d_bw;
  std::string gpu_bw;
  std::string dtype;
  std::string quant;
  std::string kv_memory;
  double goal = 0;
  std::string out;
  int64_t ctx = 0;
  int batch = 1;
  std::size_t slots = 0;
  bool json = false;
  bool explain = false;
  bool no_measure = false;
  bool reprobe = false;
  DraftFlags draft;  // --draft, --draft-k: plan speculative decoding beside the target
};

// One format `ferry plan --quant` considered: its plan, or why it does not fit.
struct QuantCandidate {
  QuantCandidate(std::optional<model::WeightFormat> f, std::string n)
      : format(f), name(std::move(n)) {}
  std::optional<model::WeightFormat> format;  // none: the checkpoint as stored
  std::string name;
  uint64_t weight_bytes = 0;
  std::optional<planner::Plan> plan;
  std::string refusal;
  planner::Machine machine;  // the machine as this format's products run on it
  bool whole_batch = true;   // false: --batch does not fit; the plan is for one sequence
};

// --quant auto: the least compression that fits and meets the goal (s/token; 0: none). When
// nothing meets the goal, the fastest that fits; when nothing fits, the most compressed
// candidate's refusal is thrown (it names the smallest budget).
std::size_t choose_quant(const std::vector<QuantCandidate>& c, double goal, std::string& why) {
  std::optional<std::size_t> fastest;
  std::vector<std::string> passed;
  for (std::size_t i = 0; i < c.size(); ++i) {
    if (!c[i].plan) {
      passed.push_back(fmt::format("{} does not fit", c[i].name));
      continue;
    }
    const double s = c[i].plan->chosen.predicted.s_per_token;
    if (!fastest || s < c[*fastest].plan->chosen.predicted.s_per_token) fastest = i;
    if (goal <= 0 || s <= goal) {
      why = passed.empty() ? fmt::format("{} is the least compression and fits{}", c[i].name,
                                         goal > 0 ? fmt::format(" within {} s/token", goal) : "")
                           : fmt::format("{}; {} is the least compression that fits{}",
                                         fmt::join(passed, ", "), c[i].name,
                                         goal > 0 ? fmt::format(" within {} s/token", goal) : "");
      return i;
    }
    passed.push_back(fmt::format("{} fits but takes {:.3g} s/token", c[i].name, s));
  }
  if (!fastest) throw PlanError(c.back().refusal);
  why = fmt::format("no format meets the goal of {} s/token ({}); {} is the fastest that fits",
                    goal, fmt::join(passed, ", "), c[*fastest].name);
  return *fastest;
}

}  // namespace

planner::Plan read_plan_file(const std::string& path) {
  const nlohmann::json j =
      read_json_file(path, "write plans with `ferry plan --json -o FILE`", uint64_t{64} << 20);
  try {
    return planner::plan_from_json(j);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(fmt::format("{}: {}", path, e.what()));
  }
}

Command add_plan(CLI::App& app) {
  auto o = std::make_shared<PlanFlags>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "predict memory and speed before loading, and choose where every layer lives");
  cmd->add_option("-m,--model", o->model,
                  "model directory (config.json; weights optional), a config.json, or a GGUF "
                  "file")
      ->required();
  cmd->add_option("--profile", o->profile,
                  "plan for a named machine instead of this one: colab-t4, colab-cpu, "
                  "kaggle-p100, laptop-8g, or a JSON file of the same shape");
  cmd->add_option("--device", o->device, "cpu | cuda (default: cuda when the machine has a GPU)");
  cmd->add_option("--max-ram", o->max_ram, "host RAM ferry may use, e.g. 8GiB")
      ->envname("FERRY_MAX_RAM");
  cmd->add_option("--max-vram", o->max_vram, "VRAM ferry may use, e.g. 6GiB");
  cmd->add_option("--disk-bw", o->disk_bw, "disk read rate, e.g. 0.47GB/s (default: measured)");
  cmd->add_option("--cpu-bw", o->cpu_bw, "CPU mat-vec rate in weight bytes/s (default: measured)");
  cmd->add_option("--h2d-bw", o->h2d_bw, "host → GPU copy rate, e.g. 12.9GB/s");
  cmd->add_option("--gpu-bw", o->gpu_bw, "GPU mat-vec rate in weight bytes/s, e.g. 240GB/s");
  cmd->add_option("--dtype", o->dtype,
                  "weight dtype when there are no weights to read (default: config.json's)");
  cmd->add_option("--quant", o->quant,
                  "plan for a ferry pack: f16 | int8 | int4 | int4-g128, or auto: the least "
                  "compression that fits (and meets --goal)");
  cmd->add_option("--goal", o->goal, "with --quant auto: the s/token the choice must reach")
      ->check(positive_number());
  cmd->add_option("--ctx", o->ctx,
                  "KV cache tokens per sequence (default: the model's context, at most 4096)")
      ->check(whole_number(1, int64_t{1} << 24));
  cmd->add_option("--batch", o->batch, "sequences decoded together")
      ->check(whole_number(1, int64_t{1} << 16));
  add_kv_memory_option(cmd, o->kv_memory);
  cmd->add_option("--slots", o->slots, "fix the host staging slot count (default: searched)")
      ->check(CLI::Range(2, 64));
  cmd->add_flag("--json", o->json, "print the plan as JSON");
  cmd->add_option("-o,--output", o->out, "also write the plan as JSON to FILE (for run --plan)");
  cmd->add_flag("--explain", o->explain, "compare the chosen plan with the next best two");
  cmd->add_flag("--no-measure", o->no_measure,
                "never measure this machine: use cached figures or defaults");
  cmd->add_flag("--reprobe", o->reprobe, "measure the disk and CPU again, ignoring the cache");
  add_draft_options(cmd, o->draft);
  return [o] {
    const fs::path model_path(o->model);
    // The model, the machine and the plan's shape as the library makes them (ferry.plan in
    // Python makes them the same way); the flags below adjust them.
    const session::PlanSource source = session::open_plan_source(model_path, o->dtype);
    const model::ModelConfig& config = source.config;
    const fs::path& dir = source.dir;
    const offload::Checkpoint* ck = source.weights();

    session::MachineQuery mq;
    mq.profile = o->profile;
    mq.device = o->device;
    mq.measure = !o->no_measure;
    mq.reprobe = o->reprobe;
    mq.batch_rows = o->batch > 1;
    if (!o->max_ram.empty()) mq.max_ram_bytes = parse_size(o->max_ram);
    planner::Machine machine = session::plan_machine(source, mq);
    if (!o->disk_bw.empty())
      machine.disk_bytes_per_s = {parse_rate(o->disk_bw, "--disk-bw"), "--disk-bw"};
    if (!o->cpu_bw.empty())
      machine.cpu_compute_bytes_per_s = {parse_rate(o->cpu_bw, "--cpu-bw"), "--cpu-bw"};
    const bool gpu_flags = !o->max_vram.empty() || !o->h2d_bw.empty() || !o->gpu_bw.empty();
    if (gpu_flags && !machine.gpu) {
      // A what-if GPU on a machine without one: T4-class figures unless the flags say otherwise.
      machine.gpu = session::what_if_gpu();
    }
    if (!o->max_vram.empty())
      machine.gpu->vram_bytes = {static_cast<double>(parse_size(o->max_vram)), "--max-vram"};
    if (!o->h2d_bw.empty())
      machine.gpu->h2d_bytes_per_s = {parse_rate(o->h2d_bw, "--h2d-bw"), "--h2d-bw"};
    if (!o->gpu_bw.empty())
      machine.gpu->compute_bytes_per_s = {parse_rate(o->gpu_bw, "--gpu-bw"), "--gpu-bw"};

    engine::PlanOptions po = session::plan_options(config, o->ctx, o->batch, o->device, machine);
    po.forced_host_slots = o->slots;
    po.kv_memory = parse_kv_memory_flag(o->kv_memory, o->device);
    // A draft stays resident: its weights and KV cache come out of the target's budget.
    FERRY_EXPECT(o->draft.k == 0 || !o->draft.draft.empty(),
                 "--draft-k needs --draft (lookup, self-int4, self-int8 or a model path)");
    std::optional<DraftPlan> draft;
    if (!o->draft.draft.empty()) {
      draft =
          plan_draft(engine::DraftSpec::parse(o->draft.draft), config, ck, machine, po, o->model);
      const auto left = machine.ram_bytes.value - static_cast<double>(draft->resident_bytes);
      FERRY_EXPECT(left > 0,
                   "the draft {} keeps {} resident, all of the RAM budget ({}); raise --max-ram "
                   "or use --draft lookup",
                   draft->spec.describe(), format_bytes(draft->resident_bytes),
                   machine.ram_bytes.source);
      machine.ram_bytes = {left, fmt::format("{} less the draft's {}", machine.ram_bytes.source,
                                             format_bytes(draft->resident_bytes))};
      po.max_logit_rows =
          std::max<int64_t>(po.max_logit_rows, (o->draft.k > 0 ? o->draft.k : kAutoMaxK) + 1);
    }
    // The formats to plan: the weights as stored, one pack format, or (auto) the weights as
    // stored and then each compression, least first.
    FERRY_EXPECT(o->goal <= 0 || o->quant == "auto",
                 "--goal chooses among formats; add --quant auto");
    std::vector<QuantCandidate> candidates;
    const DType stored = engine::weight_dtype(config, ck);
    if (o->quant.empty()) {
      candidates.emplace_back(std::nullopt, std::string(dtype_name(stored)));
    } else if (o->quant == "auto") {
      FERRY_EXPECT(is_float_weight(stored),
                   "{} is already a {} pack; --quant auto chooses the format to convert to, so "
                   "plan this one without --quant",
                   o->model, dtype_name(stored));
      candidates.emplace_back(std::nullopt, std::string(dtype_name(stored)));
      for (const char* q : {"int8", "int4"}) {
        const auto f = model::WeightFormat::parse(q);
        candidates.emplace_back(f, f.name());
      }
    } else {
      const auto f = model::WeightFormat::parse(o->quant);
      candidates.emplace_back(f, f.name());
    }
    for (auto& c : candidates) {
      engine::PlanOptions cpo = po;
      cpo.format = c.format;
      planner::Machine cm = machine;
      // A quantized mat-vec moves its bytes at its own rate: measured per format on this machine
      // (the CPU's; a GPU plan times its products with the GPU's figure).
      if (c.format && o->profile.empty() && o->cpu_bw.empty() &&
          po.backend != planner::Backend::cuda) {
        engine::ProbeOptions probe;
        probe.measure = !o->no_measure;
        probe.reprobe = o->reprobe;
        probe.n_embd = config.n_embd;
        probe.n_inner = config.n_inner;
        cm.cpu_compute_bytes_per_s = engine::cpu_compute_figure(c.format->dtype, probe);
        if (o->batch > 1)
          cm.cpu_row_bytes_per_s = engine::cpu_extra_rows_figure(c.format->dtype, probe);
      }
      const auto request = engine::plan_request(config, ck, cm, cpo, model_path.string());
      for (const auto& u : request.units) c.weight_bytes += u.bytes;
      c.machine = cm;
      try {
        c.plan = planner::make_plan(request);
      } catch (const PlanError& e) {
        if (candidates.size() == 1 && o->batch == 1) throw;
        c.refusal = e.what();
      }
    }
    // A --batch that fits no format is not the end: the sweep below shows which batches fit and
    // chooses among them. Plan one sequence per format, so a refusal means not even one fits.
    const bool any_fits = std::any_of(candidates.begin(), candidates.end(),
                                      [](const QuantCandidate& c) { return c.plan.has_value(); });
    if (!any_fits && o->batch > 1) {
      for (auto& c : candidates) {
        engine::PlanOptions one = po;
        one.format = c.format;
        one.max_seqs = 1;
        // As the sweep's first point: more rows of logits only for a draft's verification.
        one.max_logit_rows = po.max_logit_rows > po.max_seqs ? po.max_logit_rows : 1;
        try {
          c.plan = planner::make_plan(
              engine::plan_request(config, ck, c.machine, one, model_path.string()));
          c.whole_batch = false;
        } catch (const PlanError& e) {
          if (candidates.size() == 1) throw;
          c.refusal = e.what();
        }
      }
    }
    std::string why;
    const std::size_t chosen = o->quant == "auto" ? choose_quant(candidates, o->goal, why) : 0;

    // With a batch: the same plan for 1, 2, 4, … sequences up to --batch (the sweep
    // --kv-tokens auto chooses by), for the machine and format chosen above.
    std::optional<session::BatchSweep> sweep;
    if (o->batch > 1) {
      engine::PlanOptions bpo = po;
      bpo.format = candidates[chosen].format;
      sweep = session::sweep_batches(config, ck, candidates[chosen].machine, bpo, o->batch,
                                     model_path.string());
    }
    // --batch itself does not fit: the plan shown (and written for run --plan) is the sweep's
    // choice among the batches that do.
    const bool batch_fallback = !candidates[chosen].whole_batch && sweep && sweep->any_fits();
    const planner::Plan& plan = batch_fallback ? *sweep->best().plan : *candidates[chosen].plan;

    nlohmann::json j = planner::plan_to_json(plan);
    if (sweep) {
      j["batch_sweep"] = nlohmann::json::array();
      for (const auto& pt : sweep->points) {
        nlohmann::json bj = {
            {"batch", pt.seqs}, {"kv_tokens", pt.kv_tokens}, {"fits", pt.plan.has_value()}};
        if (pt.plan) {
          const auto& c = pt.plan->chosen;
          bj["tokens_per_s"] = c.predicted.tokens_per_s;
          bj["s_per_token"] = c.predicted.s_per_token;
          bj["peak_ram_bytes"] = c.predicted.peak_ram_bytes;
          bj["resident_units"] = pt.resident_units();
          bj["streamed_units"] = c.count(planner::Tier::disk);
          bj["kv_bytes"] = pt.plan->request.kv_bytes;
        } else {
          bj["refusal"] = pt.refusal;
        }
        j["batch_sweep"].push_back(bj);
      }
      j["batch_best"] = sweep->best().seqs;
      j["batch_why"] = sweep->why;
      j["batch_fits"] = candidates[chosen].whole_batch;
    }
    if (!o->quant.empty()) {
      nlohmann::json q = {{"mode", o->quant}, {"chosen", candidates[chosen].name}};
      if (o->quant == "auto") {
        q["why"] = why;
        if (o->goal > 0) q["goal_s_per_token"] = o->goal;
        q["candidates"] = nlohmann::json::array();
        for (const auto& c : candidates) {
          nlohmann::json cj = {
              {"format", c.name}, {"weight_bytes", c.weight_bytes}, {"fits", c.plan.has_value()}};
          if (c.plan) {
            cj["s_per_token"] = c.plan->chosen.predicted.s_per_token;
            cj["peak_ram_bytes"] = c.plan->chosen.predicted.peak_ram_bytes;
            cj["peak_vram_bytes"] = c.plan->chosen.predicted.peak_vram_bytes;
          } else {
            cj["refusal"] = c.refusal;
          }
          q["candidates"].push_back(cj);
        }
      }
      j["quant"] = q;
    }
    std::vector<std::string> draft_lines;
    if (draft) {
      engine::SpeculationChoice sc;
      draft_lines = plan_speculation(*draft, plan, o->model, o->draft.k, &sc);
      j["speculation"] = {{"draft", draft->spec.describe()},
                          {"resident_bytes", draft->resident_bytes},
                          {"k", sc.k},
                          {"tokens_per_pass", sc.tokens_per_pass},
                          {"s_per_token", sc.s_per_token}};
    }
    if (!o->out.empty()) {
      write_file_atomically(o->out, j.dump(2) + "\n", "the plan");
    }
    if (o->json) {
      fmt::print("{}\n", j.dump(2));
      return 0;
    }
    fmt::print("machine: {}\n", machine.name);
    for (const auto& line : planner::describe_machine(machine)) fmt::print("  {}\n", line);
    fmt::print("weights: {}\n", ck ? fmt::format("{} ({})", offload::format_name(ck->format()),
                                                 format_bytes(ck->total_bytes()))
                                   : fmt::format("none read: sizes from config.json as {}",
                                                 dtype_name(config.torch_dtype)));
    if (o->quant == "auto") {
      fmt::print("quant auto: the least compression that fits{}{}\n",
                 o->goal > 0 ? fmt::format(" and reaches {} s/token", o->goal) : "",
                 candidates[chosen].whole_batch
                     ? std::string()
                     : fmt::format(" one sequence (--batch {} fits none)", o->batch));
      for (std::size_t i = 0; i < candidates.size(); ++i) {
        const auto& c = candidates[i];
        fmt::print(
            "  {:<6} weights {:>10}  {}{}\n", c.name, format_bytes(c.weight_bytes),
            c.plan ? fmt::format(
                         "{:.3f} s/token, peak RAM {}{}", c.plan->chosen.predicted.s_per_token,
                         format_bytes(c.plan->chosen.predicted.peak_ram_bytes),
                         c.plan->request.backend == planner::Backend::cuda
                             ? fmt::format(", VRAM {}",
                                           format_bytes(c.plan->chosen.predicted.peak_vram_bytes))
                             : std::string())
                   : "does not fit: " + c.refusal.substr(0, c.refusal.find(';')),
            i == chosen ? "   <- chosen" : "");
      }
      fmt::print("  chose {}: {}\n", candidates[chosen].name, why);
      // A much faster choice the goal did not ask for: say what it would take.
      const double s_chosen = plan.chosen.predicted.s_per_token;
      for (std::size_t i = chosen + 1; i < candidates.size(); ++i)
        if (candidates[i].plan &&
            candidates[i].plan->chosen.predicted.s_per_token * 1.5 < s_chosen) {
          const double s = candidates[i].plan->chosen.predicted.s_per_token;
          fmt::print("  {} would be {:.1f}× faster ({:.3f} s/token): --goal {:.3g} chooses it\n",
                     candidates[i].name, s_chosen / s, s, s * 1.05);
          break;
        }
      if (candidates[chosen].format)
        fmt::print("  make it with: ferry convert -m {} -o {}.ferry --quant {}\n", dir.string(),
                   dir.string(), candidates[chosen].name);
    } else if (candidates[chosen].format) {
      fmt::print("quant: planned for a {} ferry pack (ferry convert --quant {})\n",
                 candidates[chosen].name, candidates[chosen].name);
    }
    fmt::print("{}", plan.table());
    if (sweep) {
      fmt::print(
          "batch sweep: each sequence's KV cache takes memory resident layers could use; "
          "each step's streamed bytes serve every sequence\n");
      fmt::print("  {:>9}  {:>9}  {:>10}  {:>8}  {:>9}  {:>8}  {:>10}\n", "sequences", "KV tokens",
                 "tokens/s", "s/token", "resident", "streamed", "peak RAM");
      const auto& pts = sweep->points;
      for (std::size_t i = 0; i < pts.size(); ++i) {
        const auto& pt = pts[i];
        if (!pt.plan) {
          fmt::print("  {:>9}  {:>9}  does not fit: {}\n", pt.seqs, pt.kv_tokens,
                     pt.refusal.substr(0, pt.refusal.find(';')));
          continue;
        }
        const auto& c = pt.plan->chosen;
        fmt::print("  {:>9}  {:>9}  {:>10.3f}  {:>8.3f}  {:>9}  {:>8}  {:>10}{}\n", pt.seqs,
                   pt.kv_tokens, c.predicted.tokens_per_s, c.predicted.s_per_token,
                   pt.resident_units(), c.count(planner::Tier::disk),
                   format_bytes(c.predicted.peak_ram_bytes),
                   i == sweep->chosen ? "   <- fastest" : "");
      }
      const auto& first = pts.front();
      const auto& best = sweep->best();
      if (first.plan && best.plan && sweep->chosen > 0)
        fmt::print("  {} sequences decode {:.1f}× the tokens/s of one{}\n", best.seqs,
                   best.tokens_per_s() / first.tokens_per_s(),
                   best.seqs < o->batch && pts.back().plan
                       ? fmt::format("; more than {} gain nothing (--batch {} is enough)",
                                     best.seqs, best.seqs)
                       : std::string());
      if (sweep->any_fits()) fmt::print("  chose: {}\n", sweep->why);
      if (!candidates[chosen].whole_batch)
        fmt::print(
            "  --batch {} does not fit; the plan above is for {} (run or serve with "
            "--max-seqs {})\n",
            o->batch, best.seqs == 1 ? "1 sequence" : fmt::format("{} sequences", best.seqs),
            best.seqs);
    }
    // Speculation: the choice always, the trade per k with --explain.
    for (std::size_t i = 0; i < draft_lines.size() && (i == 0 || o->explain); ++i)
      fmt::print("{}\n", draft_lines[i]);
    if (o->explain) fmt::print("{}", plan.explain());
    return 0;
  };
}

}  // namespace ferry::tools
