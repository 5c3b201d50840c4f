// Tests of the staging pool: page-aligned exclusive slots, leases that block and release
// across threads, and locking that degrades (with a note) where RLIMIT_MEMLOCK refuses it.
#include "offload/staging_pool.hpp"

#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime/core/error.hpp"

namespace ferry::offload {
namespace {

uint64_t page_bytes() { return static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)); }

TEST(StagingPool, SlotsArePageAlignedDisjointAndRounded) {
  StagingPool pool({.slot_count = 3, .slot_bytes = 10'000, .pinner = nullptr});
  EXPECT_EQ(pool.slot_count(), 3U);
  EXPECT_EQ(pool.slot_bytes() % page_bytes(), 0U);
  EXPECT_GE(pool.slot_bytes(), 10'000U);
  EXPECT_EQ(pool.bytes_requested(), 3 * pool.slot_bytes());
  EXPECT_EQ(pool.bytes_locked(), 0U);
  EXPECT_TRUE(pool.lock_note().empty());  // no pinner asked for: nothing to warn about
  std::vector<StagingLease> leases;
  std::set<std::size_t> slots;
  for (int i = 0; i < 3; ++i) {
    leases.push_back(pool.acquire());
    const StagingLease& l = leases.back();
    EXPECT_EQ(reinterpret_cast<uintptr_t>(l.data()) % page_bytes(), 0U);
    EXPECT_EQ(l.nbytes(), pool.slot_bytes());
    EXPECT_EQ(l.bytes().size(), pool.slot_bytes());
    slots.insert(l.slot());
    std::memset(l.data(), i + 1, l.nbytes());  // every byte is ours to write
  }
  EXPECT_EQ(slots.size(), 3U);
  for (int i = 0; i < 3; ++i)
    for (uint64_t b = 0; b < pool.slot_bytes(); b += 997)
      ASSERT_EQ(static_cast<int>(leases[i].data()[b]), i + 1) << "slots overlap";
  const std::vector<MemoryRegion> regions = pool.regions();
  ASSERT_EQ(regions.size(), 3U);
  for (const MemoryRegion& r : regions) EXPECT_EQ(r.nbytes, pool.slot_bytes());
}

TEST(StagingPool, BadSizesAreRefused) {
  EXPECT_THROW(StagingPool({.slot_count = 0, .slot_bytes = 4096, .pinner = nullptr}),
               InvalidArgument);
  EXPECT_THROW(StagingPool({.slot_count = 2, .slot_bytes = 0, .pinner = nullptr}), InvalidArgument);
}

TEST(StagingPool, TryAcquireReleaseAndMove) {
  StagingPool pool({.slot_count = 2, .slot_bytes = 4096, .pinner = nullptr});
  std::optional<StagingLease> a = pool.try_acquire();
  std::optional<StagingLease> b = pool.try_acquire();
  ASSERT_TRUE(a && b);
  EXPECT_FALSE(pool.try_acquire().has_value());
  EXPECT_EQ(pool.free_slots(), 0U);

  StagingLease moved = std::move(*a);
  EXPECT_FALSE(a->valid());
  EXPECT_TRUE(moved.valid());
  a.reset();  // destroying a moved-from lease returns nothing
  EXPECT_EQ(pool.free_slots(), 0U);

  moved.release();
  EXPECT_FALSE(moved.valid());
  moved.release();  // idempotent
  EXPECT_EQ(pool.free_slots(), 1U);

  StagingLease c = pool.acquire();
  c = std::move(*b);  // assigning over a lease gives its slot back
  EXPECT_EQ(pool.free_slots(), 1U);
  b.reset();
  c = StagingLease();
  EXPECT_EQ(pool.free_slots(), 2U);
}

TEST(StagingPool, AcquireBlocksUntilASlotIsReleased) {
  StagingPool pool({.slot_count = 2, .slot_bytes = 4096, .pinner = nullptr});
  StagingLease first = pool.acquire();
  StagingLease second = pool.acquire();
  ASSERT_FALSE(pool.try_acquire().has_value());
  const std::size_t released_slot = second.slot();
  std::size_t got_slot = 99;
  std::thread waiter([&] { got_slot = pool.acquire().slot(); });
  // The waiter can only return with the slot released here: none other is free.
  second.release();
  waiter.join();
  EXPECT_EQ(got_slot, released_slot);
  EXPECT_EQ(pool.free_slots(), 1U);
}

TEST(StagingPool, LeasesAreExclusiveAcrossThreads) {
  StagingPool pool({.slot_count = 3, .slot_bytes = 64 * 1024, .pinner = nullptr});
  std::atomic<int> clobbered{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        StagingLease lease = pool.acquire();
        const auto mark = static_cast<std::byte>(t * 37 + i);
        std::memset(lease.data(), static_cast<int>(mark), lease.nbytes());
        std::this_thread::yield();
        for (uint64_t b = 0; b < lease.nbytes(); b += 509)
          if (lease.data()[b] != mark) ++clobbered;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(clobbered.load(), 0);
  EXPECT_EQ(pool.free_slots(), 3U);
}

TEST(StagingPool, LeaseOutlivesPool) {
  StagingLease lease;
  {
    StagingPool pool({.slot_count = 1, .slot_bytes = 8192, .pinner = nullptr});
    lease = pool.acquire();
  }
  std::memset(lease.data(), 7, lease.nbytes());  // still mapped (ASan would object otherwise)
  EXPECT_EQ(static_cast<int>(lease.data()[8191]), 7);
}

// A pinner that pins the first `allow` calls and refuses the rest, counting unpins.
class CountingPinner final : public HostMemoryPinner {
 public:
  explicit CountingPinner(int allow) : allow_(allow) {}
  std::string_view name() const override { return "test-pinner"; }
  int pin(void*, std::size_t) noexcept override {
    if (pinned_ >= allow_) return ENOMEM;
    ++pinned_;
    return 0;
  }
  void unpin(void*, std::size_t) noexcept override { ++unpinned_; }
  int pinned_ = 0;
  int unpinned_ = 0;

 private:
  int allow_;
};

TEST(StagingPool, RefusedPinningDegradesToUnlockedMemoryWithANote) {
  auto pinner = std::make_shared<CountingPinner>(1);
  {
    StagingPool pool({.slot_count = 3, .slot_bytes = 4096, .pinner = pinner});
    EXPECT_EQ(pool.bytes_requested(), 3 * pool.slot_bytes());
    EXPECT_EQ(pool.bytes_locked(), pool.slot_bytes());
    const std::string& note = pool.lock_note();
    EXPECT_NE(note.find("test-pinner refused"), std::string::npos) << note;
    EXPECT_NE(note.find("RLIMIT_MEMLOCK"), std::string::npos) << note;
    EXPECT_NE(note.find(std::strerror(ENOMEM)), std::string::npos) << note;
    // Unlocked slots still work.
    std::vector<StagingLease> leases;
    for (int i = 0; i < 3; ++i) leases.push_back(pool.acquire());
    for (const StagingLease& l : leases) std::memset(l.data(), 1, l.nbytes());
  }
  EXPECT_EQ(pinner->pinned_, 1);
  EXPECT_EQ(pinner->unpinned_, 1);  // only what was pinned is unpinned
}

TEST(StagingPool, MlockPinsWhereTheLimitAllows) {
  StagingPool pool({.slot_count = 2, .slot_bytes = 256 * 1024});
  if (pool.bytes_locked() < pool.bytes_requested()) {
    EXPECT_FALSE(pool.lock_note().empty());  // a small RLIMIT_MEMLOCK: said, not fatal
  } else {
    EXPECT_TRUE(pool.lock_note().empty()) << pool.lock_note();
  }
}

// The real refusal: a child process with RLIMIT_MEMLOCK 0 and without CAP_IPC_LOCK (which
// root would otherwise use to ignore the limit) still gets a working, unlocked pool.
TEST(StagingPool, ZeroMemlockLimitInAChildProcessDegrades) {
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0) << std::strerror(errno);
  if (pid == 0) {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct caps[2]{};
    if (::syscall(SYS_capget, &header, caps) != 0) ::_exit(10);
    caps[CAP_IPC_LOCK / 32].effective &= ~(1U << (CAP_IPC_LOCK % 32));
    caps[CAP_IPC_LOCK / 32].permitted &= ~(1U << (CAP_IPC_LOCK % 32));
    if (::syscall(SYS_capset, &header, caps) != 0) ::_exit(11);
    const rlimit zero{0, 0};
    if (::setrlimit(RLIMIT_MEMLOCK, &zero) != 0) ::_exit(12);
    try {
      StagingPool pool({.slot_count = 2, .slot_bytes = 64 * 1024});
      if (pool.bytes_locked() != 0) ::_exit(13);
      if (pool.lock_note().find("RLIMIT_MEMLOCK is 0 B") == std::string::npos) ::_exit(14);
      StagingLease lease = pool.acquire();
      std::memset(lease.data(), 3, lease.nbytes());
    } catch (...) {
      ::_exit(15);
    }
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with status " << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the exit codes in the child above";
}

}  // namespace
}  // namespace ferry::offload
