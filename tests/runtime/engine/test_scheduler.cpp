// The continuous-batching scheduler: a request's tokens equal generate()'s for it alone, token
// for token (greedy and seeded sampling), whatever runs beside it, however its prompt is
// chunked and whenever it arrives; cancellation, the queue bound, refusals, shutdown, engine
// failures and threads; speculation inside the batch (greedy equal to plain decoding, seeded
// sampling equal to the single-sequence speculative path, stops inside accepted runs).
#include "runtime/engine/scheduler.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cctype>
#include <future>
#include <thread>

#include "runtime/core/error.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/speculative.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kContext = 128;

// Prompts of different lengths (1 to 37 tokens) over a 1000-token vocabulary.
std::vector<std::vector<int32_t>> prompts(int n) {
  std::vector<std::vector<int32_t>> out;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> p;
    const int len = 1 + (i * 13) % 37;
    for (int t = 0; t < len; ++t) p.push_back((i * 97 + t * 31 + 5) % 1000);
    out.push_back(std::move(p));
  }
  return out;
}

GenerateOptions greedy(int64_t n) {
  GenerateOptions o;
  o.max_new_tokens = n;
  return o;
}

GenerateOptions sampled(int64_t n, uint64_t seed) {
  GenerateOptions o;
  o.max_new_tokens = n;
  o.sampling.temperature = 0.9f;
  o.sampling.top_k = 40;
  o.sampling.top_p = 0.95f;
  o.sampling.seed = seed;
  return o;
}

// A loaded fixture model with engines of any size over the same weights.
class SchedulerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { model_ = load_model(test::data_dir() / GetParam()); }

  std::unique_ptr<Engine> engine(int max_seqs) {
    return std::make_unique<Engine>(*model_.weights, EngineOptions{max_seqs, kContext},
                                    default_thread_pool());
  }

  // What generate() gives each request alone, on a one-slot engine.
  std::vector<std::vector<int32_t>> alone(const std::vector<Request>& requests) {
    auto e = engine(1);
    std::vector<std::vector<int32_t>> out;
    for (const Request& r : requests) out.push_back(generate(*e, 0, r.prompt, r.options));
    return out;
  }

  LoadedModel model_;
};

std::vector<Request> mixed_requests(int n, bool sampling) {
  std::vector<Request> out;
  const auto ps = prompts(n);
  for (int i = 0; i < n; ++i) {
    Request r;
    r.prompt = ps[static_cast<std::size_t>(i)];
    const int64_t new_tokens = 3 + (i * 7) % 17;  // different lengths retire at different steps
    r.options = sampling ? sampled(new_tokens, 1000 + static_cast<uint64_t>(i)) : greedy(new_tokens);
    out.push_back(std::move(r));
  }
  return out;
}

void expect_tokens(const std::vector<RequestResult>& got,
                   const std::vector<std::vector<int32_t>>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].tokens, want[i]) << "request " << i;
    EXPECT_EQ(got[i].reason, FinishReason::length) << "request " << i;
    EXPECT_EQ(got[i].error, "") << "request " << i;
  }
}

TEST_P(SchedulerTest, GreedyBatchedEqualsAlone) {
  const auto requests = mixed_requests(7, false);
  const auto want = alone(requests);
  auto e = engine(4);  // 7 requests through 4 slots: admissions as others retire
  SchedulerOptions o;
  const auto got = run_batch(*e, requests, o);
  expect_tokens(got, want);
  for (std::size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].id, i + 1);
    EXPECT_EQ(got[i].prompt_tokens, static_cast<int64_t>(requests[i].prompt.size()));
    EXPECT_GT(got[i].first_token_s, 0.0);
    EXPECT_GE(got[i].total_s, got[i].first_token_s);
  }
}

TEST_P(SchedulerTest, SeededSamplingBatchedEqualsAlone) {
  const auto requests = mixed_requests(6, true);
  const auto want = alone(requests);
  auto e = engine(3);
  expect_tokens(run_batch(*e, requests, {}), want);
}

