#include "runtime/core/json_parse.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include "runtime/core/error.hpp"

namespace ferry {

namespace {

struct DuplicateKey {
  std::string key;
};

// A key from the file, safe to print (control bytes escaped, long keys cut).
std::string printable_key(const std::string& key) {
  std::string out;
  for (const char c : key.substr(0, 200)) {
    const auto u = static_cast<unsigned char>(c);
    out += u < 0x20 || u == 0x7f ? fmt::format("\\x{:02x}", u) : std::string(1, c);
  }
  return key.size() > 200 ? out + "…" : out;
}

}  // namespace

nlohmann::json parse_json_strict(std::string_view text, std::string_view what,
                                 std::string_view fix) {
  using json = nlohmann::json;
  // Keys seen in each object being parsed, innermost last.
  std::vector<std::unordered_set<std::string>> open_objects;
  const json::parser_callback_t check = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        open_objects.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case json::parse_event_t::key:
        if (!open_objects.empty() &&
            !open_objects.back().insert(parsed.get_ref<const std::string&>()).second) {
          throw DuplicateKey{parsed.get<std::string>()};
        }
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), check);
  } catch (const DuplicateKey& d) {
    FERRY_FORMAT_EXPECT(false,
                        "{}: the key \"{}\" appears twice in one object; which one is meant would "
                        "be a guess — {}",
                        what, printable_key(d.key), fix);
  } catch (const json::out_of_range& e) {
    // nlohmann's 406: a number beyond double's range.
    FERRY_FORMAT_EXPECT(false, "{}: {}; {}", what, e.what(), fix);
  } catch (const json::exception& e) {
    FERRY_FORMAT_EXPECT(false, "{} is not valid JSON ({}); {}", what, e.what(), fix);
  }
  return {};
}

nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view fix,
                              uint64_t max_bytes) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  FERRY_FORMAT_EXPECT(fd >= 0, "cannot read {}: {}; {}", path.string(), std::strerror(errno), fix);
  std::string text;
  int err = 0;
  struct stat st {};
  if (::fstat(fd, &st) != 0) err = errno;
  const bool is_dir = err == 0 && S_ISDIR(st.st_mode);
  const bool too_big = err == 0 && !is_dir && static_cast<uint64_t>(st.st_size) > max_bytes;
  if (err == 0 && !is_dir && !too_big) {
    char buf[1 << 16];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) err = errno;
      if (n <= 0) break;
      text.append(buf, static_cast<std::size_t>(n));
      if (text.size() > max_bytes) break;  // it grew while being read
    }
  }
  ::close(fd);
  FERRY_FORMAT_EXPECT(!is_dir, "{} is a directory, not a JSON file; {}", path.string(), fix);
  FERRY_FORMAT_EXPECT(err == 0, "cannot read {}: {}; {}", path.string(), std::strerror(err), fix);
  FERRY_FORMAT_EXPECT(!too_big && text.size() <= max_bytes,
                      "{} is larger than the {} bytes such a JSON file could need; {}",
                      path.string(), max_bytes, fix);
  return parse_json_strict(text, path.string(), fix);
}

}  // namespace ferry
