// The registry's CUDA engine (label gpu; skipped without a device): made for a model planned for
// the GPU, it computes Hugging Face's logits for the f32 Llama-3-style fixture within the CPU's
// 2e-5, and its backend reports the device and its VRAM residency.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "runtime/backends/registry.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::backends {
namespace {

TEST(RegistryGpu, CudaEngineMatchesHuggingFace) {
  const auto gpu = find_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA device";
  const auto dir = test::data_dir() / "llama" / "llama3-gqa-f32";
  const auto expected = nlohmann::json::parse(test::read_file(dir / "expected.json"));
  const auto& p = expected["prompts"][0];
  const auto ids = p["input_ids"].get<std::vector<int32_t>>();
  const auto want = p["last_logits"].get<std::vector<float>>();

  const auto device = open_device("cuda");
  engine::LoadOptions lo;
  lo.probe.measure = false;
  lo.context = static_cast<int64_t>(ids.size());
  plan_for("cuda", *device, lo);
  engine::LoadedModel m = engine::load_model(dir, lo);
  EXPECT_EQ(m.backend, planner::Backend::cuda);
  EngineSpec spec;
  spec.context = lo.context;
  const auto eng = make_engine(m, spec);
  const engine::SeqTokens s{0, ids};
  const auto& got = eng->forward({&s, 1}, engine::LogitsFor::last);
  ASSERT_EQ(got.size(), want.size());
  float worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i)
    worst = std::max(worst, std::fabs(got[i] - want[i]));
  EXPECT_LE(worst, 2e-5f);
  EXPECT_EQ(eng->backend().device_name(), device->name());
  EXPECT_NE(eng->backend().describe().find("units in VRAM"), std::string::npos);
}

// --kv-memory host through the whole path: the plan puts the KV pool in host memory, the
// registry's engine allocates it there (mapped, read over PCIe), and the logits are the ones the
// pool in VRAM gives, bit for bit.
TEST(RegistryGpu, KvPoolInHostMemoryAsPlanned) {
  const auto gpu = find_gpu();
  if (!gpu) GTEST_SKIP() << "no CUDA device";
  const auto dir = test::data_dir() / "llama" / "llama3-gqa-f32";
  const std::vector<int32_t> ids = {5, 17, 300, 2, 9, 8};
  const auto device = open_device("cuda");
  std::vector<std::vector<float>> logits;
  for (const planner::KvMemory where : {planner::KvMemory::device, planner::KvMemory::host}) {
    engine::LoadOptions lo;
    lo.probe.measure = false;
    lo.context = 64;
    lo.kv_memory = where;
    plan_for("cuda", *device, lo);
    engine::LoadedModel m = engine::load_model(dir, lo);
    ASSERT_TRUE(m.plan);
    const bool host = where == planner::KvMemory::host;
    EXPECT_EQ(m.plan->chosen.kv, host ? planner::KvPlace::host : planner::KvPlace::device);
    EngineSpec spec;
    spec.context = lo.context;
    const auto eng = make_engine(m, spec);
    EXPECT_EQ(eng->backend().describe().find("in host memory (mapped") != std::string::npos, host)
        << eng->backend().describe();
    const engine::SeqTokens s{0, ids};
    logits.push_back(eng->forward({&s, 1}, engine::LogitsFor::last));
  }
  EXPECT_TRUE(logits[0] == logits[1]);
}

}  // namespace
}  // namespace ferry::backends