TEST_P(SchedulerTest, ChunkedPrefillEqualsWholePrompt) {
  const auto requests = mixed_requests(5, true);
  const auto want = alone(requests);
  for (int64_t chunk : {1, 3, 8}) {
    SCOPED_TRACE("prefill_chunk " + std::to_string(chunk));
    auto e = engine(5);
    SchedulerOptions o;
    o.prefill_chunk = chunk;
    expect_tokens(run_batch(*e, requests, o), want);
  }
  // A cap on rows per pass delays prompt chunks but changes no token.
  auto e = engine(5);
  SchedulerOptions o;
  o.prefill_chunk = 16;
  o.max_step_rows = 7;
  expect_tokens(run_batch(*e, requests, o), want);
}

// Prompts arrive while others decode (from a token callback and between steps).
TEST_P(SchedulerTest, StaggeredArrivalsEqualAlone) {
  auto requests = mixed_requests(6, true);
  const auto want = alone(requests);
  auto e = engine(3);
  SchedulerOptions o;
  o.prefill_chunk = 4;
  Scheduler s(*e, o);
  std::vector<RequestResult> got(requests.size());
  auto submit = [&](std::size_t i) {
    Request r = requests[i];
    r.on_done = [&got, i](const RequestResult& res) { got[i] = res; };
    s.submit(std::move(r));
  };
  std::size_t next = 0;
  submit(next++);
  int steps = 0;
  while (s.step() || next < requests.size()) {
    ++steps;
    if (next < requests.size() && steps % 2 == 0) submit(next++);
    ASSERT_LT(steps, 1000);
  }
  expect_tokens(got, want);
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.requests_total, requests.size());
  EXPECT_EQ(st.requests_finished, requests.size());
  EXPECT_EQ(st.active, 0);
  EXPECT_EQ(st.queued, 0u);
  uint64_t prompt_total = 0, generated = 0;
  for (std::size_t i = 0; i < requests.size(); ++i) {
    prompt_total += requests[i].prompt.size();
    generated += want[i].size();
  }
  EXPECT_EQ(st.prompt_tokens_total, prompt_total);
  EXPECT_EQ(st.generated_tokens_total, generated);
  // Batched: fewer passes than one sequence at a time would take.
  EXPECT_LT(st.steps, generated);
  EXPECT_GT(st.busy_s, 0.0);
  EXPECT_GT(st.decode_steps, 0u);
  EXPECT_LT(st.decode_steps, st.steps);  // some passes carried prompt chunks
  EXPECT_LT(st.decode_tokens, generated);
  EXPECT_LE(st.decode_s, st.busy_s);
}

TEST_P(SchedulerTest, EosStopsWithReasonStop) {
  auto requests = mixed_requests(2, false);
  const auto want = alone(requests);
  ASSERT_GE(want[0].size(), 3u);
  requests[0].options.eos_ids = {want[0][2]};
  auto e = engine(2);
  const auto got = run_batch(*e, requests, {});
  // It stops at the first occurrence of the eos token, which it still returns.
  const auto first = std::find(want[0].begin(), want[0].end(), want[0][2]);
  EXPECT_EQ(got[0].tokens, std::vector<int32_t>(want[0].begin(), first + 1));
  EXPECT_EQ(got[0].reason, FinishReason::stop);
  EXPECT_EQ(got[1].tokens, want[1]);
}

TEST_P(SchedulerTest, CancelFreesTheSlot) {
  auto requests = mixed_requests(3, false);
  for (auto& r : requests) r.options.max_new_tokens = 10;
  const auto want = alone(requests);
  auto e = engine(1);  // one slot: the others wait until the first leaves
  Scheduler s(*e, {});
  std::vector<RequestResult> got(3);
  std::vector<uint64_t> ids;
  for (std::size_t i = 0; i < 3; ++i) {
    Request r = requests[i];
    r.on_done = [&got, i](const RequestResult& res) { got[i] = res; };
    if (i == 1) r.on_token = [n = 0](int32_t) mutable { return ++n < 4; };  // stops after 4
    ids.push_back(s.submit(std::move(r)));
  }
  s.cancel(ids[2]);  // still queued: it never gets a slot
  for (int i = 0; i < 3; ++i) s.step();  // three tokens for the first
  EXPECT_EQ(got[2].reason, FinishReason::cancelled);
  EXPECT_TRUE(got[2].tokens.empty());
  EXPECT_GT(e->length(0), 0);
  s.cancel(ids[0]);  // active: ends at the next step with what it has, its slot to the second
  while (s.step()) {
  }
  EXPECT_EQ(got[0].reason, FinishReason::cancelled);
  EXPECT_EQ(got[0].tokens, std::vector<int32_t>(want[0].begin(), want[0].begin() + 3));
  EXPECT_EQ(got[1].reason, FinishReason::cancelled);
  EXPECT_EQ(got[1].tokens, std::vector<int32_t>(want[1].begin(), want[1].begin() + 4));
  EXPECT_EQ(e->length(0), 0);  // the slot was reset
  EXPECT_EQ(s.stats().requests_cancelled, 3u);
  EXPECT_EQ(s.stats().active, 0);
  s.cancel(ids[0]);  // finished ids are ignored
  EXPECT_FALSE(s.step());
}

