#include "runtime/profile/policy.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <set>

#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"
#include "runtime/core/trace_export.hpp"
#include "runtime/core/units.hpp"

namespace ferry::profile {

namespace {

constexpr std::size_t kMaxSlots = 64;

using nlohmann::json;

[[noreturn]] void bad(std::string_view source, std::string_view field, const std::string& why) {
  throw InvalidArgument(
      fmt::format("{}: field \"{}\" {}; fix it or run ferry tune again to "
                  "write a new policy",
                  source, field, why));
}

const json& object_field(const json& j, std::string_view source, const char* name) {
  if (!j.contains(name)) bad(source, name, "is missing");
  if (!j[name].is_object())
    bad(source, name, fmt::format("must be an object, not {}", j[name].dump()));
  return j[name];
}

void refuse_unknown(const json& j, std::string_view source, std::string_view prefix,
                    const std::set<std::string>& known) {
  for (const auto& [key, value] : j.items())
    if (!known.contains(key))
      bad(source, fmt::format("{}{}", prefix, key),
          fmt::format("is not a policy field (known: {})", fmt::join(known, ", ")));
}

uint64_t unsigned_field(const json& j, std::string_view source, const std::string& path,
                        const char* name, uint64_t lo, uint64_t hi) {
  const json& v = j[name];
  if (!v.is_number_unsigned() || v.get<uint64_t>() < lo || v.get<uint64_t>() > hi)
    bad(source, path,
        fmt::format("is {}; it must be a whole number from {} to {}", v.dump(), lo, hi));
  return v.get<uint64_t>();
}

}  // namespace

offload::IoOptions Policy::io_options(offload::IoOptions base) const {
  base.backend = io_backend;
  base.queue_depth = queue_depth;
  base.chunk_bytes = chunk_bytes;
  base.direct = direct;
  return base;
}

std::string Policy::describe() const {
  return fmt::format(
      "{}, qd {}, {} chunks, {}{}", offload::to_string(io_backend), queue_depth,
      format_bytes(chunk_bytes), direct ? "O_DIRECT" : "buffered",
      slot_count ? fmt::format(", {} slots", *slot_count) : std::string(", planned slots"));
}

bool Policy::same_knobs(const Policy& o) const {
  return io_backend == o.io_backend && queue_depth == o.queue_depth &&
         chunk_bytes == o.chunk_bytes && direct == o.direct && slot_count == o.slot_count;
}

Policy default_policy() {
  const offload::IoOptions io = offload::IoOptions::from_env();
  Policy p;
  p.io_backend = io.backend;
  p.queue_depth = io.queue_depth;
  p.chunk_bytes = io.chunk_bytes;
  p.direct = io.direct;
  return p;
}

json to_json(const Policy& p) {
  json staging = json::object();
  if (p.slot_count) {
    staging["slot_count"] = *p.slot_count;
    staging["prefetch_depth"] = *p.slot_count - 1;
  }
  return {{"ferry_policy", kPolicyVersion},
          {"io",
           {{"engine", offload::to_string(p.io_backend)},
            {"queue_depth", p.queue_depth},
            {"chunk_bytes", p.chunk_bytes},
            {"direct", p.direct}}},
          {"staging", staging},
          {"measured", p.measured}};
}

Policy policy_from_json(const json& j, std::string_view source) {
  if (!j.is_object()) bad(source, "(top level)", "must be a JSON object written by ferry tune");
  refuse_unknown(j, source, "", {"ferry_policy", "io", "staging", "measured"});
  if (!j.contains("ferry_policy") || j["ferry_policy"] != kPolicyVersion)
    bad(source, "ferry_policy",
        fmt::format("is {}; this ferry reads version {}",
                    j.contains("ferry_policy") ? j["ferry_policy"].dump() : "missing",
                    kPolicyVersion));
  Policy p;
  const json& io = object_field(j, source, "io");
  refuse_unknown(io, source, "io.", {"engine", "queue_depth", "chunk_bytes", "direct"});
  if (io.contains("engine")) {
    if (!io["engine"].is_string()) bad(source, "io.engine", "must be a string such as \"uring\"");
    try {
      p.io_backend = offload::parse_io_backend(io["engine"].get<std::string>());
    } catch (const Error& e) {
      bad(source, "io.engine", e.what());
    }
  }
  if (io.contains("queue_depth"))
    p.queue_depth =
        static_cast<uint32_t>(unsigned_field(io, source, "io.queue_depth", "queue_depth", 1, 1024));
  if (io.contains("chunk_bytes")) {
    p.chunk_bytes = unsigned_field(io, source, "io.chunk_bytes", "chunk_bytes", 4096, 64ULL << 20);
    if (p.chunk_bytes % offload::kDirectIoAlignment != 0)
      bad(source, "io.chunk_bytes",
          fmt::format("is {}; it must be a multiple of 4096", p.chunk_bytes));
  }
  if (io.contains("direct")) {
    if (!io["direct"].is_boolean()) bad(source, "io.direct", "must be true or false");
    p.direct = io["direct"].get<bool>();
  }
  if (j.contains("staging")) {
    const json& st = object_field(j, source, "staging");
    refuse_unknown(st, source, "staging.", {"slot_count", "prefetch_depth"});
    if (st.contains("slot_count"))
      p.slot_count = unsigned_field(st, source, "staging.slot_count", "slot_count", 2, kMaxSlots);
    if (st.contains("prefetch_depth")) {
      const uint64_t depth =
          unsigned_field(st, source, "staging.prefetch_depth", "prefetch_depth", 1, kMaxSlots - 1);
      if (p.slot_count && *p.slot_count != depth + 1)
        bad(source, "staging.prefetch_depth",
            fmt::format("is {} but slot_count is {}; the prefetch depth is slot_count - 1", depth,
                        *p.slot_count));
      p.slot_count = depth + 1;
    }
  }
  if (j.contains("measured")) p.measured = object_field(j, source, "measured");
  return p;
}

Policy load_policy(const std::filesystem::path& path) {
  // Missing, a directory, unreadable, not JSON (1e400 and duplicate keys included): each named.
  json j;
  try {
    j = read_json_file(
        path, fmt::format("write one with ferry tune -m DIR --max-ram SIZE -o {}", path.string()),
        uint64_t{1} << 20);
  } catch (const FormatError& e) {
    throw InvalidArgument(e.what());  // a --policy argument, as the other policy errors are
  }
  return policy_from_json(j, path.string());
}

void save_policy(const std::filesystem::path& path, const Policy& p) {
  trace::write_text_file(path, to_json(p).dump(2) + "\n", "the policy");
}

void apply_policy(const Policy& p, engine::LoadOptions& options) {
  options.io = p.io_options(options.io);
  options.slot_count = p.slot_count;
  if (options.placement && p.slot_count) options.placement->slot_count = *p.slot_count;
}

}  // namespace ferry::profile
