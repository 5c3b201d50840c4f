#include "offload/detail/mapping_guard.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <utility>

namespace ferry::offload::detail {

namespace {

// A fixed table, so the handler reads it without locks or allocation. A run maps one file per
// checkpoint shard; 64 is far more than any checkpoint has.
constexpr int kSlots = 64;
constexpr std::size_t kMessageBytes = 1024;

struct Slot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};  // 0: free
  char message[kMessageBytes] = {};
  std::size_t message_len = 0;
};

Slot g_slots[kSlots];
std::mutex g_slots_mutex;  // claims and frees slots; the handler never takes it
struct sigaction g_previous;
std::once_flag g_installed;

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& s : g_slots) {
    const uintptr_t end = s.end.load(std::memory_order_acquire);
    if (end != 0 && addr >= s.begin.load(std::memory_order_relaxed) && addr < end) {
      // Nothing else is safe here: write the prepared message and leave.
      [[maybe_unused]] const ssize_t n = ::write(STDERR_FILENO, s.message, s.message_len);
      ::_exit(1);
    }
  }
  // Not ours: hand it to whoever handled SIGBUS before.
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) {
      g_previous.sa_sigaction(sig, info, context);
      return;
    }
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN &&
             g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
    return;
  }
  // The default action: returning re-runs the faulting access, which faults again unhandled.
  ::signal(SIGBUS, SIG_DFL);
}

void install() {
  struct sigaction sa {};
  sa.sa_sigaction = on_sigbus;
  sa.sa_flags = SA_SIGINFO;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGBUS, &sa, &g_previous);
}

}  // namespace

MappingGuard::MappingGuard(const void* base, uint64_t nbytes, const std::string& path) {
  std::call_once(g_installed, install);
  const std::lock_guard lock(g_slots_mutex);
  for (int i = 0; i < kSlots; ++i) {
    Slot& s = g_slots[i];
    if (s.end.load(std::memory_order_relaxed) != 0) continue;
    const std::string msg = fmt::format(
        "ferry: error: {} shrank while ferry was computing from its memory map (a read past its "
        "new end raised SIGBUS); do not truncate or rewrite a checkpoint while ferry runs from "
        "it — copy it anew and run again\n",
        path);
    s.message_len = std::min(msg.size(), kMessageBytes);
    std::memcpy(s.message, msg.data(), s.message_len);
    const auto b = reinterpret_cast<uintptr_t>(base);
    s.begin.store(b, std::memory_order_relaxed);
    s.end.store(b + nbytes, std::memory_order_release);
    slot_ = i;
    return;
  }
}

MappingGuard::MappingGuard(MappingGuard&& o) noexcept : slot_(std::exchange(o.slot_, -1)) {}

MappingGuard::~MappingGuard() {
  if (slot_ < 0) return;
  const std::lock_guard lock(g_slots_mutex);
  g_slots[slot_].end.store(0, std::memory_order_release);
}

}  // namespace ferry::offload::detail
