// The batch sweep `ferry plan --batch` prints and `--kv-tokens auto` sizes its pool by: one plan
// per batch of 1, 2, 4 … max sequences at full context, the fastest chosen with a 2% margin for
// bigger batches, points that do not fit kept with their refusal, and the choice said in words.
// GPT-J-6B's shape from its config.json alone, on machines described in the test.
#include <gtest/gtest.h>

#include <string>

#include "planner/machine.hpp"
#include "runtime/core/error.hpp"
#include "runtime/session/plan.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::session {
namespace {

constexpr uint64_t kGiB = uint64_t{1} << 30;

planner::Machine cpu_machine(uint64_t ram) {
  planner::Machine m;
  m.name = "test";
  m.ram_bytes = {static_cast<double>(ram), "test"};
  m.ram_is_explicit_cap = true;
  m.memlock_bytes = {static_cast<double>(uint64_t{1} << 62), "test"};
  m.disk_bytes_per_s = {2e9, "test"};
  m.cpu_compute_bytes_per_s = {2e10, "test"};
  m.cpu_row_bytes_per_s = {2e11, "test"};
  return m;
}

class BatchSweepTest : public ::testing::Test {
 protected:
  PlanSource source_ = open_plan_source(test::data_dir() / "gptj-6b-config" / "config.json");
  BatchSweep sweep(const planner::Machine& m, int max_seqs, int64_t ctx = 2048) {
    const engine::PlanOptions po = plan_options(source_.config, ctx, max_seqs, "cpu", m);
    return sweep_batches(source_.config, source_.weights(), m, po, max_seqs, "gptj");
  }
};

TEST_F(BatchSweepTest, PlansOneTwoFourUpToTheMaximum) {
  const BatchSweep s = sweep(cpu_machine(16 * kGiB), 6);
  ASSERT_EQ(s.points.size(), 4u);
  const int want[] = {1, 2, 4, 6};
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(s.points[i].seqs, want[i]);
    // Each sequence holds whole 32-token blocks at the full context.
    EXPECT_EQ(s.points[i].kv_tokens, int64_t{want[i]} * 2048);
    ASSERT_TRUE(s.points[i].plan) << s.points[i].refusal;
    EXPECT_EQ(s.points[i].plan->request.batch, want[i]);
    EXPECT_GT(s.points[i].tokens_per_s(), 0);
  }
  EXPECT_EQ(sweep(cpu_machine(8 * kGiB), 1).points.size(), 1u);
}

// Disk-bound: each step's streamed bytes serve every sequence, so the biggest batch wins by far.
TEST_F(BatchSweepTest, ChoosesTheFastestAndSaysWhy) {
  const BatchSweep s = sweep(cpu_machine(8 * kGiB), 8, 256);
  ASSERT_TRUE(s.any_fits());
  const SweepPoint& best = s.best();
  for (const SweepPoint& p : s.points) {
    ASSERT_TRUE(p.plan);
    EXPECT_LE(p.tokens_per_s(), best.tokens_per_s() * (1 + kSweepMargin)) << p.seqs;
  }
  EXPECT_EQ(best.seqs, 8);
  EXPECT_NE(s.why.find("KV pool for 8 full-context sequences (2048 tokens): predicted"),
            std::string::npos)
      << s.why;
  EXPECT_NE(s.why.find("tokens/s together with"), std::string::npos) << s.why;
}

// A bigger batch must beat the chosen by the margin: all within 2% keeps the smallest.
TEST_F(BatchSweepTest, ABiggerBatchMustWinByTheMargin) {
  // All resident and compute-bound with extra rows at the mat-vec's own rate: each sequence
  // costs as much as the first, so every batch decodes about the same tokens/s.
  planner::Machine m = cpu_machine(64 * kGiB);
  m.cpu_row_bytes_per_s = m.cpu_compute_bytes_per_s;
  const BatchSweep s = sweep(m, 4, 64);
  ASSERT_EQ(s.points.size(), 3u);
  EXPECT_EQ(s.chosen, 0u) << s.why;
  EXPECT_NE(s.why.find("; 4 sequences' caches would leave"), std::string::npos) << s.why;
}

