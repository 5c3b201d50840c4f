// `ferry info` and `ferry run --device cuda` from the command line: without a GPU (or without
// the CUDA backend) the run fails with a message that says how to use the CPU, never a crash;
// with a GPU (label gpu) a bounded-VRAM run prints the CPU's tokens.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdlib>

#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

struct Result {
  int rc;
  std::string out;
  std::string err;
};

Result ferry(const std::string& args) {
  test::TempDir tmp;
  const std::string cmd = std::string(FERRY_BIN) + " " + args + " >" + (tmp / "out").string() +
                          " 2>" + (tmp / "err").string() + " </dev/null";
  const int status = std::system(cmd.c_str());
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, test::read_file(tmp / "out"),
          test::read_file(tmp / "err")};
}

bool has_gpu() { return ferry("info").out.find("device cuda:") != std::string::npos; }

std::string model_dir() { return (test::data_dir() / "gptj/tiny-f32").string(); }

TEST(CudaCli, InfoReportsTheBackend) {
  const Result r = ferry("info");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("cuda: "), std::string::npos) << r.out;
#ifdef FERRY_HAS_CUDA
  EXPECT_NE(r.out.find("cuda: compiled (architectures "), std::string::npos) << r.out;
#endif
}

// run, logits and perplexity take --device through the same registry.
TEST(CudaCli, DeviceCudaWithoutAGpuSaysHowToUseTheCpu) {
  if (has_gpu()) GTEST_SKIP() << "this machine has a GPU";
  for (const std::string cmd : {"run -n 2", "logits", "perplexity"}) {
    SCOPED_TRACE(cmd);
    const Result r = ferry(cmd + " -m " + model_dir() + " --ids '1 2 3' --device cuda");
    EXPECT_EQ(r.rc, 1) << r.err;
    EXPECT_NE(r.err.find("run without --device cuda to use the CPU"), std::string::npos) << r.err;
#ifdef FERRY_HAS_CUDA
    EXPECT_NE(r.err.find("no CUDA device found: "), std::string::npos) << r.err;
#else
    EXPECT_NE(r.err.find("built without the CUDA backend"), std::string::npos) << r.err;
#endif
    EXPECT_EQ(r.out, "");
  }
}

TEST(CudaCli, BadDeviceAndStrayMaxVramAreRefused) {
  Result r = ferry("run -m " + model_dir() + " --ids '1 2' -n 1 --device tpu");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--device 'tpu' is not cpu or cuda"), std::string::npos) << r.err;
  r = ferry("run -m " + model_dir() + " --ids '1 2' -n 1 --max-vram 1GiB");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--max-vram needs --device cuda"), std::string::npos) << r.err;
  r = ferry("logits -m " + model_dir() + " --ids '1 2' --device tpu");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--device 'tpu' is not cpu or cuda"), std::string::npos) << r.err;
  r = ferry("logits -m " + model_dir() + " --ids '1 2' --max-vram 1GiB");
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--max-vram needs --device cuda"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ferry
