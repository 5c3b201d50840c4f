// Machine profiles and the probe cache.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "planner/machine.hpp"
#include "planner/probe_cache.hpp"
#include "runtime/core/error.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::planner {
namespace {

TEST(Machine, BuiltinProfilesLoad) {
  for (const auto& name : builtin_profiles()) {
    const Machine m = load_profile(name);
    EXPECT_EQ(m.name, name);
    EXPECT_GT(m.ram_bytes.value, 1e9) << name;
    EXPECT_GT(m.disk_bytes_per_s.value, 0) << name;
    EXPECT_NE(m.ram_bytes.source.find(name), std::string::npos) << name;
  }
  const Machine t4 = load_profile("colab-t4");
  ASSERT_TRUE(t4.gpu);
  EXPECT_DOUBLE_EQ(t4.gpu->h2d_bytes_per_s.value, 12.9e9);
  EXPECT_DOUBLE_EQ(t4.disk_bytes_per_s.value, 0.47e9);
  EXPECT_FALSE(load_profile("colab-cpu").gpu);
}

TEST(Machine, ProfileFileRoundTrip) {
  test::TempDir d;
  const Machine t4 = load_profile("colab-t4");
  test::write_file(d / "m.json", machine_to_json(t4).dump());
  const Machine m = load_profile((d / "m.json").string());
  EXPECT_EQ(m.ram_bytes.bytes(), t4.ram_bytes.bytes());
  ASSERT_TRUE(m.gpu);
  EXPECT_EQ(m.gpu->vram_bytes.bytes(), t4.gpu->vram_bytes.bytes());
}

TEST(Machine, BadProfilesNameTheProblem) {
  test::TempDir d;
  auto expect_error = [&](const std::string& text, const std::string& needle) {
    test::write_file(d / "p.json", text);
    try {
      load_profile((d / "p.json").string());
      ADD_FAILURE() << "accepted " << text;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("{", "not valid JSON");
  expect_error("[1]", "not a JSON object");
  expect_error(R"({"disk_bytes_per_s": 1e9, "cpu_compute_bytes_per_s": 1e9})", "\"ram_bytes\"");
  expect_error(R"({"ram_bytes": -5, "disk_bytes_per_s": 1e9, "cpu_compute_bytes_per_s": 1e9})",
               "positive number");
  expect_error(R"({"ram_bytes": 1e9, "disk_bytes_per_s": 1e9, "cpu_compute_bytes_per_s": 1e9,
                   "gpu": {"name": "x"}})",
               "\"vram_bytes\"");
  try {
    load_profile("no-such-machine");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("colab-t4"), std::string::npos) << e.what();
  }
}

TEST(ProbeCache, RoundTripAndAge) {
  test::TempDir d;
  ProbeCache cache(d / "sub" / "probes.json");
  EXPECT_FALSE(cache.get("disk 1:2"));
  cache.put("disk 1:2", 1.5e9, "a read");
  const auto f = cache.get("disk 1:2");
  ASSERT_TRUE(f);
  EXPECT_DOUBLE_EQ(f->value, 1.5e9);
  EXPECT_EQ(f->how, "a read");
  EXPECT_LT(f->age_days, 0.01);
  // An old figure is not used.
  test::write_file(d / "sub" / "probes.json",
                   R"({"disk 1:2": {"value": 2e9, "measured_at": "2020-01-01T00:00:00Z"}})");
  EXPECT_FALSE(cache.get("disk 1:2"));
  EXPECT_TRUE(cache.get("disk 1:2", 1e6));
  // A corrupt file reads as empty and is replaced on the next put.
  test::write_file(d / "sub" / "probes.json", "{{{");
  EXPECT_FALSE(cache.get("disk 1:2"));
  cache.put("cpu x", 3e9, "");
  EXPECT_TRUE(cache.get("cpu x"));
}