// Points that do not fit keep the planner's refusal; the choice is among those that do, and
// says a bigger pool does not fit.
TEST_F(BatchSweepTest, KeepsTheRefusalOfWhatDoesNotFit) {
  // GPT-J's f32 KV on the CPU: 1.75 GiB per 2048-token sequence; 16 of them cannot fit 6 GiB.
  const BatchSweep s = sweep(cpu_machine(6 * kGiB), 16);
  ASSERT_EQ(s.points.size(), 5u);
  EXPECT_TRUE(s.points.front().plan);
  EXPECT_FALSE(s.points.back().plan);
  EXPECT_NE(s.points.back().refusal.find("raise --max-ram"), std::string::npos)
      << s.points.back().refusal;
  EXPECT_EQ(s.points.back().tokens_per_s(), 0);
  EXPECT_TRUE(s.best().plan);
  EXPECT_NE(s.why.find("; a bigger pool does not fit the budget"), std::string::npos) << s.why;
}

// A GPU short of VRAM (GPT-J f16 on a T4 capped at 4 GiB, RAM for every layer): each point's
// plan chooses where its KV pool lives. Automatic puts the caches in host memory, where every
// batch fits and the biggest is fastest; kept in VRAM (--kv-memory device), the pool leaves
// fewer units there and more sequences do not fit at all. The sweep says which memory it chose.
TEST_F(BatchSweepTest, OnAGpuShortOfVramEachPointChoosesWhereItsKvLives) {
  planner::Machine m = planner::load_profile("colab-t4");
  m.ram_bytes = {20.0 * kGiB, "--max-ram"};
  m.ram_is_explicit_cap = true;
  m.gpu->vram_bytes = {4.0 * kGiB, "--max-vram"};
  engine::PlanOptions po = plan_options(source_.config, 2048, 4, "cuda", m);
  const BatchSweep automatic = sweep_batches(source_.config, nullptr, m, po, 4, "gptj");
  ASSERT_EQ(automatic.points.size(), 3u);
  for (const SweepPoint& p : automatic.points) {
    ASSERT_TRUE(p.plan) << p.refusal;
    EXPECT_EQ(p.plan->chosen.kv, planner::KvPlace::host) << p.seqs;
  }
  EXPECT_EQ(automatic.best().seqs, 4);
  EXPECT_NE(automatic.why.find("KV pool for 4 full-context sequences (8192 tokens in host memory "
                               "(pinned, read over PCIe)): predicted"),
            std::string::npos)
      << automatic.why;

  po.kv_memory = planner::KvMemory::device;
  const BatchSweep in_vram = sweep_batches(source_.config, nullptr, m, po, 4, "gptj");
  ASSERT_TRUE(in_vram.points.front().plan) << in_vram.points.front().refusal;
  EXPECT_EQ(in_vram.points.front().plan->chosen.kv, planner::KvPlace::device);
  EXPECT_LT(in_vram.points.front().plan->chosen.count(Tier::device),
            automatic.points.front().plan->chosen.count(Tier::device));
  EXPECT_FALSE(in_vram.points.back().plan);
  EXPECT_NE(in_vram.points.back().refusal.find("--kv-memory"), std::string::npos)
      << in_vram.points.back().refusal;
  EXPECT_NE(in_vram.why.find(" in VRAM): predicted"), std::string::npos) << in_vram.why;
  EXPECT_LT(in_vram.best().tokens_per_s(), automatic.best().tokens_per_s());

  // The CPU backend has no VRAM to put it in.
  engine::PlanOptions cpu = plan_options(source_.config, 2048, 2, "cpu", cpu_machine(16 * kGiB));
  cpu.kv_memory = planner::KvMemory::device;
  EXPECT_THROW(sweep_batches(source_.config, nullptr, cpu_machine(16 * kGiB), cpu, 2), Error);
}

TEST_F(BatchSweepTest, NothingFits) {
  const BatchSweep s = sweep(cpu_machine(kGiB / 2), 2);
  EXPECT_FALSE(s.any_fits());
  EXPECT_EQ(s.why, "no batch fits the budgets");
}

}  // namespace
}  // namespace ferry::session