TEST_P(SchedulerTest, QueueBoundThrowsQueueFull) {
  auto e = engine(1);
  SchedulerOptions o;
  o.max_queue = 2;
  Scheduler s(*e, o);
  const auto requests = mixed_requests(4, false);
  s.submit(requests[0]);  // the free slot's, until the next step admits it
  s.submit(requests[1]);
  s.submit(requests[2]);
  try {
    s.submit(requests[3]);
    FAIL() << "a third request was queued beside the free slot's";
  } catch (const QueueFull& err) {
    EXPECT_GE(err.retry_after_s(), 1.0);
    EXPECT_NE(std::string(err.what()).find("2 requests are already waiting"), std::string::npos)
        << err.what();
  }
  s.step();  // the first leaves the queue for the slot, which is now busy: still full
  EXPECT_THROW(s.submit(requests[3]), QueueFull);
  // Room again once the first finishes and the second takes its slot.
  while (s.stats().queued >= 2u + static_cast<std::size_t>(1 - s.stats().active)) s.step();
  EXPECT_EQ(s.stats().requests_finished, 1u);
  EXPECT_NO_THROW(s.submit(requests[3]));
  while (s.step()) {
  }
  EXPECT_EQ(s.stats().requests_finished, 4u);
}

TEST_P(SchedulerTest, InvalidRequestsAreRefusedWithoutHarm) {
  auto requests = mixed_requests(2, true);
  const auto want = alone(requests);
  auto e = engine(2);
  Scheduler s(*e, {});
  std::vector<RequestResult> got(2);
  for (std::size_t i = 0; i < 2; ++i) {
    Request r = requests[i];
    r.on_done = [&got, i](const RequestResult& res) { got[i] = res; };
    s.submit(std::move(r));
  }
  s.step();
  auto refused = [&](Request r, const std::string& words) {
    bool called = false;
    r.on_done = [&called](const RequestResult&) { called = true; };
    try {
      s.submit(std::move(r));
      ADD_FAILURE() << "accepted a request that should fail with: " << words;
    } catch (const InvalidArgument& err) {
      EXPECT_NE(std::string(err.what()).find(words), std::string::npos) << err.what();
    }
    EXPECT_FALSE(called);
  };
  Request bad = requests[0];
  bad.prompt = {};
  refused(bad, "the prompt is empty");
  bad = requests[0];
  const int32_t vocab = static_cast<int32_t>(model_.config.vocab_size);
  bad.prompt[0] = vocab;
  refused(bad, fmt::format("token id {} (position 0 of the prompt) is outside the vocabulary",
                           vocab));
  bad = requests[0];
  bad.prompt.assign(kContext + 1, 1);
  refused(bad, "the prompt has 129 tokens but the context is 128 tokens");
  bad = requests[0];
  bad.options.max_new_tokens = kContext + 1;
  refused(bad, "exceeds the context of 128 tokens");
  bad = requests[0];
  bad.options.sampling.temperature = -1;
  refused(bad, "temperature");
  bad = requests[0];
  bad.options.max_new_tokens = -2;
  refused(bad, "must not be negative");
  while (s.step()) {
  }
  for (std::size_t i = 0; i < 2; ++i) EXPECT_EQ(got[i].tokens, want[i]);
  EXPECT_EQ(s.stats().requests_total, 2u);
  // A request for no tokens is accepted and ends at once, as generate() returns nothing.
  Request none = requests[0];
  none.options.max_new_tokens = 0;
  EXPECT_EQ(run_batch(*e, {none}, {})[0].reason, FinishReason::length);
}

