// The forward pass against Hugging Face transformers' GPTJForCausalLM: every logit within
// 2e-5 and every greedy token equal, for every fixture checkpoint and format.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>

#include "runtime/core/error.hpp"
#include "runtime/engine/convert.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr float kLogitTolerance = 2e-5f;

json expected_for(const std::string& fixture) {
  return json::parse(test::read_file(test::data_dir() / "gptj" / fixture / "expected.json"));
}

std::vector<int32_t> ids_of(const json& j) { return j.get<std::vector<int32_t>>(); }

float max_abs_diff(const float* a, const std::vector<float>& b) {
  float m = 0;
  for (std::size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Checks one model directory against a fixture's expected.json.
void check_against_reference(const fs::path& dir, const json& expected, LoadOptions options = {}) {
  LoadedModel m = load_model(dir, std::move(options));
  const auto vocab = static_cast<std::size_t>(m.config.vocab_size);
  Engine engine(*m.weights, {}, default_thread_pool());
  int index = 0;
  for (const json& p : expected["prompts"]) {
    SCOPED_TRACE("prompt " + std::to_string(index++));
    const auto ids = ids_of(p["input_ids"]);
    // Prompt in one pass, logits at every position.
    engine.reset(0);
    SeqTokens s{0, ids};
    const auto& all = engine.forward({&s, 1}, LogitsFor::all);
    ASSERT_EQ(all.size(), ids.size() * vocab);
    const auto argmax_expected = p["argmax_per_position"].get<std::vector<int32_t>>();
    for (std::size_t pos = 0; pos < ids.size(); ++pos)
      EXPECT_EQ(argmax({all.data() + pos * vocab, vocab}), argmax_expected[pos])
          << "position " << pos;
    const auto last = p["last_logits"].get<std::vector<float>>();
    ASSERT_EQ(last.size(), vocab);
    EXPECT_LE(max_abs_diff(all.data() + (ids.size() - 1) * vocab, last), kLogitTolerance);

    // 20 greedy tokens with the KV cache.
    GenerateOptions go;
    go.max_new_tokens = static_cast<int64_t>(p["greedy_tokens"].size());
    const auto tokens = generate(engine, 0, ids, go);
    EXPECT_EQ(tokens, ids_of(p["greedy_tokens"]));
  }
}

class Parity : public ::testing::TestWithParam<std::string> {};

TEST_P(Parity, MatchesHuggingFace) {
  check_against_reference(test::data_dir() / "gptj" / GetParam(), expected_for(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, Parity,
                         ::testing::Values("tiny-f32", "sharded-f32", "tiny-f16-bin-sharded"));

// GPT-J streamed in pieces: biased matrices (fc_in, fc_out, lm_head) in row chunks.
TEST(Parity, StreamedInPiecesMatchesHuggingFace) {
  const fs::path dir = test::data_dir() / "gptj" / "tiny-f16-bin-sharded";
  LoadOptions o;
  o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), offload::Tier::disk, 2);
  o.placement->chunk_bytes = 40 << 10;
  check_against_reference(dir, expected_for("tiny-f16-bin-sharded"), std::move(o));
}

// The Llama family against transformers' LlamaForCausalLM, Qwen2ForCausalLM and
// MistralForCausalLM: GQA, llama3 rope scaling, rotate_half, RMSNorm, SwiGLU, q/k/v biases, tied
// embeddings, bf16 shards split inside a layer, f16 subnormals.
class LlamaParity : public ::testing::TestWithParam<std::string> {};

json llama_expected(const std::string& fixture) {
  return json::parse(test::read_file(test::data_dir() / "llama" / fixture / "expected.json"));
}

TEST_P(LlamaParity, MatchesHuggingFace) {
  check_against_reference(test::data_dir() / "llama" / GetParam(), llama_expected(GetParam()));
}

TEST_P(LlamaParity, StreamedFromDiskMatchesHuggingFace) {
  const fs::path dir = test::data_dir() / "llama" / GetParam();
  LoadOptions o;
  o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), offload::Tier::disk);
  check_against_reference(dir, llama_expected(GetParam()), std::move(o));
}

