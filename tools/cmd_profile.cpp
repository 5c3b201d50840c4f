// ferry profile and ferry tune: where the time of a generation goes, and the knobs that make it
// fastest on this machine. The work is in runtime/profile; these parse, call and print.
#include <fmt/format.h>

#include <cstdio>

#include "runtime/engine/model_files.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/core/units.hpp"
#include "runtime/profile/html_report.hpp"
#include "runtime/profile/policy.hpp"
#include "runtime/profile/profile_run.hpp"
#include "runtime/profile/tune.hpp"
#include "runtime/text/bpe_tokenizer.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace {

// What profile and tune share: the model, the budget, the I/O engine and the prompt.
struct ProfileFlags {
  std::string model;
  std::string max_ram;
  std::string io;
  std::string prompt;
  std::string ids;
  int64_t n = 16;
  bool quiet = false;
};

void add_profile_flags(CLI::App* cmd, ProfileFlags& f) {
  cmd->add_option("-m,--model", f.model, "model directory (config.json + weights) or GGUF file")
      ->required();
  cmd->add_option("--max-ram", f.max_ram,
                  "cap on host memory, e.g. 4GiB (default: what is free, cgroup limits included)")
      ->envname("FERRY_MAX_RAM");
  cmd->add_option("--io", f.io, "I/O engine: auto | uring | pread | buffered")->envname("FERRY_IO");
  auto* p = cmd->add_option("-p,--prompt", f.prompt, "prompt text (default: \"Hello\")");
  auto* i = cmd->add_option("--ids", f.ids, "prompt as token ids, e.g. \"15496 995\"");
  p->excludes(i);
  cmd->add_option("-n,--n-tokens", f.n, "new tokens to generate (greedy, end-of-text ignored)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  cmd->add_flag("-q,--quiet", f.quiet, "no progress on stderr");
}

profile::ProfileOptions profile_options(const ProfileFlags& f) {
  profile::ProfileOptions o;
  o.model_dir = f.model;
  if (!f.max_ram.empty()) o.load.max_ram_bytes = parse_max_ram(f.max_ram);
  if (!f.io.empty()) o.load.io.backend = offload::parse_io_backend(f.io);
  o.prompt = !f.ids.empty() ? parse_ids(f.ids)
                            : engine::read_tokenizer(f.model).encode(
                                  f.prompt.empty() ? std::string("Hello") : f.prompt,
                                  /*add_special=*/true);
  o.n_tokens = f.n;
  return o;
}

}  // namespace

Command add_profile(CLI::App& app) {
  struct Options {
    ProfileFlags flags;
    std::string policy;
    std::string trace;
    std::string report;
    bool json = false;
    bool no_trace = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "profile", "generate and show where the time goes: links, stalls, s/token against the bound");
  add_profile_flags(cmd, o->flags);
  cmd->add_option("--policy", o->policy, "a policy JSON written by ferry tune");
  cmd->add_option("--trace", o->trace, "write a Chrome trace (Perfetto, chrome://tracing)");
  cmd->add_option("--report", o->report, "write a self-contained HTML report");
  cmd->add_flag("--json", o->json, "print the summary as JSON");
  cmd->add_flag("--no-trace", o->no_trace,
                "record no spans: only s/token (to measure what tracing costs)");
  return [o] {
    FERRY_EXPECT(!o->no_trace || (o->trace.empty() && o->report.empty()),
                 "--no-trace records nothing for --trace or --report; drop one or the other");
    // Bad output paths are refused now, not after the whole profile.
    if (!o->trace.empty()) check_writable(o->trace, "--trace");
    if (!o->report.empty()) check_writable(o->report, "--report");
    profile::ProfileOptions po = profile_options(o->flags);
    po.trace = !o->no_trace;
    if (!o->policy.empty()) profile::apply_policy(profile::load_policy(o->policy), po.load);
    Progress loading("loading", o->flags.quiet);
    po.load.io.on_load_progress = [&](uint64_t done, uint64_t total) {
      loading.update(done, total);
      if (done == total) loading.finish();
    };
    Progress progress("profile", o->flags.quiet);
    po.on_token = [&](int64_t done, int64_t total) {
      progress.update_count(static_cast<uint64_t>(done), static_cast<uint64_t>(total), "tokens");
    };
    const profile::ProfileRun r = profile::run_profile(po);
    progress.finish();
    if (!o->trace.empty()) trace::write_chrome_trace(r.trace, o->trace);
    if (!o->report.empty())
      profile::write_html_report(o->report, r.trace, r.summary,
                                 {fmt::format("ferry profile: {}", o->flags.model), 4});
    if (o->json) {
      nlohmann::json j = profile::to_json(r.summary);
      j["placement"] = r.placement;
      j["load_s"] = r.load_s;
      fmt::print("{}\n", j.dump(2));
    } else {
      fmt::print("placement: {}; load {:.2f} s\n{}", r.placement, r.load_s,
                 profile::format_summary(r.summary));
    }
    return 0;
  };
}

Command add_tune(CLI::App& app) {
  struct Options {
    ProfileFlags flags;
    std::string out;
    int trials = 12;
  };
  auto o = std::make_shared<Options>();
  o->flags.n = 8;
  CLI::App* cmd = app.add_subcommand(
      "tune",
      "measure I/O engine, queue depth, chunk size and staging slots; write the best policy");
  add_profile_flags(cmd, o->flags);
  cmd->add_option("-o,--output", o->out, "where to write the policy JSON")->required();
  cmd->add_option("--trials", o->trials, "trial runs, the default policy's included")
      ->check(CLI::Range(1, 10000));
  return [o] {
    check_writable(o->out, "-o");  // now, not after the trials
    const profile::ProfileOptions po = profile_options(o->flags);
    profile::TuneOptions to;
    to.model_dir = po.model_dir;
    to.load = po.load;
    to.prompt = po.prompt;
    to.n_tokens = po.n_tokens;
    to.trials = o->trials;
    Progress progress("tune", o->flags.quiet);
    const profile::TuneResult r = profile::tune(to, [&](int done, int total,
                                                        const profile::Trial&) {
      progress.update_count(static_cast<uint64_t>(done), static_cast<uint64_t>(total), "trials");
    });
    progress.finish();
    profile::save_policy(o->out, r.best);
    for (const auto& t : r.trials)
      fmt::print("  {:<48} {}\n", t.policy.describe(),
                 t.error.empty()
                     ? fmt::format("{:.4f} s/token ({} slots)", t.s_per_token, t.slots_used)
                     : "refused: " + t.error.substr(0, 160));
    fmt::print(
        "default: {:.4f} s/token ({})\ntuned:   {:.4f} s/token ({}): {:.2f}× the "
        "default\nwrote {}\n",
        r.baseline.s_per_token, r.baseline.policy.describe(), r.winner.s_per_token,
        r.winner.policy.describe(), r.speedup, o->out);
    return 0;
  };
}

}  // namespace ferry::tools
