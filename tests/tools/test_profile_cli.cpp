// ferry profile, tune and run --policy/--trace end to end on a small streamed model: files that
// parse, summaries that match, policies that load back, and bad policies refused by field.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

struct Output {
  int rc;
  std::string out;
  std::string err;
};

// Runs the ferry binary with stdout and stderr sent to files (so neither is a terminal).
Output run_ferry(const std::string& args) {
  const test::TempDir tmp;
  const std::string cmd = std::string(FERRY_BIN) + " " + args + " >" + (tmp / "o").string() +
                          " 2>" + (tmp / "e").string() + " </dev/null";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::read_file(tmp / "o"),
          test::read_file(tmp / "e")};
}

class ProfileCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    // Layers of 6 MiB against a budget that holds two slots of them: the layers stream.
    const Output r = run_ferry(
        "make-model --preset tiny --n-layer 4 --n-embd 512 --n-head 8 "
        "--vocab 1024 --dtype f16 -q -o " +
        model().string());
    ASSERT_EQ(r.rc, 0) << r.err;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static fs::path model() { return dir_->path() / "model"; }
  static std::string base() { return "-m " + model().string() + " --max-ram 56MiB --ids '1 2 3'"; }
  static test::TempDir* dir_;
};
test::TempDir* ProfileCli::dir_ = nullptr;

TEST_F(ProfileCli, ProfileWritesTraceReportAndJsonSummary) {
  const test::TempDir out;
  const Output r = run_ferry("profile " + base() + " -n 4 --json --trace " +
                             (out / "t.json").string() + " --report " + (out / "r.html").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos) << "no progress drawn into a pipe";
  const json s = json::parse(r.out);
  EXPECT_EQ(s["decode"]["passes"], 3);
  EXPECT_GT(s["decode"]["s_per_token"].get<double>(), 0.0);
  EXPECT_GT(s["links"][0]["bytes"].get<uint64_t>(), 0u);

  const json t = json::parse(test::read_file(out / "t.json"));
  std::set<std::string> spans;
  std::set<std::string> counters;
  for (const auto& e : t["traceEvents"]) {
    if (e["ph"] == "X") spans.insert(e["name"].get<std::string>());
    if (e["ph"] == "C") counters.insert(e["name"].get<std::string>());
  }
  const json& tiers = t["metadata"]["placement"]["tiers"];
  ASSERT_EQ(tiers.size(), 5u);
  int streamed = 0;
  for (std::size_t u = 0; u < tiers.size(); ++u) {
    const std::string unit = u < 4 ? "layer " + std::to_string(u) : "lm_head";
    EXPECT_TRUE(spans.contains("compute " + unit)) << unit;
    if (tiers[u] == "disk") {
      ++streamed;
      EXPECT_TRUE(spans.contains("read " + unit)) << unit;
    }
  }
  EXPECT_GE(streamed, 2) << "the budget streams the layers";
  EXPECT_TRUE(t["metadata"].contains("plan"));
  EXPECT_TRUE(counters.contains("host RSS bytes"));
  EXPECT_TRUE(counters.contains("staging slots in use"));
  const std::string html = test::read_file(out / "r.html");
  EXPECT_EQ(html.find("http"), std::string::npos);
  EXPECT_NE(html.find("<svg"), std::string::npos);
}

TEST_F(ProfileCli, TuneWritesAPolicyThatRunApplies) {
  const test::TempDir out;
  const fs::path policy = out / "policy.json";
  const Output tuned = run_ferry("tune " + base() + " -n 3 --trials 2 -o " + policy.string());
  ASSERT_EQ(tuned.rc, 0) << tuned.err;
  EXPECT_NE(tuned.out.find("the default"), std::string::npos) << tuned.out;
  const json p = json::parse(test::read_file(policy));
  EXPECT_EQ(p["ferry_policy"], 1);
  EXPECT_GT(p["measured"]["disk_read_gbps"].get<double>(), 0.0);

  const Output run = run_ferry("run " + base() + " -n 3 --policy " + policy.string() + " --trace " +
                               (out / "run.json").string());
  ASSERT_EQ(run.rc, 0) << run.err;
  const json t = json::parse(test::read_file(out / "run.json"));
  int passes = 0;
  for (const auto& e : t["traceEvents"]) passes += e["ph"] == "X" && e["cat"] == "pass";
  EXPECT_EQ(passes, 3);
}

TEST_F(ProfileCli, BadPolicyIsRefusedNamingTheField) {
  const test::TempDir out;
  test::write_file(out / "p.json",
                   R"({"ferry_policy": 1, "io": {"engine": "uring", "chunk_bytes": 1000}})");
  const Output r = run_ferry("run " + base() + " -n 1 --policy " + (out / "p.json").string());
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("\"io.chunk_bytes\""), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ferry tune"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ferry