// Streamed in pieces smaller than a matrix (a matrix in row chunks, small ones sharing a piece):
// the bytes and the results are the same.
TEST_P(LlamaParity, StreamedInPiecesMatchesHuggingFace) {
  const fs::path dir = test::data_dir() / "llama" / GetParam();
  LoadOptions o;
  o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), offload::Tier::disk, 3);
  o.placement->chunk_bytes = 24 << 10;
  {
    LoadedModel m = load_model(dir, o);
    EXPECT_GT(m.weights->streamer().unit_count(), static_cast<std::size_t>(3 * m.config.n_layer))
        << "the layers were not cut into pieces";
  }
  check_against_reference(dir, llama_expected(GetParam()), std::move(o));
}

// The same weights as an f32 pack (bf16 and f16 widen exactly): the f32 path of every family.
TEST_P(LlamaParity, F32PackMatchesHuggingFace) {
  const fs::path dir = test::data_dir() / "llama" / GetParam();
  test::TempDir pack;
  ConvertOptions co;
  co.format = model::WeightFormat::parse("f32");
  co.quant_embeddings = true;
  co.quant_lm_head = true;
  convert_model(dir, pack.path(), co);
  const auto ck = offload::Checkpoint::open(pack.path());
  EXPECT_EQ(ck.at("model.layers.0.mlp.down_proj.weight").dtype, DType::f32);
  check_against_reference(pack.path(), llama_expected(GetParam()));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LlamaParity,
                         ::testing::Values("llama3-gqa-f32", "qwen2-bias-tied-bf16-sharded",
                                           "mistral-f16"));

// Streamed from disk through staging slots, every unit or some, with every I/O engine: the
// same logits and tokens as resident weights.
struct StreamCase {
  std::string fixture;
  offload::IoBackendKind backend;
  int resident_blocks;  // the first k blocks stay resident
  std::size_t slots;
};

class StreamedParity : public ::testing::TestWithParam<StreamCase> {};

TEST_P(StreamedParity, MatchesHuggingFace) {
  const StreamCase& c = GetParam();
  const fs::path dir = test::data_dir() / "gptj" / c.fixture;
  const auto config = model::ModelConfig::from_model_dir(dir);
  LoadOptions o;
  Placement p = Placement::all(config, offload::Tier::disk, c.slots);
  for (int l = 0; l < c.resident_blocks; ++l)
    p.blocks[static_cast<std::size_t>(l)] = offload::Tier::host;
  o.placement = p;
  o.io.backend = c.backend;
  check_against_reference(dir, expected_for(c.fixture), o);
}

INSTANTIATE_TEST_SUITE_P(
    Placements, StreamedParity,
    ::testing::Values(StreamCase{"tiny-f32", offload::IoBackendKind::automatic, 0, 2},
                      StreamCase{"sharded-f32", offload::IoBackendKind::uring, 1, 2},
                      StreamCase{"sharded-f32", offload::IoBackendKind::pread, 0, 3},
                      StreamCase{"tiny-f16-bin-sharded", offload::IoBackendKind::buffered, 2, 2},
                      StreamCase{"tiny-f16-bin-sharded", offload::IoBackendKind::uring, 0, 4}));

// A machine with known figures, so these tests never measure the disk or the CPU.
planner::Machine test_machine() {
  planner::Machine m;
  m.name = "test";
  m.ram_bytes = {64.0 * (1 << 30), "test"};
  m.memlock_bytes = {1e18, "test"};
  m.disk_bytes_per_s = {1e9, "test"};
  m.cpu_compute_bytes_per_s = {1e10, "test"};
  return m;
}

