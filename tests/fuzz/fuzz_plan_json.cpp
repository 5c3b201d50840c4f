// Fuzzes a saved plan (`ferry plan --json -o FILE`, replayed by `run --plan`): strict JSON
// parsing and planner::plan_from_json, then what run does with an accepted plan: its summary and
// its JSON again.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "planner/plan.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const nlohmann::json j = ferry::parse_json_strict(text, "plan.json", "fix it");
    const ferry::planner::Plan p = ferry::planner::plan_from_json(j);
    (void)p.summary();
    (void)ferry::planner::plan_to_json(p).dump();
  } catch (const ferry::Error&) {
  }
  return 0;
}
