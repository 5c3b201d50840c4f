#include "runtime/core/error.hpp"

#include <cstdlib>

namespace ferry::detail {
namespace {
// Users see the message; file:line is for us, so it is appended only when FERRY_DEBUG is set.
std::string with_location(const char* file, int line, const std::string& message) {
  static const bool debug = std::getenv("FERRY_DEBUG") != nullptr;
  if (!debug) return message;
  return fmt::format("{} [{}:{}]", message, file, line);
}
}  // namespace

void throw_expect_failed(const char* file, int line, const std::string& message) {
  throw InvalidArgument(with_location(file, line, message));
}

void throw_format_error(const char* file, int line, const std::string& message) {
  throw FormatError(with_location(file, line, message));
}

void throw_io_error(const char* file, int line, int errno_value, const std::string& message) {
  throw IoError(errno_value, with_location(file, line, message));
}

}  // namespace ferry::detail