// A budget picks the placement: the plan keeps what fits and streams the rest, and the
// streamer holds exactly what the plan says.
TEST(Parity, BudgetedLoadStreamsWhatDoesNotFit) {
  const fs::path dir = test::data_dir() / "gptj/tiny-f16-bin-sharded";
  LoadOptions o;
  o.context = 64;
  o.machine = test_machine();
  const auto config = model::ModelConfig::from_model_dir(dir);
  const uint64_t fixed =
      fixed_host_bytes(config, 64, 64) + KvCache::bytes_needed(config, 1, o.context);
  const auto ck = offload::Checkpoint::open(dir);
  const auto units = offload::LayerStreamer::unit_bytes(
      ck, model_units(config, Placement::all(config, offload::Tier::disk)));
  const uint64_t largest = *std::max_element(units.begin(), units.end());
  const uint64_t total = std::accumulate(units.begin(), units.end(), uint64_t{0});
  const uint64_t margin = 16u << 20;  // what the planner keeps free below an explicit --max-ram
  for (const uint64_t budget :
       {fixed + margin + 2 * largest + 100, fixed + margin + 2 * largest + total / 4}) {
    o.max_ram_bytes = budget;
    LoadedModel m = load_model(dir, o);
    ASSERT_TRUE(m.plan);
    const auto& c = m.plan->chosen;
    EXPECT_LE(c.predicted.peak_ram_bytes, budget);
    EXPECT_GT(c.count(planner::Tier::disk), 0u);
    const auto& s = m.weights->streamer();
    EXPECT_EQ(s.slot_count(), c.host_slots);
    EXPECT_EQ(s.resident_bytes(), c.bytes(m.plan->request, planner::Tier::host));
    EXPECT_EQ(s.staging_bytes(), c.host_slots * c.predicted.host_slot_bytes);
    for (std::size_t i = 0; i < c.tiers.size(); ++i)
      EXPECT_EQ(s.tier(i) == offload::Tier::disk, c.tiers[i] == planner::Tier::disk) << i;
    check_against_reference(dir, expected_for("tiny-f16-bin-sharded"), o);
  }

  o.max_ram_bytes = fixed + margin + 3 * largest + 100;
  o.slot_count = 3;  // a tuned policy's slot count is kept
  EXPECT_EQ(load_model(dir, o).weights->streamer().slot_count(), 3u);
  o.slot_count.reset();

  o.max_ram_bytes = fixed + margin + 2 * largest - 1;  // not even two slots
  try {
    load_model(dir, o);
    ADD_FAILURE() << "an impossible budget was accepted";
  } catch (const PlanError& e) {
    EXPECT_NE(std::string(e.what()).find("--max-ram"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("at least"), std::string::npos) << e.what();
  }
}

// A saved plan replays exactly, and is refused where it does not apply.
TEST(Parity, SavedPlanReplaysAndIsCheckedAgainstTheMachine) {
  const fs::path dir = test::data_dir() / "gptj/tiny-f16-bin-sharded";
  LoadOptions o;
  o.context = 64;
  o.machine = test_machine();
  o.max_ram_bytes = 45u << 20;
  const planner::Plan plan = *load_model(dir, o).plan;
  const auto json_plan = planner::plan_from_json(planner::plan_to_json(plan));

  LoadOptions r;
  r.context = 64;
  r.machine = test_machine();
  r.plan = json_plan;
  LoadedModel m = load_model(dir, r);
  for (std::size_t i = 0; i < plan.chosen.tiers.size(); ++i)
    EXPECT_EQ(m.weights->streamer().tier(i) == offload::Tier::disk,
              plan.chosen.tiers[i] == planner::Tier::disk);
  check_against_reference(dir, expected_for("tiny-f16-bin-sharded"), r);

  auto refused = [&](LoadOptions bad, const fs::path& d, const std::string& needle) {
    try {
      load_model(d, std::move(bad));
      ADD_FAILURE() << "replayed: " << needle;
    } catch (const PlanError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  LoadOptions small = r;
  small.max_ram_bytes = 8u << 20;
  refused(small, dir, "the plan needs");
  LoadOptions longer = r;
  longer.context = 128;
  refused(longer, dir, "--ctx 64");
  refused(r, test::data_dir() / "gptj/tiny-f32", "another model");
  planner::Plan gpu = json_plan;
  gpu.request.backend = planner::Backend::cuda;
  LoadOptions cuda = r;
  cuda.plan = gpu;
  refused(cuda, dir, "cuda backend");
  // A plan edited to keep every unit resident within a budget of its old peak is held to its
  // own budget, not to the machine's 64 GiB (which would have let it run beyond its budget).
  nlohmann::json edited = planner::plan_to_json(plan);
  for (auto& l : edited["layers"]) l["tier"] = "host";
  edited["staging"]["host_slots"] = 0;
  edited["ram_budget_bytes"] = plan.chosen.predicted.peak_ram_bytes;
  LoadOptions resident = r;
  resident.plan = planner::plan_from_json(edited);
  refused(resident, dir, "its own budget allows");
}

// The same weights as a torch.save zip give identical logits, bit for bit.
TEST(Parity, TorchZipEqualsSafetensors) {
  const fs::path src = test::data_dir() / "gptj/tiny-f32";
  test::TempDir torch_dir;
  fs::copy_file(src / "config.json", torch_dir / "config.json");
  fs::copy_file(src / "pytorch_model.bin", torch_dir / "pytorch_model.bin");
  check_against_reference(torch_dir.path(), expected_for("tiny-f32"));

  LoadedModel a = load_model(src);
  LoadedModel b = load_model(torch_dir.path());
  EXPECT_EQ(a.checkpoint->format(), offload::CheckpointFormat::safetensors);
  EXPECT_EQ(b.checkpoint->format(), offload::CheckpointFormat::torch_zip);
  Engine ea(*a.weights, {}, default_thread_pool());
  Engine eb(*b.weights, {}, default_thread_pool());
  const std::vector<int32_t> ids = {0, 999, 942, 494, 653};
  SeqTokens s{0, ids};
  const std::vector<float> la = ea.forward({&s, 1}, LogitsFor::all);
  const std::vector<float> lb = eb.forward({&s, 1}, LogitsFor::all);
  EXPECT_EQ(la, lb);
}

// A batch of sequences gives each the logits it gets alone.
TEST(Engine, BatchEqualsSeparateRuns) {
  LoadedModel m = load_model(test::data_dir() / "gptj/sharded-f32");
  const auto vocab = static_cast<std::size_t>(m.config.vocab_size);
  const std::vector<std::vector<int32_t>> prompts = {
      {5, 17, 300, 2}, {499}, {7, 7, 7, 8, 9, 10, 11}};
  EngineOptions opts;
  opts.max_seqs = 3;
  opts.context = 32;
  Engine batched(*m.weights, opts, default_thread_pool());
  std::vector<SeqTokens> batch;
  for (int i = 0; i < 3; ++i) batch.push_back({i, prompts[static_cast<std::size_t>(i)]});
  std::vector<float> together = batched.forward(batch, LogitsFor::last);
  ASSERT_EQ(together.size(), 3 * vocab);
  // Then one decode step for all three at once, at different positions.
  const std::vector<int32_t> next = {1, 2, 3};
  std::vector<SeqTokens> step;
  for (int i = 0; i < 3; ++i) step.push_back({i, {&next[static_cast<std::size_t>(i)], 1}});
  const std::vector<float> stepped = batched.forward(step, LogitsFor::last);

  for (int i = 0; i < 3; ++i) {
    Engine alone(*m.weights, {1, 32}, default_thread_pool());
    SeqTokens s{0, prompts[static_cast<std::size_t>(i)]};
    const std::vector<float> one = alone.forward({&s, 1}, LogitsFor::last);
    for (std::size_t v = 0; v < vocab; ++v)
      ASSERT_NEAR(together[static_cast<std::size_t>(i) * vocab + v], one[v], 1e-5f) << i;
    SeqTokens t{0, {&next[static_cast<std::size_t>(i)], 1}};
    const std::vector<float> one_step = alone.forward({&t, 1}, LogitsFor::last);
    for (std::size_t v = 0; v < vocab; ++v)
      ASSERT_NEAR(stepped[static_cast<std::size_t>(i) * vocab + v], one_step[v], 1e-5f) << i;
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

TEST(Engine, RejectsIdsOutsideTheVocabulary) {
  LoadedModel m = load_model(test::data_dir() / "gptj/tiny-f32");
  Engine engine(*m.weights, {}, default_thread_pool());
  const std::vector<int32_t> ids = {1, 1000};
  SeqTokens s{0, ids};
  const std::string msg = error_of([&] { engine.forward({&s, 1}, LogitsFor::last); });
  EXPECT_NE(msg.find("token id 1000"), std::string::npos) << msg;
  EXPECT_NE(msg.find("0 … 999"), std::string::npos) << msg;
  EXPECT_EQ(engine.length(0), 0);  // nothing changed
  const std::vector<int32_t> neg = {-3};
  SeqTokens n{0, neg};
  EXPECT_THROW(engine.forward({&n, 1}, LogitsFor::last), InvalidArgument);
}

TEST(Engine, RejectsPromptsLongerThanTheContext) {
  LoadedModel m = load_model(test::data_dir() / "gptj/tiny-f32");  // n_positions 128
  Engine engine(*m.weights, {}, default_thread_pool());
  const std::vector<int32_t> long_prompt(129, 5);
  GenerateOptions go;
  go.max_new_tokens = 1;
  std::string msg = error_of([&] { generate(engine, 0, long_prompt, go); });
  EXPECT_NE(msg.find("129 tokens"), std::string::npos) << msg;
  EXPECT_NE(msg.find("128"), std::string::npos) << msg;
  const std::vector<int32_t> prompt(100, 5);
  go.max_new_tokens = 40;
  msg = error_of([&] { generate(engine, 0, prompt, go); });
  EXPECT_NE(msg.find("at most 29 new tokens"), std::string::npos) << msg;
}

// Config and weights that do not belong together are refused before any weight is read.
TEST(Engine, ConfigAndWeightsMustMatch) {
  const fs::path src = test::data_dir() / "gptj/tiny-f32";
  test::TempDir dir;
  test::copy_dir(src, dir.path());
  json cfg = json::parse(test::read_file(src / "config.json"));

  cfg["n_inner"] = 128;
  test::write_file(dir / "config.json", cfg.dump());
  std::string msg = error_of([&] { load_model(dir.path()); });
  EXPECT_NE(msg.find("transformer.h.0.mlp.fc_in.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[256, 64]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[128, 64]"), std::string::npos) << msg;

  cfg = json::parse(test::read_file(src / "config.json"));
  cfg["n_layer"] = 3;
  test::write_file(dir / "config.json", cfg.dump());
  msg = error_of([&] { load_model(dir.path()); });
  EXPECT_NE(msg.find("'transformer.h.2.ln_1.weight' is missing"), std::string::npos) << msg;

  // Fewer layers than the checkpoint holds once ran the first layer only, silently.
  cfg = json::parse(test::read_file(src / "config.json"));
  ASSERT_EQ(cfg["n_layer"], 2);
  cfg["n_layer"] = 1;
  test::write_file(dir / "config.json", cfg.dump());
  msg = error_of([&] { load_model(dir.path()); });
  EXPECT_NE(msg.find("'transformer.h.1."), std::string::npos) << msg;
  EXPECT_NE(msg.find("uses no such tensor"), std::string::npos) << msg;
  EXPECT_NE(msg.find("config.json says 1 layer)"), std::string::npos) << msg;

  cfg = json::parse(test::read_file(src / "config.json"));
  cfg["vocab_size"] = 1001;
  test::write_file(dir / "config.json", cfg.dump());
  msg = error_of([&] { load_model(dir.path()); });
  EXPECT_NE(msg.find("transformer.wte.weight"), std::string::npos) << msg;
}

TEST(Engine, MissingDirectory) {
  const std::string msg = error_of([] { load_model("/nonexistent/model"); });
  EXPECT_NE(msg.find("/nonexistent/model"), std::string::npos) << msg;
  EXPECT_NE(msg.find("make-model"), std::string::npos) << msg;
}

}  // namespace
}  // namespace ferry::engine
