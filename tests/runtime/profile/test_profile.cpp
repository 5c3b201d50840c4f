// A profiled streamed run: its Chrome trace has a read and a compute span for every unit and
// memory counters; its summary agrees with the generation loop's own timings; its HTML report
// is one self-contained file.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "runtime/core/error.hpp"
#include "runtime/profile/html_report.hpp"
#include "runtime/profile/profile_run.hpp"
#include "tests/runtime/profile/profile_fixture.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::profile {
namespace {

using nlohmann::json;

class ProfileTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    test_fixture::make_tiny_model(dir_->path());
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static ProfileOptions options(int64_t n = 5) {
    ProfileOptions o;
    o.model_dir = dir_->path();
    o.load = test_fixture::all_streamed();
    o.prompt = {1, 2, 3};
    o.n_tokens = n;
    return o;
  }
  static test::TempDir* dir_;
};
test::TempDir* ProfileTest::dir_ = nullptr;

TEST_F(ProfileTest, ChromeTraceHasReadAndComputeSpansForEveryUnitAndMemoryCounters) {
  const ProfileRun r = run_profile(options());
  const test::TempDir out;
  trace::write_chrome_trace(r.trace, out / "run.json");
  const json j = json::parse(test::read_file(out / "run.json"));

  std::map<int, std::string> rows;
  std::map<std::string, std::set<std::string>> spans_by_cat;  // cat → names
  std::map<std::string, std::set<int>> tids_by_cat;
  std::set<std::string> counters;
  for (const auto& e : j.at("traceEvents")) {
    const std::string ph = e.at("ph");
    if (ph == "M" && e["name"] == "thread_name") rows[e["tid"]] = e["args"]["name"];
    if (ph == "X") {
      spans_by_cat[e.at("cat")].insert(e.at("name").get<std::string>());
      tids_by_cat[e.at("cat")].insert(e.at("tid").get<int>());
      EXPECT_GE(e.at("dur").get<double>(), 0.0);
    }
    if (ph == "C") counters.insert(e.at("name").get<std::string>());
  }
  const int n_layer = static_cast<int>(test_fixture::tiny_config().n_layer);
  for (int l = 0; l < n_layer; ++l) {
    EXPECT_TRUE(spans_by_cat["read"].contains("read layer " + std::to_string(l))) << l;
    EXPECT_TRUE(spans_by_cat["compute"].contains("compute layer " + std::to_string(l))) << l;
  }
  EXPECT_TRUE(spans_by_cat["read"].contains("read lm_head"));
  EXPECT_TRUE(spans_by_cat["compute"].contains("compute lm_head"));
  EXPECT_EQ(spans_by_cat["pass"].size(), 2u) << "a prompt pass of 3 tokens and 1-token passes";
  for (const char* c : {"host RSS bytes", "staging slots in use", "pinned bytes", "staging bytes",
                        "resident weight bytes"})
    EXPECT_TRUE(counters.contains(c)) << c;
  // Reads sit on the I/O queue's rows, compute on the compute stream's.
  for (int tid : tids_by_cat["read"]) EXPECT_EQ(rows[tid].rfind("I/O queue 0", 0), 0u) << rows[tid];
  for (int tid : tids_by_cat["compute"])
    EXPECT_EQ(rows[tid].rfind("compute stream 0", 0), 0u) << rows[tid];
  EXPECT_EQ(j["metadata"]["placement"]["slot_count"], 3);
  EXPECT_EQ(j["metadata"]["placement"]["tiers"].size(), static_cast<std::size_t>(n_layer + 1));
  EXPECT_EQ(j["metadata"]["model"]["n_layer"], n_layer);
}

