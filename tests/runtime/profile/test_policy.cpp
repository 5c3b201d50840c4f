// Policy JSON: a round trip keeps every knob; each bad field is refused with a message naming
// it; applying a policy sets the load options.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/profile/policy.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::profile {
namespace {

using nlohmann::json;

Policy sample() {
  Policy p;
  p.io_backend = offload::IoBackendKind::pread;
  p.queue_depth = 32;
  p.chunk_bytes = 4ULL << 20;
  p.direct = false;
  p.slot_count = 4;
  p.measured = {{"disk_read_gbps", 1.5}, {"compute_s_per_token", 0.02}};
  return p;
}

TEST(Policy, JsonRoundTripKeepsEveryKnob) {
  const Policy p = sample();
  const json j = to_json(p);
  EXPECT_EQ(j["staging"]["prefetch_depth"], 3);
  const Policy q = policy_from_json(j);
  EXPECT_TRUE(q.same_knobs(p));
  EXPECT_EQ(q.measured, p.measured);

  const test::TempDir tmp;
  save_policy(tmp / "policy.json", p);
  const Policy r = load_policy(tmp / "policy.json");
  EXPECT_TRUE(r.same_knobs(p));
  EXPECT_EQ(r.measured["disk_read_gbps"], 1.5);
}

TEST(Policy, ApplyingSetsIoOptionsAndSlots) {
  engine::LoadOptions o;
  apply_policy(sample(), o);
  EXPECT_EQ(o.io.backend, offload::IoBackendKind::pread);
  EXPECT_EQ(o.io.queue_depth, 32u);
  EXPECT_EQ(o.io.chunk_bytes, 4ULL << 20);
  EXPECT_FALSE(o.io.direct);
  EXPECT_EQ(o.slot_count, 4u);
  // A policy without a slot count leaves the planner to choose.
  Policy p = sample();
  p.slot_count.reset();
  apply_policy(p, o);
  EXPECT_FALSE(o.slot_count.has_value());
}

// Each edit of a good policy, and the field its error must name.
TEST(Policy, BadFieldsAreRefusedByName) {
  const struct {
    const char* pointer;
    json value;
    const char* field;
  } cases[] = {
      {"/io/queue_depth", 0, "io.queue_depth"},
      {"/io/queue_depth", 5000, "io.queue_depth"},
      {"/io/queue_depth", "16", "io.queue_depth"},
      {"/io/chunk_bytes", 1000, "io.chunk_bytes"},
      {"/io/chunk_bytes", 4097 * 4, "io.chunk_bytes"},
      {"/io/engine", "warp", "io.engine"},
      {"/io/engine", 3, "io.engine"},
      {"/io/direct", "yes", "io.direct"},
      {"/io/queue_dept", 16, "io.queue_dept"},
      {"/staging/slot_count", 1, "staging.slot_count"},
      {"/staging/prefetch_depth", 1, "staging.prefetch_depth"},
      {"/staging", 3, "staging"},
      {"/ferry_policy", 2, "ferry_policy"},
      {"/speed", 1, "speed"},
  };
  for (const auto& c : cases) {
    json j = to_json(sample());
    j[json::json_pointer(c.pointer)] = c.value;
    try {
      policy_from_json(j, "policy.json");
      ADD_FAILURE() << c.pointer << " = " << c.value.dump() << " was accepted";
    } catch (const InvalidArgument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::string("\"") + c.field + "\""), std::string::npos) << msg;
      EXPECT_NE(msg.find("policy.json"), std::string::npos) << msg;
    }
  }
  EXPECT_THROW(policy_from_json(json::array()), InvalidArgument);
  json no_io = to_json(sample());
  no_io.erase("io");
  EXPECT_THROW(policy_from_json(no_io), InvalidArgument);
}

TEST(Policy, UnreadableOrInvalidFilesSayHowToMakeOne) {
  const test::TempDir tmp;
  try {
    load_policy(tmp / "missing.json");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("ferry tune"), std::string::npos) << e.what();
  }
  test::write_file(tmp / "bad.json", "{not json");
  try {
    load_policy(tmp / "bad.json");
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("bad.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ferry::profile
