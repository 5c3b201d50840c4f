// The ferry subcommands. Each registers its options on the app and returns the function that
// runs it; the logic lives in the libraries, these only parse, call and print.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "planner/plan.hpp"

namespace ferry::tools {

using Command = std::function<int()>;

Command add_run(CLI::App& app);
Command add_logits(CLI::App& app);
Command add_perplexity(CLI::App& app);
Command add_tokenize(CLI::App& app);
Command add_template(CLI::App& app);
Command add_serve(CLI::App& app);
Command add_inspect(CLI::App& app);
Command add_make_model(CLI::App& app);
Command add_info(CLI::App& app);
Command add_bench_io(CLI::App& app);
Command add_profile(CLI::App& app);
Command add_tune(CLI::App& app);
Command add_convert(CLI::App& app);
Command add_verify(CLI::App& app);
Command add_plan(CLI::App& app);

// A plan saved by `ferry plan --json -o FILE`. Throws InvalidArgument naming the file and the
// problem.
planner::Plan read_plan_file(const std::string& path);

// --kv-tokens: "auto" (session::kKvPoolAuto) or a whole number of tokens ≥ 1; empty: 0 (every
// sequence slot at full context). Throws InvalidArgument naming the value.
int64_t parse_kv_tokens(const std::string& text);

// --kv-memory auto|device|host (run, serve, plan): where a CUDA plan may put the KV pool.
void add_kv_memory_option(CLI::App* cmd, std::string& kv_memory);
// The flag's value (empty: auto). Throws InvalidArgument naming a bad value, and refuses device
// on a backend without VRAM of its own (device "cpu").
planner::KvMemory parse_kv_memory_flag(const std::string& text, const std::string& device);

// "15496 995" or "15496,995" → ids. Throws InvalidArgument naming the bad entry.
std::vector<int32_t> parse_ids(const std::string& text);

// Validators whose refusals say the allowed range in words (CLI11's PositiveNumber printed
// "not in range 1 to 1.797693e+308", all 309 digits of it).
CLI::Validator whole_number(int64_t lo, int64_t hi);  // an integer in [lo, hi]
CLI::Validator positive_number();                     // a real number > 0
CLI::Validator no_minus_sign();  // an unsigned value: "-1" would wrap to 2^64 - 1

// --max-ram's value in bytes. More than the machine (or this process's memory cgroup) has is
// refused: the plan would place more in RAM than fits, and the run would swap or be killed.
uint64_t parse_max_ram(const std::string& text);

// Writes to stderr and never throws: a full or closed stderr must not turn a note into an
// error, nor an error message into an abort (fmt::print throws when the write fails).
void eprint_text(std::string_view text) noexcept;
template <class... Args>
void eprint(fmt::format_string<Args...> format, Args&&... args) noexcept {
  try {
    eprint_text(fmt::format(format, std::forward<Args>(args)...));
  } catch (...) {  // out of memory while formatting a note: drop the note
  }
}

// A progress line on stderr (bytes, rate, ETA), drawn only when stderr is a terminal.
class Progress {
 public:
  Progress(std::string label, bool quiet);
  void update(uint64_t done_bytes, uint64_t total_bytes);
  // Counts instead of bytes: "profile: 3 / 16 tokens  ETA 2 s".
  void update_count(uint64_t done, uint64_t total, std::string_view what);
  void finish();

 private:
  std::string label_;
  bool enabled_;
  double start_s_;
  double last_draw_s_ = -1;
};

}  // namespace ferry::tools
