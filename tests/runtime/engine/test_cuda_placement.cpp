// A CUDA plan becomes a placement with device tiers and device slots when the CUDA backend is
// compiled in, and a PlanError naming the way out when it is not. Runs without a GPU (the
// machine is a saved profile).
#include <gtest/gtest.h>

#include <string>

#include "planner/machine.hpp"
#include "planner/plan.hpp"
#include "runtime/core/error.hpp"
#include "runtime/engine/planning.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

planner::Plan cuda_plan(const model::ModelConfig& config, double vram_bytes) {
  planner::Machine m = planner::load_profile("colab-t4");
  m.gpu->vram_bytes = {vram_bytes, "test"};
  PlanOptions po;
  po.backend = planner::Backend::cuda;
  po.context = 64;
  po.max_batch_rows = 64;
  po.max_logit_rows = 1;
  return planner::make_plan(plan_request(config, nullptr, m, po, "tiny"));
}

TEST(CudaPlacement, CudaPlanKeepsDeviceTiers) {
  const auto config = model::ModelConfig::from_model_dir(test::data_dir() / "gptj/tiny-f32");
  const planner::Plan plan = cuda_plan(config, 15e9);
#ifdef FERRY_HAS_CUDA
  const Placement p = placement_from_plan(plan, config);
  ASSERT_EQ(p.blocks.size(), static_cast<std::size_t>(config.n_layer));
  for (std::size_t i = 0; i < p.blocks.size(); ++i) {
    const auto want = plan.chosen.tiers[i] == planner::Tier::device ? offload::Tier::device
                      : plan.chosen.tiers[i] == planner::Tier::host ? offload::Tier::host
                                                                    : offload::Tier::disk;
    EXPECT_EQ(p.blocks[i], want) << i;
  }
  EXPECT_EQ(p.blocks[0], offload::Tier::device);  // a tiny model fits a T4
  EXPECT_GE(p.slot_count, 2u);
  EXPECT_GE(p.device_slots, 2u);
#else
  try {
    (void)placement_from_plan(plan, config);
    ADD_FAILURE() << "a CUDA plan was accepted by a build without CUDA";
  } catch (const PlanError& e) {
    EXPECT_NE(std::string(e.what()).find("--device cpu"), std::string::npos) << e.what();
  }
#endif
}

// A pack on the GPU: its units are the packed bytes, and the device also holds the f16 buffer
// that packed matrices are dequantized into for cuBLAS (n_inner × n_embd × 2 bytes).
TEST(CudaPlacement, PackPlansCountTheDequantizationBuffer) {
  const auto config = model::ModelConfig::from_model_dir(test::data_dir() / "gptj/tiny-f32");
  const planner::Machine m = planner::load_profile("colab-t4");
  PlanOptions po;
  po.backend = planner::Backend::cuda;
  po.context = 64;
  const planner::PlanRequest f16 = plan_request(config, nullptr, m, po, "tiny");
  po.format = model::WeightFormat::parse("int4", 64);
  const planner::PlanRequest q4 = plan_request(config, nullptr, m, po, "tiny");
  EXPECT_EQ(q4.device_fixed_bytes - f16.device_fixed_bytes,
            static_cast<uint64_t>(config.n_inner * config.n_embd * 2));
  EXPECT_LT(q4.units[0].bytes, f16.units[0].bytes / 3);
  po.backend = planner::Backend::cpu;
  EXPECT_EQ(plan_request(config, nullptr, m, po, "tiny").device_fixed_bytes, 0u);
}

}  // namespace
}  // namespace ferry::engine
