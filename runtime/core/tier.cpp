#include "runtime/core/tier.hpp"

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace ferry {

std::string_view tier_name(Tier t) {
  switch (t) {
    case Tier::device:
      return "device";
    case Tier::host:
      return "host";
    case Tier::disk:
      return "disk";
    case Tier::mapped:
      return "mapped";
  }
  return "?";
}

Tier parse_tier(std::string_view s) {
  if (s == "device") return Tier::device;
  if (s == "host") return Tier::host;
  if (s == "disk") return Tier::disk;
  throw InvalidArgument(fmt::format("unknown tier '{}': use device, host or disk", s));
}

}  // namespace ferry