// An engine that throws on chosen passes, around a real one.
class FailingEngine final : public ForwardPass {
 public:
  explicit FailingEngine(ForwardPass& inner) : inner_(inner) {}
  const model::ModelConfig& config() const override { return inner_.config(); }
  int64_t context() const override { return inner_.context(); }
  int max_seqs() const override { return inner_.max_seqs(); }
  int64_t length(int seq) const override { return inner_.length(seq); }
  KvUsage kv_usage() const override { return inner_.kv_usage(); }
  void reset(int seq) override { inner_.reset(seq); }
  void truncate(int seq, int64_t n) override { inner_.truncate(seq, n); }
  const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which) override {
    if (passes_++ == fail_at) throw Error("injected failure: the disk went away");
    return inner_.forward(batch, which);
  }
  int fail_at = -1;

 private:
  ForwardPass& inner_;
  int passes_ = 0;
};

TEST_P(SchedulerTest, EngineFailureFailsThatPassAndServesTheRest) {
  auto requests = mixed_requests(4, false);
  const auto want = alone(requests);
  auto e = engine(2);
  FailingEngine failing(*e);
  failing.fail_at = 2;  // the third pass: requests 0 and 1 are in it
  const auto got = run_batch(failing, requests, {});
  for (std::size_t i : {0u, 1u}) {
    EXPECT_EQ(got[i].reason, FinishReason::error);
    EXPECT_EQ(got[i].error, "injected failure: the disk went away");
    EXPECT_EQ(got[i].tokens, std::vector<int32_t>(want[i].begin(), want[i].begin() + 2));
  }
  for (std::size_t i : {2u, 3u}) EXPECT_EQ(got[i].tokens, want[i]);
}

// An engine whose KV pool is smaller than its slots (a paged cache): blocks of 16 tokens, 3 of
// them in all.
class SmallPoolEngine final : public ForwardPass {
 public:
  explicit SmallPoolEngine(ForwardPass& inner) : inner_(inner) {}
  const model::ModelConfig& config() const override { return inner_.config(); }
  int64_t context() const override { return inner_.context(); }
  int max_seqs() const override { return inner_.max_seqs(); }
  int64_t length(int seq) const override { return inner_.length(seq); }
  KvUsage kv_usage() const override {
    KvUsage kv;
    kv.block_tokens = 16;
    kv.blocks_total = 3;
    for (int s = 0; s < max_seqs(); ++s) kv.blocks_used += (length(s) + 15) / 16;
    return kv;
  }
  void reset(int seq) override { inner_.reset(seq); }
  void truncate(int seq, int64_t n) override { inner_.truncate(seq, n); }
  const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which) override {
    max_in_pass = std::max(max_in_pass, static_cast<int>(batch.size()));
    return inner_.forward(batch, which);
  }
  int max_in_pass = 0;

 private:
  ForwardPass& inner_;
};

TEST_P(SchedulerTest, AdmitsOnlyWhatTheKvPoolHolds) {
  // Each needs 10 + 9 = 19 positions: 2 blocks, so only one fits in 3 blocks at a time.
  std::vector<Request> requests(3);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    for (int t = 0; t < 10; ++t) requests[i].prompt.push_back(static_cast<int32_t>(i * 10 + t));
    requests[i].options = greedy(10);
  }
  const auto want = alone(requests);
  auto e = engine(4);
  SmallPoolEngine pool(*e);
  Scheduler s(pool, {});
  std::vector<RequestResult> got(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    Request r = requests[i];
    r.on_token = [&s](int32_t) {
      EXPECT_LE(s.stats().kv.blocks_used, 3);
      return true;
    };
    r.on_done = [&got, i](const RequestResult& res) { got[i] = res; };
    s.submit(std::move(r));
  }
  // One that could never fit is refused up front.
  Request big = requests[0];
  big.options.max_new_tokens = 40;  // 10 + 39 positions: 4 blocks
  try {
    s.submit(big);
    FAIL() << "accepted a request larger than the KV pool";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("needs 4 KV blocks of 16 tokens but the cache holds 3"),
              std::string::npos)
        << err.what();
  }
  while (s.step()) {
  }
  EXPECT_EQ(pool.max_in_pass, 1);
  for (std::size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(got[i].tokens, want[i]);
  EXPECT_EQ(s.stats().kv.blocks_used, 0);
}

