#include <gtest/gtest.h>

#include "planner/memory_probe.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::planner {
namespace {

namespace fs = std::filesystem;

void put(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  test::write_file(p, text);
}

TEST(MemoryProbe, NoCgroupLimit) {
  test::TempDir d;
  put(d / "proc/meminfo", "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n");
  put(d / "proc/self/cgroup", "0::/user.slice\n");
  put(d / "cg/user.slice/memory.max", "max\n");
  put(d / "cg/user.slice/memory.current", "123\n");
  const RamProbe p = probe_ram(d / "proc", d / "cg");
  EXPECT_EQ(p.mem_available_bytes, 8000000ull * 1024);
  EXPECT_FALSE(p.cgroup_available_bytes);
  EXPECT_EQ(p.available_bytes(), 8000000ull * 1024);
}

// cgroup v2: the tightest ancestor binds, and reclaimable file cache is not counted as used.
TEST(MemoryProbe, CgroupV2WalksUp) {
  test::TempDir d;
  put(d / "proc/meminfo", "MemAvailable: 8000000 kB\n");
  put(d / "proc/self/cgroup", "0::/a/b\n");
  put(d / "cg/a/b/memory.max", "max\n");
  put(d / "cg/a/b/memory.current", "100\n");
  put(d / "cg/a/memory.max", "4294967296\n");
  put(d / "cg/a/memory.current", "1073741824\n");
  put(d / "cg/a/memory.stat", "anon 1\ninactive_file 536870912\n");
  const RamProbe p = probe_ram(d / "proc", d / "cg");
  EXPECT_EQ(p.cgroup_version, 2);
  ASSERT_TRUE(p.cgroup_available_bytes);
  EXPECT_EQ(*p.cgroup_available_bytes, 4294967296ull - (1073741824ull - 536870912ull));
  EXPECT_EQ(p.available_bytes(), *p.cgroup_available_bytes);
  EXPECT_NE(p.describe().find("cgroup v2"), std::string::npos) << p.describe();
}

TEST(MemoryProbe, CgroupV1) {
  test::TempDir d;
  put(d / "proc/meminfo", "MemAvailable: 8000000 kB\n");
  put(d / "proc/self/cgroup", "12:cpu,cpuacct:/x\n7:memory:/ferry\n");
  put(d / "cg/memory/ferry/memory.limit_in_bytes", "2147483648\n");
  put(d / "cg/memory/ferry/memory.usage_in_bytes", "1073741824\n");
  put(d / "cg/memory/ferry/memory.stat", "total_inactive_file 0\n");
  put(d / "cg/memory/memory.limit_in_bytes", "9223372036854771712\n");  // v1's "no limit"
  put(d / "cg/memory/memory.usage_in_bytes", "5000000000\n");
  const RamProbe p = probe_ram(d / "proc", d / "cg");
  EXPECT_EQ(p.cgroup_version, 1);
  EXPECT_EQ(p.available_bytes(), 1073741824ull);
}

TEST(MemoryProbe, ThisMachine) {
  const RamProbe p = probe_ram();
  EXPECT_GT(p.available_bytes(), 0u);
}

}  // namespace
}  // namespace ferry::planner
