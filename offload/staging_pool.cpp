#include "offload/staging_pool.hpp"

#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <utility>

#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry::offload {

namespace detail {

struct StagingPoolState {
  StagingPoolState() = default;
  StagingPoolState(const StagingPoolState&) = delete;
  StagingPoolState& operator=(const StagingPoolState&) = delete;
  ~StagingPoolState();

  std::size_t slot_count = 0;
  uint64_t slot_bytes = 0;
  std::byte* base = nullptr;
  uint64_t mapped_bytes = 0;
  std::shared_ptr<HostMemoryPinner> pinner;
  std::vector<bool> pinned;  // per slot
  uint64_t bytes_locked = 0;
  std::string lock_note;

  mutable std::mutex mu;
  std::condition_variable cv;
  std::vector<std::size_t> free;

  std::byte* slot_data(std::size_t i) const { return base + i * slot_bytes; }
  void give_back(std::size_t slot) noexcept {
    {
      std::lock_guard lock(mu);
      free.push_back(slot);
    }
    cv.notify_one();
  }
};

StagingPoolState::~StagingPoolState() {
  for (std::size_t i = 0; i < pinned.size(); ++i)
    if (pinned[i]) pinner->unpin(slot_data(i), static_cast<std::size_t>(slot_bytes));
  if (base != nullptr && ::munmap(base, static_cast<std::size_t>(mapped_bytes)) != 0) {
    std::fprintf(stderr, "ferry: warning: unmapping the staging pool failed: %s\n",
                 std::strerror(errno));
  }
}

}  // namespace detail

namespace {
// Many pools may be refused the same way; one warning says it all.
std::atomic<bool> g_lock_warning_printed{false};
}  // namespace

// Raw system calls: AddressSanitizer intercepts mlock() as a no-op that reports success, which
// would make bytes_locked() claim memory is locked when it is not.
int MlockPinner::pin(void* data, std::size_t nbytes) noexcept {
  return ::syscall(SYS_mlock, data, nbytes) == 0 ? 0 : errno;
}

void MlockPinner::unpin(void* data, std::size_t nbytes) noexcept {
  if (::syscall(SYS_munlock, data, nbytes) != 0) {
    std::fprintf(stderr, "ferry: warning: munlock of %zu bytes failed: %s\n", nbytes,
                 std::strerror(errno));
  }
}

StagingLease::StagingLease(std::shared_ptr<detail::StagingPoolState> state, std::size_t slot)
    : state_(std::move(state)),
      slot_(slot),
      data_(state_->slot_data(slot)),
      nbytes_(state_->slot_bytes) {}

StagingLease::StagingLease(StagingLease&& o) noexcept
    : state_(std::move(o.state_)),
      slot_(std::exchange(o.slot_, 0)),
      data_(std::exchange(o.data_, nullptr)),
      nbytes_(std::exchange(o.nbytes_, 0)) {}

StagingLease& StagingLease::operator=(StagingLease&& o) noexcept {
  if (this != &o) {
    release();
    state_ = std::move(o.state_);
    slot_ = std::exchange(o.slot_, 0);
    data_ = std::exchange(o.data_, nullptr);
    nbytes_ = std::exchange(o.nbytes_, 0);
  }
  return *this;
}

void StagingLease::release() noexcept {
  if (!state_) return;
  state_->give_back(slot_);
  state_.reset();
  data_ = nullptr;
  nbytes_ = 0;
}

StagingPool::StagingPool(StagingPoolOptions options)
    : state_(std::make_shared<detail::StagingPoolState>()) {
  FERRY_EXPECT(options.slot_count > 0 && options.slot_bytes > 0,
               "a staging pool needs at least one slot of at least one byte (asked for {} slots "
               "of {} bytes)",
               options.slot_count, options.slot_bytes);
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  detail::StagingPoolState& s = *state_;
  s.slot_count = options.slot_count;
  s.slot_bytes = (options.slot_bytes + page - 1) / page * page;
  FERRY_EXPECT(s.slot_bytes <= UINT64_MAX / s.slot_count,
               "staging pool of {} slots of {} overflows", s.slot_count,
               format_bytes(s.slot_bytes));
  s.mapped_bytes = s.slot_bytes * s.slot_count;
  // Populated now: the plan already counts these bytes, and faulting them in here keeps page
  // faults out of the first reads.
  void* p = ::mmap(nullptr, static_cast<std::size_t>(s.mapped_bytes), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    const int err = errno;
    throw IoError(err, fmt::format("cannot map a staging pool of {} slots of {} ({})", s.slot_count,
                                   format_bytes(s.slot_bytes), format_bytes(s.mapped_bytes)));
  }
  s.base = static_cast<std::byte*>(p);
  s.pinner = std::move(options.pinner);
  s.pinned.assign(s.slot_count, false);
  if (s.pinner) {
    for (std::size_t i = 0; i < s.slot_count; ++i) {
      const int err = s.pinner->pin(s.slot_data(i), static_cast<std::size_t>(s.slot_bytes));
      if (err != 0) {
        std::string limit;
        rlimit lim{};
        if (::getrlimit(RLIMIT_MEMLOCK, &lim) == 0) {
          limit =
              lim.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : format_bytes(lim.rlim_cur);
        }
        s.lock_note = fmt::format(
            "{} of {} of staging memory is locked: {} refused ({}; RLIMIT_MEMLOCK is {}); the "
            "rest may be swapped out under memory pressure. Raise the limit (ulimit -l, or "
            "LimitMEMLOCK= in a systemd unit) to lock it all",
            format_bytes(s.bytes_locked), format_bytes(s.mapped_bytes), s.pinner->name(),
            std::strerror(err), limit);
        if (!g_lock_warning_printed.exchange(true))
          std::fprintf(stderr, "ferry: warning: %s\n", s.lock_note.c_str());
        break;  // the same limit refuses the remaining slots too
      }
      s.pinned[i] = true;
      s.bytes_locked += s.slot_bytes;
    }
  }
  s.free.reserve(s.slot_count);
  for (std::size_t i = s.slot_count; i-- > 0;) s.free.push_back(i);
}

StagingPool::~StagingPool() = default;

StagingLease StagingPool::acquire() {
  std::unique_lock lock(state_->mu);
  state_->cv.wait(lock, [&] { return !state_->free.empty(); });
  const std::size_t slot = state_->free.back();
  state_->free.pop_back();
  return {state_, slot};
}

std::optional<StagingLease> StagingPool::try_acquire() {
  std::lock_guard lock(state_->mu);
  if (state_->free.empty()) return std::nullopt;
  const std::size_t slot = state_->free.back();
  state_->free.pop_back();
  return StagingLease(state_, slot);
}

std::size_t StagingPool::slot_count() const { return state_->slot_count; }
uint64_t StagingPool::slot_bytes() const { return state_->slot_bytes; }

std::size_t StagingPool::free_slots() const {
  std::lock_guard lock(state_->mu);
  return state_->free.size();
}

uint64_t StagingPool::bytes_requested() const { return state_->mapped_bytes; }
uint64_t StagingPool::bytes_locked() const { return state_->bytes_locked; }
const std::string& StagingPool::lock_note() const { return state_->lock_note; }

std::vector<MemoryRegion> StagingPool::regions() const {
  std::vector<MemoryRegion> r;
  r.reserve(state_->slot_count);
  for (std::size_t i = 0; i < state_->slot_count; ++i)
    r.push_back({state_->slot_data(i), state_->slot_bytes});
  return r;
}

}  // namespace ferry::offload