// Seen: rates of 1e-300, 1 or 1e308 in probes.json gave "-nan s/token", 153,391,104 s/token, or
// 0 of 13 layers resident with room for 3, and every run only halved the error. A figure outside
// its physical range is not read (so the next probe replaces it) and not learned.
TEST(ProbeCache, AbsurdRatesAreNeitherReadNorLearned) {
  test::TempDir d;
  ProbeCache cache(d / "probes.json");
  for (const char* v : {"1e-300", "1", "1e308", "-5", "0"}) {
    test::write_file(d / "probes.json",
                     fmt::format(R"({{"disk 1:2, 16.0 MiB reads": {{"value": {0}, )"
                                 R"("measured_at": "{1}"}}, )"
                                 R"("cpu avx2 f16": {{"value": {0}, "measured_at": "{1}"}}}})",
                                 v, "2026-12-06T00:00:00Z"));
    EXPECT_FALSE(cache.get("disk 1:2, 16.0 MiB reads", 1e6)) << v;
    EXPECT_FALSE(cache.get("cpu avx2 f16", 1e6)) << v;
    // A run's sample replaces it outright: the absurd figure is not averaged in.
    const auto learned = cache.learn("cpu avx2 f16", 2e10, "a run");
    ASSERT_TRUE(learned) << v;
    EXPECT_DOUBLE_EQ(*learned, 2e10) << v;
    EXPECT_DOUBLE_EQ(cache.get("cpu avx2 f16", 1e6)->value, 2e10) << v;
  }
  EXPECT_FALSE(cache.learn("disk 1:2", 1e-300, "a run"));
  EXPECT_FALSE(cache.learn("disk 1:2", 1e308, "a run"));
  EXPECT_FALSE(cache.get("disk 1:2"));
  cache.put("disk 1:2", 1e308, "a probe");
  EXPECT_FALSE(cache.get("disk 1:2"));
  for (const char* key : {"disk x", "cpu x", "gpu x", "h2d x"}) {
    EXPECT_TRUE(plausible_rate(key).contains(2e9)) << key;
    EXPECT_FALSE(plausible_rate(key).contains(1e-300)) << key;
    EXPECT_FALSE(plausible_rate(key).contains(1e15)) << key;
  }
}

// Learned figures are the median of the last runs: one outlier is outvoted, never averaged in,
// and the figure follows a real change once runs agree on it.
TEST(ProbeCache, LearnedOutliersAreOutvoted) {
  test::TempDir d;
  ProbeCache cache(d / "probes.json");
  cache.put("disk 1:2", 1.6e9, "a probe");
  EXPECT_DOUBLE_EQ(*cache.learn("disk 1:2", 1.8e9, "run 1"), 1.7e9);  // agree: the mean
  EXPECT_DOUBLE_EQ(*cache.learn("disk 1:2", 1.9e9, "run 2"), 1.8e9);  // the median
  EXPECT_DOUBLE_EQ(*cache.learn("disk 1:2", 150e9, "run 3, from the page cache"), 1.85e9);
  EXPECT_DOUBLE_EQ(*cache.learn("disk 1:2", 1.7e9, "run 4"), 1.8e9);
  // Two samples far apart: the older stands until a third decides.
  cache.put("cpu y", 2e10, "a probe");
  EXPECT_DOUBLE_EQ(*cache.learn("cpu y", 1e8, "a tiny run"), 2e10);
  EXPECT_DOUBLE_EQ(*cache.learn("cpu y", 2.2e10, "a run"), 2e10);
  // Only the last few samples count: a machine that changed is followed.
  for (int i = 0; i < 5; ++i) cache.learn("cpu y", 4e10, "a faster machine");
  EXPECT_DOUBLE_EQ(cache.get("cpu y")->value, 4e10);
}

TEST(ProbeCache, OffDisablesIt) {
  ProbeCache cache(std::nullopt);
  cache.put("k", 1, "");
  EXPECT_FALSE(cache.get("k"));
}

TEST(ProbeCache, DiskKeyNamesTheDevice) {
  test::TempDir d;
  test::write_file(d / "f", "x");
  EXPECT_EQ(disk_cache_key(d / "f").rfind("disk ", 0), 0u);
  EXPECT_NE(disk_cache_key(d / "f"), "disk ?");
}

TEST(Memlock, ProbeSaysWhereItCameFrom) {
  const Figure f = probe_memlock();
  EXPECT_TRUE(f.known());
  EXPECT_GT(f.value, 0);
}

}  // namespace
}  // namespace ferry::planner
