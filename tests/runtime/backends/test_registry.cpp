// The backend registry on the CPU: the names it knows and has, the CPU device, refusals that
// say what to do, and an engine made through it computing what a directly made CPU engine does
// (the Llama-3-style GQA fixture) — plus what learn_from_run reports after a planned run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/learning.hpp"
#include "runtime/engine/planning.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::backends {
namespace {

namespace fs = std::filesystem;

fs::path llama_dir() { return test::data_dir() / "llama" / "llama3-gqa-f32"; }

std::vector<int32_t> first_prompt() {
  const auto j = nlohmann::json::parse(test::read_file(llama_dir() / "expected.json"));
  return j["prompts"][0]["input_ids"].get<std::vector<int32_t>>();
}

// What the registry throws for args, or "" when it does not.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Registry, NamesTheBackendsItKnowsAndHas) {
  EXPECT_EQ(known(), (std::vector<std::string>{"cpu", "cuda"}));
  const auto names = compiled();
  ASSERT_FALSE(names.empty());
  EXPECT_EQ(names.front(), "cpu");
  for (const auto& n : names) EXPECT_TRUE(is_compiled(n)) << n;
  EXPECT_TRUE(is_compiled("cpu"));
  EXPECT_FALSE(is_compiled("tpu"));
  EXPECT_EQ(planner_backend("cpu"), planner::Backend::cpu);
  // A plan may be for a backend this build lacks (planning for a Colab GPU on a laptop).
  EXPECT_EQ(planner_backend("cuda"), planner::Backend::cuda);
}

TEST(Registry, DescribesTheBuild) {
  const auto lines = describe_build();
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.front().rfind("cpu kernels: ", 0), 0u) << lines.front();
  // Which kernels multiply packed weights (AVX-512 may run them where the float path is AVX2).
  EXPECT_NE(std::find_if(lines.begin(), lines.end(),
                         [](const std::string& l) {
                           return l.rfind("cpu packed (q8/q4) kernels: ", 0) == 0;
                         }),
            lines.end());
  // How GGUF blocks are multiplied (llama.cpp's arithmetic by default).
  EXPECT_NE(std::find_if(lines.begin(), lines.end(),
                         [](const std::string& l) {
                           return l.rfind("cpu GGUF block products: ", 0) == 0;
                         }),
            lines.end());
  // And which multiply float weights (AVX-512 where present, beside the AVX2 rest).
  EXPECT_NE(std::find_if(lines.begin(), lines.end(),
                         [](const std::string& l) {
                           return l.rfind("cpu float (f32/f16/bf16) products: ", 0) == 0;
                         }),
            lines.end());
  const auto cuda = std::find_if(lines.begin(), lines.end(),
                                 [](const std::string& l) { return l.rfind("cuda: ", 0) == 0; });
  ASSERT_NE(cuda, lines.end());
  EXPECT_EQ(cuda->rfind(is_compiled("cuda") ? "cuda: compiled" : "cuda: not compiled", 0), 0u)
      << *cuda;
}

TEST(Registry, UnknownNamesAreRefusedByName) {
  EXPECT_NE(error_of([] { check("tpu"); }).find("--device 'tpu' is not cpu or cuda"),
            std::string::npos);
  EXPECT_NE(error_of([] { open_device("tpu"); }).find("is not cpu or cuda"), std::string::npos);
  EXPECT_NE(error_of([] { planner_backend("metal"); }).find("is not cpu or cuda"),
            std::string::npos);
}

TEST(Registry, CpuDeviceIsTheHost) {
  const auto d = open_device("cpu");
  ASSERT_NE(d, nullptr);
  EXPECT_EQ(d->kind(), DeviceKind::cpu);
  EXPECT_EQ(d->name().rfind("cpu (", 0), 0u) << d->name();
  EXPECT_FALSE(d->memory_info().has_value());
  engine::LoadOptions lo;
  plan_for("cpu", *d, lo);
  EXPECT_EQ(lo.backend, planner::Backend::cpu);
  EXPECT_EQ(lo.device, d.get());
}

