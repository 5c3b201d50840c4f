#include "runtime/profile/profile_run.hpp"

#include <algorithm>

#include "offload/layer_streamer.hpp"
#include "planner/plan.hpp"
#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/trace.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/learning.hpp"
#include "runtime/engine/model_files.hpp"

namespace ferry::profile {

nlohmann::json load_metadata(const engine::LoadedModel& m, const engine::Backend& backend) {
  using nlohmann::json;
  json placement = {{"placement", backend.describe()}};
  if (const offload::LayerStreamer* streamer = backend.host_streamer()) {
    json tiers = json::array();
    for (std::size_t u = 0; u < streamer->unit_count(); ++u)
      tiers.push_back(tier_name(streamer->tier(u)));
    placement["tiers"] = tiers;
    placement["slot_count"] = streamer->slot_count();
    placement["prefetch_depth"] = streamer->slot_count() ? streamer->slot_count() - 1 : 0;
    placement["resident_bytes"] = streamer->resident_bytes();
    placement["staging_bytes"] = streamer->staging_bytes();
  } else {  // every unit on the device
    json tiers = json::array();
    for (const offload::Tier t : m.placement.blocks) tiers.push_back(tier_name(t));
    tiers.push_back(tier_name(m.placement.head));
    placement["tiers"] = tiers;
    placement["slot_count"] = 0;
    placement["prefetch_depth"] = 0;
  }
  json out = {{"placement", placement},
              {"model",
               {{"n_layer", m.config.n_layer},
                {"n_embd", m.config.n_embd},
                {"vocab_size", m.config.vocab_size}}}};
  if (m.plan) out["plan"] = planner::plan_to_json(*m.plan);
  return out;
}

void trace_load_metadata(const engine::LoadedModel& m, const engine::Backend& backend) {
  const nlohmann::json meta = load_metadata(m, backend);
  for (const auto& [key, value] : meta.items()) trace::tracer().set_metadata(key, value);
}

trace::TraceData finish_trace(const std::filesystem::path& path, const nlohmann::json& extra) {
  trace::Tracer& t = trace::tracer();
  t.stop();
  for (const auto& [key, value] : extra.items()) t.set_metadata(key, value);
  trace::TraceData data = t.snapshot();
  if (!path.empty()) trace::write_chrome_trace(data, path);
  return data;
}

ProfileRun run_profile(const ProfileOptions& o) {
  FERRY_EXPECT(!o.prompt.empty(), "the prompt is empty; give -p TEXT or --ids \"I J K\"");
  FERRY_EXPECT(o.n_tokens >= 1, "profile needs at least one new token (-n); got {}", o.n_tokens);
  const auto config = engine::read_model_config(o.model_dir);
  const auto n_prompt = static_cast<int64_t>(o.prompt.size());
  engine::check_prompt_length(n_prompt, model::max_context(config));
  engine::LoadOptions load = o.load;
  load.context = std::min<int64_t>(model::max_context(config), n_prompt + o.n_tokens);
  load.max_batch_rows = n_prompt;
  load.max_logit_rows = 1;

  ProfileRun r;
  engine::RunOutcome outcome;
  outcome.how = "ferry profile";
  std::optional<engine::LoadedModel> m;
  std::unique_ptr<engine::Engine> eng;
  trace::Tracer& t = trace::tracer();
  if (o.trace) t.start();
  try {
    m.emplace(engine::load_model(o.model_dir, load));
    backends::EngineSpec spec;
    spec.context = load.context;
    spec.io = load.io;
    eng = backends::make_engine(*m, spec);
    const engine::Backend& backend = eng->backend();
    r.placement = backend.describe();
    r.slot_count = backend.host_streamer() ? backend.host_streamer()->slot_count() : 0;
    r.load_s = backend.load_s();
    if (m->plan) r.planner_s_per_token = m->plan->chosen.predicted.s_per_token;
    if (o.trace) trace_load_metadata(*m, backend);

    engine::GenerateOptions go;
    go.max_new_tokens = o.n_tokens;
    int64_t done = 0;
    r.tokens = engine::generate(
        *eng, 0, o.prompt, go,
        [&](int32_t) {
          if (done == 0) outcome.prompt_stall_s = engine::stall_s(backend);
          if (o.on_token) o.on_token(++done, o.n_tokens);
          return true;
        },
        &r.stats);
  } catch (...) {
    if (o.trace) t.stop();
    throw;
  }
  if (o.trace) {
    r.trace = finish_trace({});
    r.summary = summarize(r.trace, r.stats, {r.planner_s_per_token});
    const auto& d = r.summary.decode;
    outcome.decode_compute_s = d.compute_s_per_pass * static_cast<double>(d.passes);
  } else {
    outcome.decode_compute_s = 0;  // no spans: the decode's compute is not known
    r.summary.wall_s = r.stats.prompt_s + r.stats.decode_s;
    r.summary.prompt = {r.stats.prompt_tokens, 1, r.stats.prompt_s,
                        r.stats.prompt_s / static_cast<double>(std::max<int64_t>(1, n_prompt)),
                        r.stats.prompt_s};
    r.summary.decode.tokens = r.stats.decode_steps;
    r.summary.decode.passes = r.stats.decode_steps;
    r.summary.decode.wall_s = r.stats.decode_s;
    if (r.stats.decode_steps > 0)
      r.summary.decode.s_per_token = r.summary.decode.s_per_pass =
          r.stats.decode_s / static_cast<double>(r.stats.decode_steps);
  }
  // What this run achieved goes back into the planner's cached figures (ferry tune's trials
  // and every profile teach the next plan).
  outcome.stats = r.stats;
  engine::learn_from_run(*m, eng->backend(), outcome);
  return r;
}

}  // namespace ferry::profile
