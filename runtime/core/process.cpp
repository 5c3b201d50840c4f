#include "runtime/core/process.hpp"

#include <fstream>
#include <sstream>
#include <string>

namespace ferry {

std::optional<uint64_t> peak_rss_bytes() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) != 0) continue;
    std::istringstream ls(line.substr(6));
    uint64_t kb = 0;
    if (ls >> kb) return kb * 1024;
  }
  return std::nullopt;
}

}  // namespace ferry