// Without the CUDA backend compiled in, or without a GPU, "cuda" is refused with the way out.
TEST(Registry, CudaWithoutTheBackendOrAGpuSaysHowToUseTheCpu) {
  if (find_gpu()) GTEST_SKIP() << "this machine has a GPU";
  const std::string e = error_of([] { open_device("cuda"); });
  EXPECT_NE(e.find("run without --device cuda to use the CPU"), std::string::npos) << e;
  if (!is_compiled("cuda")) {
    EXPECT_NE(e.find("built without the CUDA backend (no CUDA toolkit at build time)"),
              std::string::npos)
        << e;
    engine::LoadOptions lo;
    const CpuDevice host;
    EXPECT_NE(error_of([&] { plan_for("cuda", host, lo); }).find("built without"),
              std::string::npos);
  } else {
    EXPECT_NE(e.find("no CUDA device found: "), std::string::npos) << e;
  }
}

// An engine made through the registry is the CPU engine: the same logits, bit for bit, and its
// backend describes the placement the streamer has.
TEST(Registry, CpuEngineMatchesADirectlyMadeOne) {
  const auto ids = first_prompt();
  const auto config = model::ModelConfig::from_model_dir(llama_dir());
  engine::LoadOptions lo;
  lo.placement = engine::Placement::all(config, offload::Tier::disk);
  const auto device = open_device("cpu");
  plan_for("cpu", *device, lo);

  engine::LoadedModel direct_model = engine::load_model(llama_dir(), lo);
  engine::EngineOptions eo;
  eo.context = static_cast<int64_t>(ids.size());
  engine::Engine direct(*direct_model.weights, eo, default_thread_pool());

  engine::LoadedModel m = engine::load_model(llama_dir(), lo);
  EngineSpec spec;
  spec.context = static_cast<int64_t>(ids.size());
  const std::unique_ptr<engine::Engine> made = make_engine(m, spec);
  EXPECT_EQ(made->context(), direct.context());

  const engine::SeqTokens s{0, ids};
  const std::vector<float> want = direct.forward({&s, 1}, engine::LogitsFor::all);
  const std::vector<float>& got = made->forward({&s, 1}, engine::LogitsFor::all);
  EXPECT_EQ(got, want);

  const engine::Backend& b = made->backend();
  EXPECT_EQ(b.describe(), direct_model.weights->streamer().describe());
  ASSERT_NE(b.host_streamer(), nullptr);
  ASSERT_NE(b.streamer_stats(), nullptr);
  EXPECT_GT(b.streamer_stats()->bytes_acquired, 0u);  // every unit streamed from disk
  EXPECT_GE(b.load_s(), 0.0);
  EXPECT_EQ(b.device_name(), "");
}

// A planned run on the CPU: learn_from_run says what was predicted against what was measured,
// and the compute rate the decode achieved; a forced placement (no plan) teaches nothing.
TEST(Registry, LearnFromRunComparesThePlanWithTheRun) {
  const auto ids = first_prompt();
  const auto device = open_device("cpu");
  engine::LoadOptions lo;
  lo.probe.measure = false;  // defaults or cached figures: the test measures nothing
  lo.context = static_cast<int64_t>(ids.size()) + 4;
  plan_for("cpu", *device, lo);
  engine::LoadedModel m = engine::load_model(llama_dir(), lo);
  ASSERT_TRUE(m.plan.has_value());
  EngineSpec spec;
  spec.context = lo.context;
  const auto eng = make_engine(m, spec);
  engine::GenerateOptions go;
  go.max_new_tokens = 4;
  engine::RunOutcome run;
  engine::generate(*eng, 0, ids, go, {}, &run.stats);
  const auto lines = engine::learn_from_run(m, eng->backend(), run);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines[0].rfind("predicted ", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find("; measured "), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("(VmHWM)"), std::string::npos) << lines[0];
  EXPECT_TRUE(std::any_of(lines.begin(), lines.end(), [](const std::string& l) {
    return l.rfind("compute achieved ", 0) == 0;
  }));

  engine::LoadOptions forced = lo;
  forced.placement = engine::Placement::all(m.config, offload::Tier::host);
  engine::LoadedModel f = engine::load_model(llama_dir(), forced);
  const auto feng = make_engine(f, spec);
  EXPECT_TRUE(engine::learn_from_run(f, feng->backend(), run).empty());
}