TEST_P(SchedulerTest, StopDrainFinishesEverything) {
  const auto requests = mixed_requests(5, false);
  const auto want = alone(requests);
  auto e = engine(2);
  Scheduler s(*e, {});
  std::vector<std::promise<RequestResult>> done(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    Request r = requests[i];
    r.on_done = [&done, i](const RequestResult& res) { done[i].set_value(res); };
    s.submit(std::move(r));
  }
  s.stop(true);
  EXPECT_THROW(s.submit(requests[0]), SchedulerStopped);
  std::thread runner([&] { s.run(); });
  runner.join();  // run() returns once the drain is over
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const RequestResult r = done[i].get_future().get();
    EXPECT_EQ(r.reason, FinishReason::length);
    EXPECT_EQ(r.tokens, want[i]);
  }
}

TEST_P(SchedulerTest, StopCancelEndsEverything) {
  auto requests = mixed_requests(5, false);
  for (auto& r : requests) r.options.max_new_tokens = 100;
  auto e = engine(2);
  Scheduler s(*e, {});
  std::atomic<int> tokens{0};
  std::vector<std::promise<RequestResult>> done(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    Request r = requests[i];
    r.on_token = [&tokens](int32_t) {
      ++tokens;
      return true;
    };
    r.on_done = [&done, i](const RequestResult& res) { done[i].set_value(res); };
    s.submit(std::move(r));
  }
  std::thread runner([&] { s.run(); });
  while (tokens < 3) std::this_thread::yield();
  s.stop(false);
  runner.join();
  for (auto& d : done) EXPECT_EQ(d.get_future().get().reason, FinishReason::cancelled);
  EXPECT_EQ(e->length(0), 0);
  EXPECT_EQ(e->length(1), 0);
  const SchedulerStats st = s.stats();
  EXPECT_EQ(st.requests_cancelled, requests.size());
  EXPECT_EQ(st.active, 0);
  EXPECT_EQ(st.queued, 0u);
}

