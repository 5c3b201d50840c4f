// Faults while weights stream: a read error, short reads, EAGAIN storms, a checkpoint cut
// short under a running model, io_uring refused. Each gives exact tokens or a clear error —
// never a hang, a crash or wrong tokens.
#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Reference {
  std::vector<int32_t> prompt;
  std::vector<int32_t> tokens;
};

Reference reference(const std::string& fixture) {
  const json e =
      json::parse(test::read_file(test::data_dir() / "gptj" / fixture / "expected.json"));
  const json& p = e["prompts"][1];
  return {p["input_ids"].get<std::vector<int32_t>>(),
          p["greedy_tokens"].get<std::vector<int32_t>>()};
}

LoadOptions streamed(const fs::path& dir, offload::IoOptions io) {
  LoadOptions o;
  o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), offload::Tier::disk, 3);
  io.report_fallbacks = false;
  o.io = std::move(io);
  return o;
}

std::vector<int32_t> greedy(LoadedModel& m, const Reference& r) {
  Engine engine(*m.weights, {}, default_thread_pool());
  GenerateOptions go;
  go.max_new_tokens = static_cast<int64_t>(r.tokens.size());
  return generate(engine, 0, r.prompt, go);
}

TEST(StreamingFaults, ShortReadsAndEagainStormsGiveExactTokens) {
  const fs::path dir = test::data_dir() / "gptj/sharded-f32";
  const Reference r = reference("sharded-f32");
  offload::IoOptions io;
  io.backend = offload::IoBackendKind::uring;
  io.chunk_bytes = 64 * 1024;
  std::atomic<int> n{0};
  io.test.on_completion = [&](const offload::IoFaultSite& site, int64_t res) -> int64_t {
    const int k = n++;
    if (site.attempt < 3 && k % 3 == 0) return -EAGAIN;          // a storm, retried
    if (res > 4096 && k % 3 == 1) return res / 2 / 4096 * 4096;  // short, resubmitted
    return res;
  };
  LoadedModel m = load_model(dir, streamed(dir, io));
  EXPECT_EQ(greedy(m, r), r.tokens);
  EXPECT_GT(n.load(), 10);
}

TEST(StreamingFaults, ReadErrorMidStreamNamesFileAndOffset) {
  const fs::path dir = test::data_dir() / "gptj/tiny-f32";
  const Reference r = reference("tiny-f32");
  for (auto backend : {offload::IoBackendKind::uring, offload::IoBackendKind::pread}) {
    offload::IoOptions io;
    io.backend = backend;
    std::atomic<int> reads{0};
    // Let the first few reads through (the first token), then fail one.
    io.test.on_completion = [&](const offload::IoFaultSite&, int64_t res) -> int64_t {
      return ++reads == 6 ? -EIO : res;
    };
    LoadedModel m = load_model(dir, streamed(dir, io));
    try {
      greedy(m, r);
      ADD_FAILURE() << "a failed read went unnoticed";
    } catch (const std::system_error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(e.code().value(), EIO) << msg;
      EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
      EXPECT_NE(msg.find("offset"), std::string::npos) << msg;
    }
    // The streamer is usable again: the failed unit's slot went back to the pool.
    EXPECT_EQ(greedy(m, r), r.tokens);
  }
}

TEST(StreamingFaults, CheckpointTruncatedWhileRunning) {
  test::TempDir tmp;
  test::copy_dir(test::data_dir() / "gptj/tiny-f32", tmp.path());
  fs::remove(tmp / "pytorch_model.bin");
  const Reference r = reference("tiny-f32");
  offload::IoOptions io;
  LoadedModel m = load_model(tmp.path(), streamed(tmp.path(), io));
  EXPECT_EQ(greedy(m, r), r.tokens);
  fs::resize_file(tmp / "model.safetensors", fs::file_size(tmp / "model.safetensors") / 2);
  try {
    greedy(m, r);
    ADD_FAILURE() << "a truncated checkpoint went unnoticed";
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  }
}

TEST(StreamingFaults, IoUringRefusedFallsBackToPread) {
  const fs::path dir = test::data_dir() / "gptj/tiny-f16-bin-sharded";
  const Reference r = reference("tiny-f16-bin-sharded");
  offload::IoOptions io;
  io.test.uring_init_errno = ENOSYS;
  LoadedModel m = load_model(dir, streamed(dir, io));
  EXPECT_NE(m.weights->streamer().describe().find("pread"), std::string::npos)
      << m.weights->streamer().describe();
  EXPECT_EQ(greedy(m, r), r.tokens);
}

TEST(StreamingFaults, MappedTierGivesExactTokens) {
  const fs::path dir = test::data_dir() / "gptj/sharded-f32";
  const Reference r = reference("sharded-f32");
  LoadOptions o;
  o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), offload::Tier::mapped);
  LoadedModel m = load_model(dir, o);
  EXPECT_EQ(greedy(m, r), r.tokens);
}

}  // namespace
}  // namespace ferry::engine
