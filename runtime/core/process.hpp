// Facts about this process from the kernel's own accounting.
#pragma once

#include <cstdint>
#include <optional>

namespace ferry {

// The peak resident set size (VmHWM of /proc/self/status); none where it cannot be read.
std::optional<uint64_t> peak_rss_bytes();

}  // namespace ferry
