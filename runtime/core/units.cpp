#include "runtime/core/units.hpp"

#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <string>

#include "runtime/core/error.hpp"

namespace ferry {

uint64_t parse_size(std::string_view text) {
  std::string s;
  for (char c : text)
    if (!std::isspace(static_cast<unsigned char>(c))) s += c;
  std::size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string number = s.substr(0, i);
  std::string unit;
  for (char c : s.substr(i)) unit += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  double value = 0;
  bool ok = !number.empty() && number.find('.') == number.rfind('.');
  if (ok) {
    try {
      std::size_t used = 0;
      value = std::stod(number, &used);
      ok = used == number.size();
    } catch (const std::exception&) {
      ok = false;
    }
  }
  double mult = -1;
  if (unit.empty() || unit == "b")
    mult = 1;
  else if (unit == "k" || unit == "kb")
    mult = 1e3;
  else if (unit == "m" || unit == "mb")
    mult = 1e6;
  else if (unit == "g" || unit == "gb")
    mult = 1e9;
  else if (unit == "t" || unit == "tb")
    mult = 1e12;
  else if (unit == "kib")
    mult = 1024.0;
  else if (unit == "mib")
    mult = 1024.0 * 1024;
  else if (unit == "gib")
    mult = 1024.0 * 1024 * 1024;
  else if (unit == "tib")
    mult = 1024.0 * 1024 * 1024 * 1024;
  FERRY_EXPECT(ok && mult > 0 && std::isfinite(value * mult) && value * mult < 1.8e19,
               "cannot read '{}' as a size; write a number with an optional unit, e.g. 512MiB, "
               "4GiB, 1.5GB or 1048576",
               text);
  return static_cast<uint64_t>(std::llround(value * mult));
}

std::string format_bytes(uint64_t nbytes) {
  const double b = static_cast<double>(nbytes);
  if (nbytes < 1024) return fmt::format("{} B", nbytes);
  if (b < 1024.0 * 1024) return fmt::format("{:.1f} KiB", b / 1024);
  if (b < 1024.0 * 1024 * 1024) return fmt::format("{:.1f} MiB", b / (1024.0 * 1024));
  return fmt::format("{:.2f} GiB", b / (1024.0 * 1024 * 1024));
}

}  // namespace ferry
