// Policy: the knobs `ferry tune` measured best on this machine for a model and budget — I/O
// engine, queue depth, chunk size, O_DIRECT, staging slot count (prefetch depth = slots − 1) —
// as JSON for `ferry run --policy`, with what was measured, for the planner's probe cache.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "offload/io_engine.hpp"
#include "runtime/engine/loaded_model.hpp"

namespace ferry::profile {

inline constexpr int kPolicyVersion = 1;

struct Policy {
  offload::IoBackendKind io_backend = offload::IoBackendKind::automatic;
  uint32_t queue_depth = 16;
  uint64_t chunk_bytes = 1ULL << 20;
  bool direct = true;
  std::optional<std::size_t> slot_count;  // none: the planner's choice
  // What the tune measured: disk_read_gbps, compute_s_per_token, decode_s_per_token,
  // default_decode_s_per_token, … (kept as written; the planner reads the figures it knows).
  nlohmann::json measured = nlohmann::json::object();

  // The I/O options of `base` with this policy's settings.
  offload::IoOptions io_options(offload::IoOptions base) const;
  // "uring, qd 16, 1.0 MiB chunks, O_DIRECT, 3 slots"
  std::string describe() const;
  bool same_knobs(const Policy& other) const;
};

// The default policy: what ferry uses with no --policy (the environment's FERRY_IO* applied).
Policy default_policy();

nlohmann::json to_json(const Policy& p);
// Validates every field; throws InvalidArgument naming the field (and `source`, e.g. the file),
// the value and what is accepted. Unknown fields are refused, so a typo does not pass silently.
Policy policy_from_json(const nlohmann::json& j, std::string_view source = "the policy");

Policy load_policy(const std::filesystem::path& path);
void save_policy(const std::filesystem::path& path, const Policy& p);

// Puts the policy's I/O options and slot count into load options.
void apply_policy(const Policy& p, engine::LoadOptions& options);

}  // namespace ferry::profile
