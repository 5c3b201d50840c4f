// Tier: where a weight unit lives between uses — one vocabulary for the planner (which chooses
// it), the streamer (which keeps it there) and the backends.
#pragma once

#include <string_view>

namespace ferry {

// `device`: resident on the compute device (on the CPU backend the same as `host`); `host`:
// resident in host memory (pinned on a GPU machine); `disk`: read again for every use, through
// staging slots; `mapped`: computed straight out of a read-only mapping of the file, residency
// left to the page cache (what llama.cpp's mmap mode does; no budget applies, so it exists for
// comparison and is never planned).
enum class Tier { device, host, disk, mapped };

std::string_view tier_name(Tier t);
// "device", "host" or "disk" (a plan's tiers; `mapped` is not planned). Throws InvalidArgument
// naming the choices.
Tier parse_tier(std::string_view s);

}  // namespace ferry
