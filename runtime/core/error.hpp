// ferry's error types: every failure a user can cause is an exception whose message names
// what was wrong, where, and what to do about it.
#pragma once

#include <fmt/format.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>

namespace ferry {

// Base of every error ferry raises on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A file or format that is not what it claims to be (truncated, corrupt, unsupported).
class FormatError : public Error {
 public:
  using Error::Error;
};

// A request that cannot be honoured as asked: bad arguments, out-of-range ids, budgets.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// A plan or budget that cannot be met.
class PlanError : public Error {
 public:
  using Error::Error;
};

// A failed CUDA call (raised only by the CUDA backend).
class CudaError : public Error {
 public:
  using Error::Error;
};

// A failed system call; carries errno as a std::error_code.
class IoError : public std::system_error {
 public:
  IoError(int errno_value, const std::string& what)
      : std::system_error(errno_value, std::generic_category(), what) {}
};

namespace detail {
[[noreturn]] void throw_expect_failed(const char* file, int line, const std::string& message);
[[noreturn]] void throw_format_error(const char* file, int line, const std::string& message);
[[noreturn]] void throw_io_error(const char* file, int line, int errno_value,
                                 const std::string& message);
}  // namespace detail

}  // namespace ferry

// FERRY_EXPECT(cond, "fmt {}", args...): throws ferry::InvalidArgument with the formatted
// message (built only on failure) and file:line when cond is false.
#define FERRY_EXPECT(cond, ...)                                                             \
  do {                                                                                      \
    if (!(cond)) [[unlikely]]                                                               \
      ::ferry::detail::throw_expect_failed(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

// FERRY_FORMAT_EXPECT: the same, raising ferry::FormatError (for bad files).
#define FERRY_FORMAT_EXPECT(cond, ...)                                                     \
  do {                                                                                     \
    if (!(cond)) [[unlikely]]                                                              \
      ::ferry::detail::throw_format_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)

// FERRY_SYSCALL(ret, "fmt", args...): for calls returning -1 and setting errno.
#define FERRY_SYSCALL(ret, ...)                                               \
  do {                                                                        \
    if ((ret) < 0) [[unlikely]] {                                             \
      const int ferry_saved_errno_ = errno;                                   \
      ::ferry::detail::throw_io_error(__FILE__, __LINE__, ferry_saved_errno_, \
                                      ::fmt::format(__VA_ARGS__));            \
    }                                                                         \
  } while (0)
