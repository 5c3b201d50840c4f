#include "tests/support/test_support.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace ferry::test {

namespace fs = std::filesystem;

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) {
    if (c == '\'') {
      q.append("'\\''");
    } else {
      q.push_back(c);
    }
  }
  q.push_back('\'');
  return q;
}

CommandResult run_command(const std::string& binary, const std::vector<std::string>& args,
                          const std::string& env) {
  const TempDir tmp;
  std::string cmd = env + shell_quote(binary);
  for (const auto& a : args) cmd.append(" ").append(shell_quote(a));
  cmd.append(" >").append(shell_quote((tmp / "out").string()));
  cmd.append(" 2>").append(shell_quote((tmp / "err").string())).append(" </dev/null");
  const int status = std::system(cmd.c_str());
  const int rc = WIFEXITED(status)     ? WEXITSTATUS(status)
                 : WIFSIGNALED(status) ? 128 + WTERMSIG(status)
                                       : -1;
  return {rc, read_file(tmp / "out"), read_file(tmp / "err")};
}

fs::path data_dir() {
  if (const char* d = std::getenv("FERRY_TEST_DATA")) return d;
  return fs::path(__FILE__).parent_path().parent_path() / "data";
}

fs::path repo_data_dir() {
  if (const char* d = std::getenv("FERRY_DATA_DIR")) return d;
  return fs::path(__FILE__).parent_path().parent_path().parent_path() / "data";
}

TempDir::TempDir() {
  std::random_device rd;
  const fs::path base = fs::temp_directory_path();
  for (int attempt = 0; attempt < 100; ++attempt) {
    fs::path p = base / ("ferry-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::error_code ec;
    if (fs::create_directory(p, ec)) {
      path_ = p;
      return;
    }
  }
  throw std::runtime_error("cannot create a temporary directory under " + base.string());
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const fs::path& p, std::string_view bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot create " + p.string());
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

void copy_dir(const fs::path& src, const fs::path& dst) {
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src)) {
    if (e.is_regular_file())
      fs::copy_file(e.path(), dst / e.path().filename(), fs::copy_options::overwrite_existing);
  }
  // Fixtures are read-only in the source tree; copies must be writable to corrupt them.
  for (const auto& e : fs::directory_iterator(dst))
    fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write,
                    fs::perm_options::add);
}

}  // namespace ferry::test