TEST_P(SchedulerTest, ThreadsSubmitWhileRunServes) {
  const auto requests = mixed_requests(12, true);
  const auto want = alone(requests);
  auto e = engine(4);
  SchedulerOptions o;
  o.prefill_chunk = 5;
  Scheduler s(*e, o);
  std::thread runner([&] { s.run(); });
  std::vector<std::promise<RequestResult>> done(requests.size());
  std::vector<std::thread> clients;
  for (std::size_t t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      for (std::size_t i = t; i < requests.size(); i += 4) {
        Request r = requests[i];
        r.on_done = [&done, i](const RequestResult& res) { done[i].set_value(res); };
        s.submit(std::move(r));
        (void)s.stats();
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
  }
  for (auto& c : clients) c.join();
  for (std::size_t i = 0; i < requests.size(); ++i)
    EXPECT_EQ(done[i].get_future().get().tokens, want[i]) << "request " << i;
  s.stop(true);
  runner.join();
  EXPECT_EQ(s.stats().requests_finished, requests.size());
}

// --- speculation inside the batch ----------------------------------------------------------

// mixed_requests with each prompt said twice: prompt lookup finds matches from the start.
std::vector<Request> repeating_requests(int n, bool sampling) {
  auto requests = mixed_requests(n, sampling);
  for (Request& r : requests) {
    const auto copy = r.prompt;
    r.prompt.insert(r.prompt.end(), copy.begin(), copy.end());
  }
  return requests;
}

// Drafters for the scheduler's slots: prompt lookup, or the model drafting for itself on its own
// engine (every draft right), one slot of it per scheduler slot.
SchedulerOptions speculating(int k, Engine* self = nullptr) {
  SchedulerOptions o;
  o.draft_k = k;
  if (self) {
    o.make_drafter = [self](int slot) -> std::unique_ptr<Drafter> {
      return std::make_unique<ModelDrafter>(*self, "self", slot);
    };
  } else {
    o.make_drafter = [](int) -> std::unique_ptr<Drafter> {
      return std::make_unique<LookupDrafter>();
    };
  }
  return o;
}

// The model drafting for itself for every sequence at once (one pass per drafting position).
SchedulerOptions batch_speculating(int k, ForwardPass& self) {
  SchedulerOptions o;
  o.draft_k = k;
  o.batch_drafter = std::make_shared<BatchModelDrafter>(self, "self");
  return o;
}

// Counts the passes of the engine it wraps.
class CountingEngine final : public ForwardPass {
 public:
  explicit CountingEngine(ForwardPass& inner) : inner_(inner) {}
  const model::ModelConfig& config() const override { return inner_.config(); }
  int64_t context() const override { return inner_.context(); }
  int max_seqs() const override { return inner_.max_seqs(); }
  int64_t length(int seq) const override { return inner_.length(seq); }
  KvUsage kv_usage() const override { return inner_.kv_usage(); }
  void reset(int seq) override { inner_.reset(seq); }
  void truncate(int seq, int64_t n) override { inner_.truncate(seq, n); }
  const std::vector<float>& forward(std::span<const SeqTokens> batch, LogitsFor which) override {
    ++passes;
    return inner_.forward(batch, which);
  }
  int passes = 0;

 private:
  ForwardPass& inner_;
};

// Greedy: a batch that speculates gives every request plain decoding's tokens, with lookup and
// with a drafter that is always right, for k = 1, 2, 4 and 7; fewer passes than without drafts
// when drafts are right; the counters add up.
TEST_P(SchedulerTest, SpeculationGreedyBatchedEqualsPlain) {
  const auto requests = repeating_requests(7, false);
  const auto want = alone(requests);
  auto plain_engine = engine(4);
  Scheduler plain(*plain_engine, {});
  for (const Request& r : requests) plain.submit(r);
  while (plain.step()) {
  }
  uint64_t generated = 0;
  for (const auto& w : want) generated += w.size();
  for (const int k : {1, 2, 4, 7}) {
    SCOPED_TRACE("k = " + std::to_string(k));
    auto e = engine(4);
    Scheduler lookup(*e, speculating(k));
    std::vector<RequestResult> got(requests.size());
    for (std::size_t i = 0; i < requests.size(); ++i) {
      Request r = requests[i];
      r.on_done = [&got, i](const RequestResult& res) { got[i] = res; };
      lookup.submit(std::move(r));
    }
    while (lookup.step()) {
    }
    expect_tokens(got, want);
    const SchedulerStats ls = lookup.stats();
    EXPECT_EQ(ls.generated_tokens_total, generated);
    // The GPT-J fixtures repeat what they read; Llama 3's large vocabulary gives tokens the
    // context never held, so lookup finds nothing to propose there.
    if (GetParam().rfind("gptj", 0) == 0) {
      EXPECT_GT(ls.draft_tokens_proposed, 0u);
    }
    EXPECT_LE(ls.draft_tokens_accepted + ls.draft_tokens_rejected, ls.draft_tokens_proposed);
    EXPECT_EQ(ls.kv.blocks_used, 0);

    auto self_engine = engine(4);
    auto e2 = engine(4);
    Scheduler self(*e2, speculating(k, self_engine.get()));
    for (std::size_t i = 0; i < requests.size(); ++i) {
      Request r = requests[i];
      r.on_done = [&got, i](const RequestResult& res) { got[i] = res; };
      self.submit(std::move(r));
    }
    while (self.step()) {
    }
    expect_tokens(got, want);
    const SchedulerStats ss = self.stats();
    EXPECT_EQ(ss.draft_tokens_accepted, ss.draft_tokens_proposed) << "the model drafting itself";
    EXPECT_EQ(ss.draft_tokens_rejected, 0u);
    EXPECT_GT(ss.draft_tokens_proposed, 0u);
    EXPECT_LT(ss.steps, plain.stats().steps) << "right drafts save passes";
    EXPECT_GT(ss.draft_round_tokens, ss.draft_rounds) << "more than a token per pass";
    EXPECT_EQ(ss.draft_round_tokens - ss.draft_rounds, ss.draft_tokens_accepted);
    EXPECT_EQ(ss.generated_tokens_total, generated);
    EXPECT_EQ(ss.kv.blocks_used, 0);

    // The same drafts from one pass of the draft model per position for all sequences.
    auto one_engine = engine(4);
    CountingEngine one_by_one(*one_engine);
    auto batch_engine = engine(4);
    CountingEngine together(*batch_engine);
    auto e4 = engine(4);
    Scheduler batched(*e4, batch_speculating(k, together));
    for (std::size_t i = 0; i < requests.size(); ++i) {
      Request r = requests[i];
      r.on_done = [&got, i](const RequestResult& res) { got[i] = res; };
      batched.submit(std::move(r));
    }
    while (batched.step()) {
    }
    expect_tokens(got, want);
    const SchedulerStats bs = batched.stats();
    EXPECT_EQ(bs.draft_tokens_proposed, ss.draft_tokens_proposed) << "the same drafts";
    EXPECT_EQ(bs.draft_tokens_accepted, bs.draft_tokens_proposed);
    EXPECT_EQ(bs.steps, ss.steps);
    auto e5 = engine(4);
    SchedulerOptions per_slot;
    per_slot.draft_k = k;
    per_slot.make_drafter = [&one_by_one](int slot) -> std::unique_ptr<Drafter> {
      return std::make_unique<ModelDrafter>(one_by_one, "self", slot);
    };
    expect_tokens(run_batch(*e5, requests, per_slot), want);
    EXPECT_LT(together.passes, one_by_one.passes) << "one draft pass for all sequences";
  }
}

// An end id, the length, and a callback that stops: each ends the request at exactly the token
// plain decoding ends it, inside a run of accepted drafts, with nothing after it.
TEST_P(SchedulerTest, SpeculationStopsInsideAnAcceptedRun) {
  auto requests = repeating_requests(6, false);
  for (auto& r : requests) r.options.max_new_tokens = 12;
  auto plain = alone(requests);
  // Requests 0 and 3 end at the token plain decoding gives at index 5; 1 and 4 at a length
  // that is not a whole number of rounds; 2 stops from its callback after 4 tokens.
  for (std::size_t i : {std::size_t{0}, std::size_t{3}}) requests[i].options.eos_ids = {plain[i][5]};
  requests[1].options.max_new_tokens = 6;
  requests[4].options.max_new_tokens = 3;
  const auto want = alone(requests);
  for (const int k : {3, 4, 8}) {
    SCOPED_TRACE("k = " + std::to_string(k));
    auto self_engine = engine(3);
    auto e = engine(3);
    std::vector<int32_t> seen;
    auto rs = requests;
    rs[2].on_token = [&seen](int32_t t) {
      seen.push_back(t);
      return seen.size() < 4;
    };
    const auto got = run_batch(*e, rs, speculating(k, self_engine.get()));
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (i == 2) continue;
      EXPECT_EQ(got[i].tokens, want[i]) << "request " << i;
    }
    for (std::size_t i : {std::size_t{0}, std::size_t{3}}) {
      const auto first = std::find(plain[i].begin(), plain[i].end(), plain[i][5]);
      EXPECT_EQ(got[i].tokens, std::vector<int32_t>(plain[i].begin(), first + 1));
      EXPECT_EQ(got[i].reason, FinishReason::stop) << "request " << i;
    }
    EXPECT_EQ(got[1].reason, FinishReason::length);
    EXPECT_EQ(got[1].tokens.size(), 6u);
    EXPECT_EQ(got[4].tokens.size(), 3u);
    EXPECT_EQ(got[2].tokens, std::vector<int32_t>(plain[2].begin(), plain[2].begin() + 4));
    EXPECT_EQ(got[2].reason, FinishReason::cancelled);
    EXPECT_EQ(seen, got[2].tokens);
    EXPECT_EQ(e->kv_usage().blocks_used, 0);
  }
}

