#include "planner/memory_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry::planner {

std::size_t MemoryPlan::resident_units() const {
  return static_cast<std::size_t>(std::count(tiers.begin(), tiers.end(), UnitTier::resident));
}

std::string MemoryPlan::describe(uint64_t budget_bytes) const {
  std::string d = fmt::format("{} of {} units resident ({})", resident_units(), tiers.size(),
                              format_bytes(resident_bytes));
  if (slot_count > 0)
    d += fmt::format(", {} streamed through {} slots of {}", tiers.size() - resident_units(),
                     slot_count, format_bytes(slot_bytes));
  return d + fmt::format("; peak {} of {}", format_bytes(peak_bytes), format_bytes(budget_bytes));
}

MemoryPlan plan_memory(const MemoryRequest& r) {
  FERRY_EXPECT(!r.unit_bytes.empty(), "nothing to plan: the model has no weight units");
  const uint64_t all = std::accumulate(r.unit_bytes.begin(), r.unit_bytes.end(), uint64_t{0});
  const uint64_t largest = *std::max_element(r.unit_bytes.begin(), r.unit_bytes.end());
  MemoryPlan p;
  p.minimum_bytes = r.fixed_bytes + 2 * largest;
  p.tiers.assign(r.unit_bytes.size(), UnitTier::streamed);

  if (r.fixed_bytes + all <= r.budget_bytes) {
    std::fill(p.tiers.begin(), p.tiers.end(), UnitTier::resident);
    p.resident_bytes = all;
    p.peak_bytes = r.fixed_bytes + all;
    return p;
  }
  if (r.budget_bytes < p.minimum_bytes) {
    throw PlanError(fmt::format(
        "the model needs at least {} of host memory here ({} to stream its largest weight unit "
        "of {} through 2 staging slots, plus {} for the KV cache, activations and runtime) but "
        "{} allows {}; raise --max-ram to at least {} or shorten the context",
        format_bytes(p.minimum_bytes), format_bytes(2 * largest), format_bytes(largest),
        format_bytes(r.fixed_bytes), r.budget_source, format_bytes(r.budget_bytes),
        format_bytes(p.minimum_bytes)));
  }
  // Deeper prefetch first: a third slot buys more overlap than one more resident unit saves
  // once most units stream; fall back to two slots when three do not fit.
  std::size_t slots = std::max<std::size_t>(2, r.max_slots);
  while (slots > 2 && r.fixed_bytes + slots * largest > r.budget_bytes) --slots;
  uint64_t left = r.budget_bytes - r.fixed_bytes - slots * largest;
  for (std::size_t i = 0; i < r.unit_bytes.size(); ++i) {
    if (r.unit_bytes[i] > left) break;  // keep the resident set a prefix: prefetch stays in order
    left -= r.unit_bytes[i];
    p.tiers[i] = UnitTier::resident;
    p.resident_bytes += r.unit_bytes[i];
  }
  p.slot_count = slots;
  p.slot_bytes = largest;
  p.staging_bytes = slots * largest;
  p.peak_bytes = r.fixed_bytes + p.resident_bytes + p.staging_bytes;
  return p;
}

}  // namespace ferry::planner
