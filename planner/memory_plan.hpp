// MemoryPlan: which weight units stay resident and how many staging slots stream the rest,
// so that everything ferry allocates on the host fits a RAM budget — or a refusal that says
// how much memory the model needs at the least.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ferry::planner {

enum class UnitTier { resident, streamed };

struct MemoryRequest {
  std::vector<uint64_t> unit_bytes;  // every weight unit (blocks, then the head), as read
  uint64_t fixed_bytes = 0;          // KV cache, activations, f32 vectors, runtime overhead
  uint64_t budget_bytes = 0;         // --max-ram, or what the machine has free
  std::string budget_source;         // "--max-ram", "available RAM (cgroup v2 …)"
  std::size_t max_slots = 3;         // staging slots when streaming (prefetch depth + 1)
};

struct MemoryPlan {
  std::vector<UnitTier> tiers;  // one per unit
  std::size_t slot_count = 0;   // 0 when everything is resident
  uint64_t slot_bytes = 0;
  uint64_t resident_bytes = 0;
  uint64_t staging_bytes = 0;
  uint64_t peak_bytes = 0;     // resident + staging + fixed
  uint64_t minimum_bytes = 0;  // the smallest budget that runs at all (every unit streamed)

  std::size_t resident_units() const;
  // "12 of 30 units resident (4.5 GiB), 18 streamed through 3 slots of 385 MiB; peak 6.1 GiB of 6.5
  // GiB"
  std::string describe(uint64_t budget_bytes) const;
};

// Keeps as many units resident as the budget allows after the staging slots, in unit order.
// Throws PlanError, naming the budget, its source and the minimum, when even streaming every
// unit through two slots does not fit.
MemoryPlan plan_memory(const MemoryRequest& request);

}  // namespace ferry::planner
