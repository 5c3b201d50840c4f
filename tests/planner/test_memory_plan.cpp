#include <gtest/gtest.h>

#include "planner/memory_plan.hpp"
#include "runtime/core/error.hpp"

namespace ferry::planner {
namespace {

constexpr uint64_t kMiB = 1ull << 20;

MemoryRequest gptj_like(uint64_t budget) {
  MemoryRequest r;
  r.unit_bytes.assign(28, 384 * kMiB);  // GPT-J-6B blocks in f16
  r.unit_bytes.push_back(394 * kMiB);   // lm_head
  r.fixed_bytes = 600 * kMiB;
  r.budget_bytes = budget;
  r.budget_source = "--max-ram";
  return r;
}

TEST(MemoryPlan, EverythingResidentWhenItFits) {
  const MemoryPlan p = plan_memory(gptj_like(20000 * kMiB));
  EXPECT_EQ(p.resident_units(), 29u);
  EXPECT_EQ(p.slot_count, 0u);
  EXPECT_EQ(p.peak_bytes, 600 * kMiB + 28 * 384 * kMiB + 394 * kMiB);
}

TEST(MemoryPlan, StreamsTheRestThroughThreeSlots) {
  const uint64_t budget = 4096 * kMiB;
  const MemoryPlan p = plan_memory(gptj_like(budget));
  EXPECT_EQ(p.slot_count, 3u);
  EXPECT_EQ(p.slot_bytes, 394 * kMiB);
  // 4096 - 600 - 3·394 = 2314 MiB: six 384 MiB blocks.
  EXPECT_EQ(p.resident_units(), 6u);
  for (std::size_t i = 0; i < p.tiers.size(); ++i)
    EXPECT_EQ(p.tiers[i], i < 6 ? UnitTier::resident : UnitTier::streamed) << i;
  EXPECT_LE(p.peak_bytes, budget);
  EXPECT_NE(p.describe(budget).find("6 of 29 units resident"), std::string::npos);
}

TEST(MemoryPlan, TwoSlotsWhenThreeDoNotFit) {
  const MemoryPlan p = plan_memory(gptj_like(600 * kMiB + 2 * 394 * kMiB + 10));
  EXPECT_EQ(p.slot_count, 2u);
  EXPECT_EQ(p.resident_units(), 0u);
}

TEST(MemoryPlan, RefusesWithTheMinimum) {
  try {
    plan_memory(gptj_like(1024 * kMiB));
    ADD_FAILURE() << "accepted an impossible budget";
  } catch (const PlanError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("at least 1.36 GiB"), std::string::npos)
        << msg;  // 600 + 2·394 MiB = 1.355 GiB
    EXPECT_NE(msg.find("--max-ram allows 1.00 GiB"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace ferry::planner
