// A model bigger than its memory cgroup runs inside it, streamed, with the tokens of an
// unbounded run, and the kernel's own peak for the cgroup stays under the cap. Needs root and
// a writable memory cgroup (v1 or v2); skipped otherwise.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;

class MemoryCgroup {
 public:
  // Creates a memory cgroup capped at limit_bytes, or leaves ok() false.
  explicit MemoryCgroup(uint64_t limit_bytes) {
    const std::string name = "ferry-test-" + std::to_string(::getpid());
    if (fs::exists("/sys/fs/cgroup/cgroup.controllers")) {
      dir_ = fs::path("/sys/fs/cgroup") / name;
      limit_file_ = "memory.max";
      peak_file_ = "memory.peak";
    } else if (fs::exists("/sys/fs/cgroup/memory/memory.limit_in_bytes")) {
      dir_ = fs::path("/sys/fs/cgroup/memory") / name;
      limit_file_ = "memory.limit_in_bytes";
      peak_file_ = "memory.max_usage_in_bytes";
    } else {
      return;
    }
    std::error_code ec;
    if (!fs::create_directory(dir_, ec)) {
      dir_.clear();
      return;
    }
    ok_ = write(limit_file_, std::to_string(limit_bytes));
    if (fs::exists(dir_ / "memory.swap.max")) write("memory.swap.max", "0");
    if (fs::exists(dir_ / "memory.memsw.limit_in_bytes"))
      write("memory.memsw.limit_in_bytes", std::to_string(limit_bytes));
  }
  ~MemoryCgroup() {
    if (dir_.empty()) return;
    std::error_code ec;
    fs::remove(dir_, ec);  // rmdir: empty once the child has exited
  }
  bool ok() const { return ok_; }
  const fs::path& dir() const { return dir_; }
  uint64_t peak() const {
    std::ifstream in(dir_ / peak_file_);
    uint64_t v = 0;
    in >> v;
    return v;
  }

  // Runs a shell command inside the cgroup; returns its exit status.
  int run(const std::string& command) const {
    const std::string cmd =
        "sh -c 'echo $$ > " + (dir_ / "cgroup.procs").string() + " && exec " + command + "'";
    const int status = std::system(cmd.c_str());
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  bool write(const std::string& file, const std::string& value) const {
    std::ofstream out(dir_ / file);
    out << value;
    out.flush();
    return static_cast<bool>(out);
  }
  fs::path dir_;
  std::string limit_file_;
  std::string peak_file_;
  bool ok_ = false;
};

std::string last_line(const fs::path& p) {
  std::ifstream in(p);
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  return last;
}

TEST(CgroupBudget, StreamedRunFitsTheCapWithExactTokens) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to create a memory cgroup";
  test::TempDir tmp;
  const fs::path model = tmp / "m";
  const std::string ferry = FERRY_BIN;
  // 16 layers of n_embd 768: 28 MiB per block in f16, 460 MiB of weights in all.
  ASSERT_EQ(std::system((ferry +
                         " make-model --preset tiny --n-layer 16 --n-embd 768 --n-head 12"
                         " --rotary-dim 32 --vocab 2000 --dtype f16 --seed 3 -q -o " +
                         model.string())
                            .c_str()),
            0);
  const std::string args =
      " run -m " + model.string() + " --ids 5,6,7,8 -n 6 --ignore-eos --print-ids";
  ASSERT_EQ(std::system((ferry + args + " -q > " + (tmp / "free.txt").string()).c_str()), 0);

  const uint64_t cap = 256ull << 20;  // less than the model's 460 MiB
  MemoryCgroup cg(cap);
  if (!cg.ok()) GTEST_SKIP() << "no writable memory cgroup here";
  // Evict the checkpoint from the page cache: pages cached outside are not charged inside.
  ASSERT_EQ(std::system(("dd if=" + (model / "model.safetensors").string() +
                         " iflag=nocache count=0 status=none")
                            .c_str()),
            0);
  const int rc = cg.run(ferry + args + " --max-ram 224MiB > " + (tmp / "capped.txt").string() +
                        " 2> " + (tmp / "capped.err").string());
  ASSERT_EQ(rc, 0) << test::read_file(tmp / "capped.err");
  const std::string err = test::read_file(tmp / "capped.err");
  EXPECT_NE(err.find("streamed through"), std::string::npos) << err;
  EXPECT_EQ(last_line(tmp / "capped.txt"), last_line(tmp / "free.txt"));
  EXPECT_GT(cg.peak(), 0u);
  EXPECT_LE(cg.peak(), cap) << "kernel-accounted peak of " << cg.dir();
  std::printf("cgroup peak %.1f MiB under a %.0f MiB cap\n",
              static_cast<double>(cg.peak()) / (1 << 20), static_cast<double>(cap) / (1 << 20));
}

}  // namespace
}  // namespace ferry
