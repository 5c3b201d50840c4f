// JSON from files a user hands ferry, parsed strictly and reported with the file's name.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string_view>

namespace ferry {

// Parses `text`. Any error is a FormatError that starts with `what` (the file, e.g.
// "model/config.json" or "x.safetensors: the safetensors header") and ends with `fix`:
//   - not JSON: the parser's complaint and where;
//   - a number beyond double's range (1e400): which one;
//   - a key twice in one object: nlohmann keeps the last silently, so a second entry for a
//     tensor or a setting would win unseen (and surface later as a confusing "overlap").
nlohmann::json parse_json_strict(std::string_view text, std::string_view what,
                                 std::string_view fix);

// Reads the file at `path` (at most max_bytes) and parses it with parse_json_strict. Every
// failure is a FormatError naming the path: missing or unreadable (with the reason), a
// directory, larger than max_bytes, or bad JSON; each ends with `fix`.
nlohmann::json read_json_file(const std::filesystem::path& path, std::string_view fix,
                              uint64_t max_bytes = uint64_t{256} << 20);

}  // namespace ferry
