// ThreadPool: a fixed set of workers that split a range of indices between them and the
// calling thread; the CPU kernels use it to run on every core.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace ferry {

class ThreadPool {
 public:
  // n_threads counts the caller too; 0 means one per online core.
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls fn(begin, end) over [0, n) in chunks of at least min_chunk indices, on all threads,
  // and returns when every chunk is done. The first exception thrown by fn is rethrown here.
  // Not re-entrant: fn must not call parallel_for on the same pool.
  void parallel_for(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void worker_loop();
  void run_chunks();
  void stop_workers() noexcept;  // stops and joins every worker

  int n_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;
  int active_ = 0;
  bool stop_ = false;

  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

// The most threads a pool may be asked for: 4 per hardware thread.
int max_threads();
// FERRY_THREADS' value as a thread count: 0 (one per hardware thread) when unset or empty.
// Throws InvalidArgument naming the variable and the range [1, max_threads()] otherwise.
int threads_from_env(const char* value);

// The process-wide pool the CPU backend uses (sized by FERRY_THREADS or the core count); the
// first call throws InvalidArgument for a bad FERRY_THREADS.
ThreadPool& default_thread_pool();
// Where its size came from, for `ferry info`: "FERRY_THREADS" or "one per hardware thread".
std::string default_thread_pool_source();

}  // namespace ferry
