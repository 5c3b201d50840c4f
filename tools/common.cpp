#include <fmt/format.h>
#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/session/plan.hpp"
#include "runtime/session/session.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

CLI::Validator whole_number(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& s) -> std::string {
        int64_t v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc() && end == s.data() + s.size() && v >= lo && v <= hi) return "";
        return fmt::format("'{}' is not a whole number from {} to {}", s, lo, hi);
      },
      fmt::format("INT in [{}, {}]", lo, hi));
}

CLI::Validator positive_number() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        double v = 0;
        const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec == std::errc() && end == s.data() + s.size() && v > 0 && std::isfinite(v))
          return "";
        return fmt::format("'{}' is not a positive number", s);
      },
      "NUMBER > 0");
}

CLI::Validator no_minus_sign() {
  return CLI::Validator(
      [](std::string& s) -> std::string {
        if (s.find('-') == std::string::npos) return "";
        return fmt::format("'{}' is negative; give a whole number from 0 to 2^64 - 1", s);
      },
      "");
}

// The library's (the Python module refuses the same sizes with the same words).
uint64_t parse_max_ram(const std::string& text) { return session::parse_max_ram(text); }

void eprint_text(std::string_view text) noexcept {
  // Unbuffered stderr: one fwrite is one write(2). Its failure is ignored on purpose.
  [[maybe_unused]] const std::size_t n = std::fwrite(text.data(), 1, text.size(), stderr);
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::string normalized = text;
  for (char& c : normalized)
    if (c == ',' || c == '[' || c == ']') c = ' ';
  std::istringstream in(normalized);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    std::size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    FERRY_EXPECT(used == word.size() && v >= 0 && v < (1ll << 31),
                 "--ids: '{}' is not a token id; give non-negative integers separated by spaces, "
                 "e.g. --ids \"15496 995\"",
                 word);
    ids.push_back(static_cast<int32_t>(v));
  }
  FERRY_EXPECT(!ids.empty(), "--ids is empty; give at least one token id");
  return ids;
}

Progress::Progress(std::string label, bool quiet)
    : label_(std::move(label)), enabled_(!quiet && ::isatty(STDERR_FILENO)), start_s_(now_s()) {}

void Progress::update(uint64_t done_bytes, uint64_t total_bytes) {
  if (!enabled_) return;
  const double t = now_s();
  if (done_bytes < total_bytes && t - last_draw_s_ < 0.2) return;
  last_draw_s_ = t;
  const double elapsed = t - start_s_;
  const double rate = elapsed > 0 ? static_cast<double>(done_bytes) / elapsed : 0;
  const double eta = rate > 0 ? static_cast<double>(total_bytes - done_bytes) / rate : 0;
  const double pct =
      total_bytes ? 100.0 * static_cast<double>(done_bytes) / static_cast<double>(total_bytes)
                  : 100.0;
  eprint("\r{}: {:5.1f}%  {} / {}  {}/s  ETA {:.0f} s   ", label_, pct, format_bytes(done_bytes),
         format_bytes(total_bytes), format_bytes(static_cast<uint64_t>(rate)), eta);
  std::fflush(stderr);
}

void Progress::update_count(uint64_t done, uint64_t total, std::string_view what) {
  if (!enabled_) return;
  const double t = now_s();
  if (done < total && t - last_draw_s_ < 0.2) return;
  last_draw_s_ = t;
  const double elapsed = t - start_s_;
  const double eta =
      done > 0 ? elapsed * static_cast<double>(total - done) / static_cast<double>(done) : 0;
  eprint("\r{}: {} / {} {}  {:.1f} s  ETA {:.0f} s   ", label_, done, total, what, elapsed,
         eta);
  std::fflush(stderr);
}

void Progress::finish() {
  if (enabled_ && last_draw_s_ >= 0) eprint("\n");
}

int64_t parse_kv_tokens(const std::string& text) {
  if (text.empty()) return 0;
  if (text == "auto") return session::kKvPoolAuto;
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  FERRY_EXPECT(used == text.size() && v >= 1,
               "--kv-tokens {} is not auto or a whole number of tokens (at least 1)", text);
  return v;
}

void add_kv_memory_option(CLI::App* cmd, std::string& kv_memory) {
  cmd->add_option("--kv-memory", kv_memory,
                  "where the KV pool lives with --device cuda: auto (the planner chooses, "
                  "default), device (VRAM) or host (pinned host memory, read over PCIe)")
      ->envname("FERRY_KV_MEMORY");
}

planner::KvMemory parse_kv_memory_flag(const std::string& text, const std::string& device) {
  if (text.empty()) return planner::KvMemory::automatic;
  const planner::KvMemory m = planner::parse_kv_memory(text);
  FERRY_EXPECT(m != planner::KvMemory::device || device != "cpu",
               "--kv-memory device puts the KV pool in VRAM, which needs --device cuda; the CPU "
               "backend keeps it in host memory");
  return m;
}

}  // namespace ferry::tools