// The loop from a run to the next plan: what a streaming run learns about the disk is kept
// under the key the next plan of the same model reads. (It was kept under the key of the run's
// mean read size, 8 MiB, while plans read the 16 MiB one, so every plan kept the probe.)
TEST(Registry, ADiskRateLearnedFromARunChangesTheNextPlan) {
  test::TempDir cache;
  const char* old = std::getenv("FERRY_CACHE_DIR");
  const std::string saved = old ? old : "";
  ::setenv("FERRY_CACHE_DIR", cache.path().c_str(), 1);
  const auto device = open_device("cpu");
  engine::LoadOptions lo;
  lo.probe.measure = false;
  lo.context = 16;
  plan_for("cpu", *device, lo);
  const engine::LoadedModel before = engine::load_model(llama_dir(), lo);
  ASSERT_TRUE(before.plan.has_value());
  const double planned = before.plan->request.machine.disk_bytes_per_s.value;
  // What learn_from_run passes for a run that read 1 GiB in 0.4 s (2.68 GB/s).
  const auto learned = engine::learn_disk_rate(before.config, *before.checkpoint, 1ull << 30,
                                               0.4, "a test run");
  ASSERT_TRUE(learned.has_value());
  EXPECT_NE(*learned, planned);
  const engine::LoadedModel after = engine::load_model(llama_dir(), lo);
  const planner::Figure& disk = after.plan->request.machine.disk_bytes_per_s;
  EXPECT_DOUBLE_EQ(disk.value, *learned) << disk.source;
  EXPECT_NE(disk.source.find("a test run"), std::string::npos) << disk.source;
  if (old) {
    ::setenv("FERRY_CACHE_DIR", saved.c_str(), 1);
  } else {
    ::unsetenv("FERRY_CACHE_DIR");
  }
}

// The disk is probed the way the run will read it: the run's I/O engine, queue depth and chunk
// size (FERRY_IO, a tuned policy), not always io_uring's. (Seen: the probe saw 1.27 GB/s where
// runs read 2.6–3.5.)
TEST(Registry, TheDiskIsProbedWithTheRunsIoEngine) {
  test::TempDir dir;
  test::TempDir cache;
  const char* old = std::getenv("FERRY_CACHE_DIR");
  const std::string saved = old ? old : "";
  ::setenv("FERRY_CACHE_DIR", cache.path().c_str(), 1);
  // A 16 MiB safetensors file: big enough to measure.
  const std::string header = R"({"w":{"dtype":"F16","shape":[8192,1024],"data_offsets":[0,16777216]}})";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header;
  bytes += std::string(16u << 20, '\1');
  test::write_file(dir / "model.safetensors", bytes);
  const auto ck = offload::Checkpoint::open(dir.path());
  engine::ProbeOptions po;
  po.reprobe = true;
  po.read_unit_bytes = 8u << 20;
  po.n_embd = 256;
  po.n_inner = 1024;
  po.io.backend = offload::IoBackendKind::buffered;
  const planner::Machine m = engine::probe_machine(&ck, DType::f16, po);
  EXPECT_NE(m.disk_bytes_per_s.source.find("buffered"), std::string::npos)
      << m.disk_bytes_per_s.source;
  if (old) {
    ::setenv("FERRY_CACHE_DIR", saved.c_str(), 1);
  } else {
    ::unsetenv("FERRY_CACHE_DIR");
  }
}

}  // namespace
}  // namespace ferry::backends