TEST_F(ProfileTest, SummaryAgreesWithTheGenerationLoop) {
  const ProfileRun r = run_profile(options(6));
  const Summary& s = r.summary;
  EXPECT_EQ(r.tokens.size(), 6u);
  EXPECT_EQ(s.prompt.tokens, 3);
  EXPECT_EQ(s.prompt.passes, 1);
  EXPECT_EQ(s.decode.passes, 5);
  EXPECT_EQ(s.decode.tokens, r.stats.decode_steps);
  EXPECT_DOUBLE_EQ(s.decode.s_per_token, r.stats.decode_s / 5.0);
  EXPECT_DOUBLE_EQ(s.prompt.wall_s, r.stats.prompt_s);
  // The passes run inside the loop's measured time; the links' busy time inside the passes'.
  double pass_s = 0;
  for (const auto& e : r.trace.spans)
    if (e.kind == trace::SpanKind::pass)
      pass_s += static_cast<double>(e.end_ns - e.begin_ns) * 1e-9;
  EXPECT_LE(pass_s, r.stats.prompt_s + r.stats.decode_s);
  ASSERT_EQ(s.links.size(), 2u);
  for (const auto& l : s.links) {
    EXPECT_GE(l.busy_share, 0.0);
    EXPECT_LE(l.busy_share, 1.0 + 1e-9);
  }
  // Every pass reads every unit once: the bytes of a pass are the units' bytes.
  uint64_t unit_bytes = 0;
  for (const auto& e : r.trace.spans)
    if (e.kind == trace::SpanKind::read) unit_bytes = std::max(unit_bytes, e.nbytes);
  EXPECT_GT(s.streamed_bytes_per_pass, unit_bytes);
  EXPECT_GT(s.links[0].achieved_gbps, 0.0);
  EXPECT_GT(s.decode.bound_s_per_pass, 0.0);
  EXPECT_DOUBLE_EQ(s.decode.overlap_efficiency, s.decode.bound_s_per_pass / s.decode.s_per_pass);
  EXPECT_FALSE(s.planner_s_per_token.has_value()) << "the placement was forced: no plan";

  const json j = to_json(s);
  EXPECT_DOUBLE_EQ(j["decode"]["s_per_token"].get<double>(), s.decode.s_per_token);
  EXPECT_TRUE(j["prediction"]["planner_s_per_token"].is_null());
  EXPECT_NE(format_summary(s).find("overlap efficiency"), std::string::npos);
}

TEST_F(ProfileTest, HtmlReportIsOneSelfContainedFile) {
  const ProfileRun r = run_profile(options());
  const std::string html = render_html_report(r.trace, r.summary, {"report <test>", 2});
  EXPECT_EQ(html.find("http"), std::string::npos) << "nothing is fetched";
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("src="), std::string::npos);
  EXPECT_EQ(html.find("<link"), std::string::npos);
  EXPECT_NE(html.find("report &lt;test&gt;"), std::string::npos) << "the title is escaped";
  EXPECT_EQ(std::count(html.begin(), html.end(), '\0'), 0);
  EXPECT_NE(html.find("I/O queue 0"), std::string::npos);
  EXPECT_NE(html.find("compute stream 0"), std::string::npos);
  EXPECT_NE(html.find("read layer 0"), std::string::npos);
  EXPECT_NE(html.find("host RSS bytes"), std::string::npos);
  EXPECT_NE(html.find("overlap efficiency"), std::string::npos);
  EXPECT_EQ(html.rfind("</html>\n"), html.size() - 8);
}

TEST_F(ProfileTest, WithoutTracingOnlyTheLoopTimingsAreKept) {
  ProfileOptions o = options(4);
  o.trace = false;
  const ProfileRun r = run_profile(o);
  EXPECT_TRUE(r.trace.spans.empty());
  EXPECT_FALSE(trace::enabled());
  EXPECT_DOUBLE_EQ(r.summary.decode.s_per_token, r.stats.decode_s / 3.0);
}

TEST_F(ProfileTest, AskingForNoTokensIsRefused) {
  ProfileOptions o = options(0);
  try {
    run_profile(o);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("-n"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(trace::enabled());
}

}  // namespace
}  // namespace ferry::profile
