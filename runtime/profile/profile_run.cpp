#include "runtime/profile/profile_run.hpp"

#include <algorithm>

#include "planner/plan.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/core/trace.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/planning.hpp"

namespace ferry::profile {

nlohmann::json load_metadata(const engine::LoadedModel& m) {
  using nlohmann::json;
  const auto& streamer = m.weights->streamer();
  json tiers = json::array();
  for (std::size_t u = 0; u < streamer.unit_count(); ++u)
    tiers.push_back(offload::tier_name(streamer.tier(u)));
  json placement = {{"tiers", tiers},
                    {"slot_count", streamer.slot_count()},
                    {"prefetch_depth", streamer.slot_count() ? streamer.slot_count() - 1 : 0},
                    {"resident_bytes", streamer.resident_bytes()},
                    {"staging_bytes", streamer.staging_bytes()},
                    {"placement", streamer.describe()}};
  json out = {{"placement", placement},
              {"model",
               {{"n_layer", m.config.n_layer},
                {"n_embd", m.config.n_embd},
                {"vocab_size", m.config.vocab_size}}}};
  if (m.plan) out["plan"] = planner::plan_to_json(*m.plan);
  return out;
}

void trace_load_metadata(const engine::LoadedModel& m) {
  const nlohmann::json meta = load_metadata(m);
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
  const auto config = model::ModelConfig::from_model_dir(o.model_dir);
  const auto n_prompt = static_cast<int64_t>(o.prompt.size());
  engine::check_prompt_length(n_prompt, model::max_context(config));
  engine::LoadOptions load = o.load;
  load.context = std::min<int64_t>(model::max_context(config), n_prompt + o.n_tokens);
  load.max_batch_rows = n_prompt;
  load.max_logit_rows = 1;

  ProfileRun r;
  uint64_t plan_weight_bytes = 0;  // what the planner's compute figure is per pass
  DType weight_dtype = DType::f32;
  trace::Tracer& t = trace::tracer();
  if (o.trace) t.start();
  try {
    engine::LoadedModel m = engine::load_model(o.model_dir, load);
    const auto& streamer = m.weights->streamer();
    r.placement = streamer.describe();
    r.slot_count = streamer.slot_count();
    r.load_s = streamer.stats().load_s;
    if (m.plan) r.planner_s_per_token = m.plan->chosen.predicted.s_per_token;
    if (o.trace) trace_load_metadata(m);

    engine::EngineOptions eo;
    eo.context = load.context;
    engine::Engine eng(*m.weights, eo, default_thread_pool());
    engine::GenerateOptions go;
    go.max_new_tokens = o.n_tokens;
    int64_t done = 0;
    r.tokens = engine::generate(
        eng, 0, o.prompt, go,
        [&](int32_t) {
          if (o.on_token) o.on_token(++done, o.n_tokens);
          return true;
        },
        &r.stats);
    // What this run achieved goes back into the planner's cached figures (ferry tune's trials
    // and every profile teach the next plan).
    const auto& st = streamer.stats();
    if (m.plan)
      engine::learn_disk_rate(*m.checkpoint, m.plan->slot_bytes, st.bytes_acquired, st.read_busy_s,
                              "ferry profile");
    weight_dtype = engine::weight_dtype(m.config, m.checkpoint.get());
    if (m.plan)
      for (const auto& u : m.plan->request.units) plan_weight_bytes += u.bytes + u.kv_read_bytes;
  } catch (...) {
    if (o.trace) t.stop();
    throw;
  }
  if (o.trace) {
    r.trace = finish_trace({});
    r.summary = summarize(r.trace, r.stats, {r.planner_s_per_token});
    const auto& d = r.summary.decode;
    if (d.passes > 0 && d.compute_s_per_pass > 0 && plan_weight_bytes > 0)
      engine::learn_cpu_rate(
          weight_dtype, config.n_embd, plan_weight_bytes * static_cast<uint64_t>(d.passes),
          d.compute_s_per_pass * static_cast<double>(d.passes), "decode compute in ferry profile");
  } else {
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
  return r;
}

}  // namespace ferry::profile
