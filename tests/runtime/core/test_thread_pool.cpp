#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/core/thread_pool.hpp"

namespace ferry {
namespace {

TEST(ThreadPool, CoversEveryIndexOnce) {
  ThreadPool pool(3);
  for (int64_t n : {1, 7, 64, 1000, 4097}) {
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n));
    pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[static_cast<std::size_t>(i)]++;
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<std::size_t>(i)].load(), 1) << n;
  }
}

TEST(ThreadPool, RespectsMinChunkAndReuse) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  for (int rep = 0; rep < 200; ++rep) {
    pool.parallel_for(100, 50, [&](int64_t b, int64_t e) {
      EXPECT_TRUE(e - b == 50 || e == 100);
      total += e - b;
    });
  }
  EXPECT_EQ(total.load(), 200 * 100);
}

TEST(ThreadPool, PropagatesExceptions) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(1000, 1,
                                 [&](int64_t b, int64_t) {
                                   if (b >= 500) throw std::runtime_error("boom");
                                 }),
               std::runtime_error);
  // Still usable afterwards.
  std::atomic<int64_t> n{0};
  pool.parallel_for(10, 1, [&](int64_t b, int64_t e) { n += e - b; });
  EXPECT_EQ(n.load(), 10);
}

// FERRY_THREADS was read with atoi: "abc", "0" and "-1" silently meant "one per core" and
// 100000 started 100000 threads. Now it is an integer in [1, 4 per hardware thread].
TEST(ThreadPool, FerryThreadsIsValidatedAndBounded) {
  EXPECT_EQ(threads_from_env(nullptr), 0);
  EXPECT_EQ(threads_from_env(""), 0);
  EXPECT_EQ(threads_from_env("1"), 1);
  EXPECT_EQ(threads_from_env(std::to_string(max_threads()).c_str()), max_threads());
  const std::vector<std::string> bads = {"abc",    "0",
                                         "-1",     "4x",
                                         " 4",     "100000",
                                         "99999999999999999999", std::to_string(max_threads() + 1)};
  for (const std::string& bad : bads) {
    try {
      threads_from_env(bad.c_str());
      ADD_FAILURE() << bad << " was accepted";
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("FERRY_THREADS='" + bad + "'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("from 1 to " + std::to_string(max_threads())), std::string::npos) << msg;
    }
  }
}

}  // namespace
}  // namespace ferry
