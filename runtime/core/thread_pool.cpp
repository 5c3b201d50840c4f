#include "runtime/core/thread_pool.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <string>
#include <string_view>
#include <system_error>

#include "runtime/core/error.hpp"

namespace ferry {

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0)
    n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  workers_.reserve(static_cast<std::size_t>(n_threads - 1));
  try {
    for (int i = 0; i + 1 < n_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  } catch (const std::system_error& e) {
    // The destructor does not run for a constructor that throws, and a joinable std::thread
    // destroyed unjoined ends the process: stop the threads already started first.
    const std::size_t started = workers_.size();
    stop_workers();
    throw IoError(e.code().value(),
                  fmt::format("cannot start thread {} of the {}-thread pool (a memory or process "
                              "limit, e.g. ulimit -v or -u, is reached); set FERRY_THREADS lower",
                              started + 2, n_threads));
  }
}

void ThreadPool::stop_workers() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::run_chunks() {
  for (;;) {
    const int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= n_) return;
    const int64_t end = std::min(n_, begin + chunk_);
    try {
      (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
      next_.store(n_, std::memory_order_relaxed);  // stop handing out work
    }
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_chunks();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (--active_ == 0) done_cv_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t min_chunk,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  min_chunk = std::max<int64_t>(1, min_chunk);
  // Few chunks per thread: enough to balance, few enough to keep the atomic cheap.
  const int64_t target = (n + 4 * n_threads_ - 1) / (4 * n_threads_);
  const int64_t chunk = std::max(min_chunk, target);
  if (workers_.empty() || n <= chunk) {
    fn(0, n);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    next_.store(0, std::memory_order_relaxed);
    error_ = nullptr;
    active_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  start_cv_.notify_all();
  run_chunks();
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return active_ == 0; });
    fn_ = nullptr;
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

int max_threads() {
  return 4 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int threads_from_env(const char* value) {
  const int limit = max_threads();
  if (value == nullptr || *value == '\0') return 0;
  const std::string_view v(value);
  long long n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  // More threads than 4 per hardware thread only contend (and 100000 of them took the machine
  // down); fewer than 1 is no pool at all.
  FERRY_EXPECT(ec == std::errc() && end == v.data() + v.size() && n >= 1 && n <= limit,
               "FERRY_THREADS='{}' is not a thread count; give an integer from 1 to {} (4 per "
               "hardware thread; this machine has {}), or unset it to use one per hardware "
               "thread",
               v, limit, limit / 4);
  return static_cast<int>(n);
}

ThreadPool& default_thread_pool() {
  static ThreadPool pool(threads_from_env(std::getenv("FERRY_THREADS")));
  return pool;
}

std::string default_thread_pool_source() {
  const char* env = std::getenv("FERRY_THREADS");
  return env != nullptr && *env != '\0' ? "FERRY_THREADS" : "one per hardware thread";
}

}  // namespace ferry