// Seeded sampling: a request speculating in a batch gets the tokens generate_speculative gives
// it alone with the same seed and drafter (one generator, drawn in the same order), and a
// request that opts out gets plain generate()'s.
TEST_P(SchedulerTest, SpeculationSeededSamplingEqualsTheSingleSequencePath) {
  auto requests = repeating_requests(6, true);
  requests[5].speculate = false;
  const int k = 4;
  std::vector<std::vector<int32_t>> want;
  {
    auto e = engine(1);
    auto self_engine = engine(1);
    for (const Request& r : requests) {
      if (!r.speculate) {
        want.push_back(generate(*e, 0, r.prompt, r.options));
        continue;
      }
      LookupDrafter lookup;
      want.push_back(generate_speculative(*e, lookup, 0, r.prompt, r.options, {k}));
    }
  }
  auto e = engine(3);
  expect_tokens(run_batch(*e, requests, speculating(k)), want);

  // With a draft model (its drafts sampled, with probabilities): the same holds.
  std::vector<std::vector<int32_t>> want_self;
  {
    auto e1 = engine(1);
    auto d1 = engine(1);
    for (const Request& r : requests) {
      if (!r.speculate) {
        want_self.push_back(generate(*e1, 0, r.prompt, r.options));
        continue;
      }
      ModelDrafter self(*d1, "self", 0);
      want_self.push_back(generate_speculative(*e1, self, 0, r.prompt, r.options, {k}));
    }
  }
  auto e3 = engine(3);
  auto d3 = engine(3);
  expect_tokens(run_batch(*e3, requests, speculating(k, d3.get())), want_self);
  // Drafted for all sequences at once: the same draws, so the same tokens.
  auto e4 = engine(3);
  auto d4 = engine(3);
  expect_tokens(run_batch(*e4, requests, batch_speculating(k, *d4)), want_self);
}

