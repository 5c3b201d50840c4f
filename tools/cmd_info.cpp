// ferry info: version, build features and the machine.
#include <fmt/format.h>
#include <liburing.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

#include "runtime/backends/registry.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/core/units.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

// io_uring can be compiled in but refused at run time (old kernel, seccomp, sysctl).
std::string io_uring_status() {
  io_uring ring{};
  const int rc = io_uring_queue_init(4, &ring, 0);
  if (rc < 0) return fmt::format("unavailable ({})", std::strerror(-rc));
  io_uring_queue_exit(&ring);
  return "available";
}

}  // namespace

Command add_info(CLI::App& app) {
  app.add_subcommand("info", "version, build features and devices");
  return [] {
    fmt::print("ferry {}\n", FERRY_VERSION);
    for (const auto& line : backends::describe_build()) fmt::print("{}\n", line);
    fmt::print("io_uring: {}\n", io_uring_status());
    fmt::print("threads: {} ({})\n", default_thread_pool().size(), default_thread_pool_source());
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page = ::sysconf(_SC_PAGESIZE);
    fmt::print("device cpu: {}, {} cores, {} RAM\n", cpu_model(), ::sysconf(_SC_NPROCESSORS_ONLN),
               format_bytes(static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)));
    return 0;
  };
}

}  // namespace ferry::tools
