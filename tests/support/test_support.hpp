// Helpers shared by the tests: where the fixtures are, temporary directories, small files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::test {

// tests/data (from FERRY_TEST_DATA, set by ctest; falls back to the source tree path).
std::filesystem::path data_dir();
// data/ at the repo root (the GPT-2 tokenizer files ship there).
std::filesystem::path repo_data_dir();

// A fresh directory under $TMPDIR, removed with everything in it when destroyed.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// A command's exit status (or 128 + the signal that ended it) and what it wrote.
struct CommandResult {
  int rc;
  std::string out;
  std::string err;
};
// s in single quotes for sh, its own single quotes escaped.
std::string shell_quote(const std::string& s);
// Runs `env binary args...` through sh with stdin from /dev/null, capturing stdout and stderr;
// env is a prefix such as "FERRY_THREADS=2 " (or empty).
CommandResult run_command(const std::string& binary, const std::vector<std::string>& args,
                          const std::string& env = "");

std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, std::string_view bytes);
// Copies every file of src into dst (created), e.g. a fixture checkpoint to corrupt.
void copy_dir(const std::filesystem::path& src, const std::filesystem::path& dst);

}  // namespace ferry::test