// The KV pool: a request that needs every block of the pool fits with speculation too (drafts
// never reach past its last position), and a cap on rows per pass only makes drafts fewer.
TEST_P(SchedulerTest, SpeculationFitsTheKvPoolAndTheRowCap) {
  const auto requests = repeating_requests(4, false);
  const auto want = alone(requests);
  int64_t longest = 0;
  for (const Request& r : requests)
    longest = std::max<int64_t>(longest, static_cast<int64_t>(r.prompt.size()) +
                                             r.options.max_new_tokens - 1);
  const int64_t block = KvBlocks::kBlockTokens;
  EngineOptions eo{1, kContext};
  eo.kv_pool_tokens = (longest + block - 1) / block * block;
  Engine tight(*model_.weights, eo, default_thread_pool());
  auto self_engine = engine(1);
  expect_tokens(run_batch(tight, requests, speculating(8, self_engine.get())), want);

  auto e = engine(4);
  auto self4 = engine(4);
  SchedulerOptions o = speculating(8, self4.get());
  o.max_step_rows = 6;  // 4 decoding rows and 2 drafts between them
  o.prefill_chunk = 8;
  expect_tokens(run_batch(*e, requests, o), want);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, SchedulerTest,
                         ::testing::Values("gptj/tiny-f32", "gptj/tiny-f16-bin-sharded",
                                           "llama/llama3-gqa-f32",
                                           "llama/qwen2-bias-tied-bf16-sharded"),
                         [](const auto& param_info) {
                           std::string name = param_info.param;
                           for (char& c : name)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return name;
                         });

TEST(Scheduler, RefusesOptionsOutOfRange) {
  LoadedModel m = load_model(test::data_dir() / "gptj" / "tiny-f32");
  Engine e(*m.weights, {2, kContext}, default_thread_pool());
  SchedulerOptions o;
  o.max_seqs = 3;
  try {
    Scheduler s(e, o);
    FAIL() << "accepted 3 sequences on a 2-slot engine";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("asked for 3 sequences but the engine has 2 slots"),
              std::string::npos)
        << err.what();
  }
  o = {};
  o.draft_k = SpeculativeOptions::kMaxK + 1;
  try {
    Scheduler s(e, o);
    FAIL() << "accepted too many drafts";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("33 drafts per pass is out of range; use 0"),
              std::string::npos)
        << err.what();
  }
  o = {};
  o.draft_k = 4;
  try {
    Scheduler s(e, o);
    FAIL() << "accepted speculation without a drafter";
  } catch (const InvalidArgument& err) {
    EXPECT_NE(std::string(err.what()).find("needs a drafter"), std::string::npos) << err.what();
  }
  o = {};
  o.prefill_chunk = 0;
  EXPECT_THROW((Scheduler{e, o}), InvalidArgument);
  o = {};
  o.max_step_rows = 1;
  EXPECT_THROW((Scheduler{e, o}), InvalidArgument);
}

}  // namespace
}  // namespace ferry::engine
