// tune on a tiny streamed model with three trials: it runs no more candidates than asked, keeps
// the default unless a candidate beat it again, and writes a policy that loads back with the
// measured figures the planner reads.
#include <gtest/gtest.h>

#include "runtime/core/error.hpp"
#include "runtime/profile/tune.hpp"
#include "tests/runtime/profile/profile_fixture.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::profile {
namespace {

TEST(Tune, ThreeTrialsOnATinyStreamedModel) {
  const test::TempDir tmp;
  test_fixture::make_tiny_model(tmp.path());
  TuneOptions o;
  o.model_dir = tmp.path();
  o.load = test_fixture::all_streamed();
  o.prompt = {5, 6};
  o.n_tokens = 3;
  o.trials = 3;
  int calls = 0;
  const TuneResult r = tune(o, [&](int done, int total, const Trial&) {
    ++calls;
    EXPECT_EQ(total, 3);
    EXPECT_EQ(done, calls);
  });
  EXPECT_EQ(calls, 3);
  ASSERT_EQ(r.trials.size(), 3u);
  EXPECT_TRUE(r.trials[0].policy.same_knobs(default_policy())) << "trial 1 is the default";
  EXPECT_EQ(r.trials[1].policy.slot_count, 4u) << "the slot count is tried first";
  for (const Trial& t : r.trials) EXPECT_TRUE(t.error.empty()) << t.error;
  EXPECT_GE(r.speedup, 1.0) << "the winner is kept only when it beats the default";
  EXPECT_LE(r.winner.s_per_token, r.baseline.s_per_token);
  EXPECT_TRUE(r.best.same_knobs(r.winner.policy));

  const auto& m = r.best.measured;
  EXPECT_GT(m.at("disk_read_gbps").get<double>(), 0.0);
  EXPECT_GT(m.at("compute_s_per_token").get<double>(), 0.0);
  EXPECT_EQ(m.at("trials"), 3);
  save_policy(tmp / "policy.json", r.best);
  EXPECT_TRUE(load_policy(tmp / "policy.json").same_knobs(r.best));
}

TEST(Tune, ZeroTrialsIsRefused) {
  TuneOptions o;
  o.trials = 0;
  EXPECT_THROW(tune(o), InvalidArgument);
}

}  // namespace
}  // namespace ferry::profile
