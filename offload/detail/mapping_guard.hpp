// Turns a SIGBUS inside a mapped checkpoint file (the file was truncated while mapped) into an
// error naming the file, instead of a bare "Bus error".
#pragma once

#include <cstdint>
#include <string>

namespace ferry::offload::detail {

// While a MappingGuard lives, a SIGBUS whose address lies in [base, base + nbytes) prints
// "ferry: error: PATH shrank while it was mapped …" and ends the process with status 1. The
// fault can come from any thread (the kernels compute straight from the mapping), so it cannot
// be unwound into an exception; the handler only writes a message prepared here and exits.
// A SIGBUS anywhere else goes to the handler that was installed before (the default: a core).
class MappingGuard {
 public:
  MappingGuard(const void* base, uint64_t nbytes, const std::string& path);
  ~MappingGuard();
  MappingGuard(MappingGuard&& o) noexcept;
  MappingGuard(const MappingGuard&) = delete;
  MappingGuard& operator=(const MappingGuard&) = delete;
  MappingGuard& operator=(MappingGuard&&) = delete;

 private:
  int slot_ = -1;  // -1: no slot (moved from, or all slots taken: the fault stays a bare SIGBUS)
};

}  // namespace ferry::offload::detail
