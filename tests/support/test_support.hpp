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

std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, std::string_view bytes);
// Copies every file of src into dst (created), e.g. a fixture checkpoint to corrupt.
void copy_dir(const std::filesystem::path& src, const std::filesystem::path& dst);

}  // namespace ferry::test
