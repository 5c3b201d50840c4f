// Reading the fields of tokenizer.json and its companions with errors that name the file, the
// field's path ("pre_tokenizer.pretokenizers[0].pattern") and what was found instead.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "runtime/core/error.hpp"

namespace ferry::text::detail {

// The text of a token or pattern for an error message: short, quoted, control bytes visible.
inline std::string shown(std::string_view token, std::size_t max_shown = 40) {
  std::string out = "\"";
  for (std::size_t i = 0; i < token.size() && i < max_shown; ++i) {
    const auto c = static_cast<unsigned char>(token[i]);
    if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (token.size() > max_shown) out += "...";
  return out + "\"";
}

// One place in one file, for messages: "tokenizer.json: normalizer.normalizers[1]".
struct JsonPlace {
  std::string_view source;  // the file
  std::string path;         // the field

  JsonPlace operator/(std::string_view key) const {
    return {source, path.empty() ? std::string(key) : path + "." + std::string(key)};
  }
  JsonPlace operator[](std::size_t index) const {
    return {source, fmt::format("{}[{}]", path, index)};
  }
};

inline const nlohmann::json& expect_object(const nlohmann::json& j, const JsonPlace& at) {
  FERRY_FORMAT_EXPECT(j.is_object(), "{}: {} must be an object, not {}", at.source, at.path,
                      j.type_name());
  return j;
}

// A string field; `fallback` when absent or null, an error when required and absent.
inline std::string string_field(const nlohmann::json& obj, std::string_view key,
                                const JsonPlace& at, std::optional<std::string> fallback) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    FERRY_FORMAT_EXPECT(fallback.has_value(), "{}: {} has no \"{}\"", at.source, at.path, key);
    return *fallback;
  }
  FERRY_FORMAT_EXPECT(it->is_string(), "{}: {} must be a string, not {}", at.source,
                      (at / key).path, it->dump());
  return it->get<std::string>();
}

inline bool bool_field(const nlohmann::json& obj, std::string_view key, const JsonPlace& at,
                       bool fallback) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  FERRY_FORMAT_EXPECT(it->is_boolean(), "{}: {} must be true or false, not {}", at.source,
                      (at / key).path, it->dump());
  return it->get<bool>();
}

inline std::int64_t int_field(const nlohmann::json& obj, std::string_view key, const JsonPlace& at,
                              std::int64_t fallback) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  FERRY_FORMAT_EXPECT(it->is_number_integer(), "{}: {} must be an integer, not {}", at.source,
                      (at / key).path, it->dump());
  return it->get<std::int64_t>();
}

}  // namespace ferry::text::detail
