// Scheduler: continuous batching over one ForwardPass. Requests queue (FIFO, bounded), are
// admitted into free sequence slots between steps and retired when they finish, so each step is
// ONE forward pass for every active sequence: a running sequence contributes its last sampled
// token, a sequence still reading its prompt its next chunk of up to prefill_chunk tokens (so a
// long prompt shares passes with the others' decoding instead of stalling them). Each sequence
// samples with its own seeded Sampler from its own row of logits, and the engine's per-row math
// does not depend on the other rows, so a request's tokens are the same whatever else runs
// beside it, and the same as generate() gives it alone.
//
// Speculation (speculative.hpp), when SchedulerOptions::draft_k > 0: a decoding sequence adds
// its last token and up to draft_k tokens from its own drafter as rows of the same pass; after
// it, the sequence keeps the drafts the target agrees with (greedy: the longest matching prefix;
// sampling: the accept/resample rule with its own seeded generator) plus the target's own next
// token, and its rejected positions are rolled back. Rows are row-independent, so its tokens are
// generate_speculative()'s for it alone: greedy, plain generate()'s.
//
// Threads: submit(), cancel(), stop() and stats() may be called from any thread; step() (or
// run(), which loops it) from one thread at a time, which is also where the callbacks run,
// never under the scheduler's lock (a callback may call submit() or cancel()).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/sampler.hpp"
#include "runtime/engine/speculative.hpp"

namespace ferry::engine {

enum class FinishReason {
  stop,       // sampled one of options.eos_ids (it is the last token returned)
  length,     // reached options.max_new_tokens
  cancelled,  // cancel(), on_token returned false, or stop(drain = false)
  error,      // the forward pass threw; RequestResult::error says why
};

// "stop", "length", "cancelled", "error" (OpenAI's finish_reason words for the first two).
const char* to_string(FinishReason reason);

struct RequestResult {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // every sampled token, an eos included
  FinishReason reason = FinishReason::length;
  std::string error;  // the engine's message when reason == error
  int64_t prompt_tokens = 0;
  double queued_s = 0;       // submit to admission into a slot
  double first_token_s = 0;  // submit to the first sampled token (0 when none was)
  double total_s = 0;        // submit to retirement
};

struct Request {
  std::vector<int32_t> prompt;
  GenerateOptions options;  // max_new_tokens, eos_ids, sampling (its seed is per request)
  // On the scheduler's thread with each new token; returning false cancels the request.
  std::function<bool(int32_t token)> on_token;
  // On the scheduler's thread, exactly once for every request submit() accepted.
  std::function<void(const RequestResult&)> on_done;
  // With SchedulerOptions::draft_k > 0: false decodes this request without drafts.
  bool speculate = true;
};

struct SchedulerOptions {
  int max_seqs = 0;              // sequences decoded together; 0: every slot of the engine
  int64_t prefill_chunk = 512;   // most prompt tokens one sequence adds per step
  int64_t max_step_rows = 0;     // most tokens in one pass (the plan's max_batch_rows); 0: no cap
  std::size_t max_queue = 64;    // requests waiting for a slot beyond which submit() refuses
  // Speculative decoding: most drafts a sequence adds to a pass (0: none), drafted by the
  // drafter make_drafter gives its slot (made once per slot, when the scheduler is; a drafter
  // with state of its own, a draft model's cache, keeps it per slot). Drafts take rows of the
  // pass: max_step_rows should allow max_seqs × (draft_k + 1) beside the prompt chunks, else
  // sequences draft fewer (the tokens stay the same under greedy decoding).
  int draft_k = 0;
  std::function<std::unique_ptr<Drafter>(int slot)> make_drafter;
  // Instead of make_drafter: a draft model drafting for every sequence at once, one pass of it
  // per drafting position for all of them (slot s of it for the sequence in slot s).
  std::shared_ptr<BatchModelDrafter> batch_drafter;
};

struct SchedulerStats {
  std::size_t queued = 0;  // waiting for a slot
  int active = 0;          // in a slot (reading the prompt or decoding)
  int max_seqs = 0;
  uint64_t requests_total = 0;  // accepted by submit()
  uint64_t requests_finished = 0;  // retired with stop or length
  uint64_t requests_cancelled = 0;
  uint64_t requests_failed = 0;
  uint64_t prompt_tokens_total = 0;     // prompt tokens run through the engine
  uint64_t generated_tokens_total = 0;  // tokens sampled
  uint64_t steps = 0;                   // forward passes
  double busy_s = 0;                    // wall time inside step()s that ran a pass
  // The passes with no prompt rows, for the aggregate decode rate (decode_tokens / decode_s).
  uint64_t decode_steps = 0;
  uint64_t decode_tokens = 0;
  double decode_s = 0;
  KvUsage kv;                           // the engine's cache after the last step
  // Speculation: drafts scored by the target, of them kept, and turned down (at most one a
  // round: the drafts after it go unjudged). accepted / (accepted + rejected) is the rate.
  uint64_t draft_rounds = 0;  // a speculating sequence's decoding row(s) in one pass
  uint64_t draft_round_tokens = 0;  // tokens those rounds emitted (per round: 1 + accepted)
  uint64_t draft_tokens_proposed = 0;
  uint64_t draft_tokens_accepted = 0;
  uint64_t draft_tokens_rejected = 0;
};

// submit() beyond max_queue waiting requests: try again after retry_after_s (an estimate from
// the recent pace of retirements, at least 1 s).
class QueueFull : public Error {
 public:
  QueueFull(const std::string& what, double retry_after_s)
      : Error(what), retry_after_s_(retry_after_s) {}
  double retry_after_s() const { return retry_after_s_; }

 private:
  double retry_after_s_;
};

// submit() after stop(): the scheduler takes no new requests.
class SchedulerStopped : public Error {
 public:
  using Error::Error;
};

class Scheduler {
 public:
  // The engine must outlive the scheduler, and nothing else may drive it meanwhile. Throws
  // InvalidArgument for options out of range (max_seqs beyond the engine's slots, chunk < 1).
  Scheduler(ForwardPass& engine, SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request and returns its id (1, 2, ...). Throws InvalidArgument naming the problem
  // (empty prompt, a token id outside the vocabulary, prompt + max_new_tokens beyond the
  // context or the KV pool, bad sampling parameters), QueueFull when max_queue requests already
  // wait, and SchedulerStopped after stop(); a refused request gets no on_done.
  uint64_t submit(Request request);
  // Ends a queued or active request with reason cancelled (at the next step), freeing its slot.
  // Unknown or finished ids are ignored.
  void cancel(uint64_t id);
  // One round: retire what was cancelled, admit queued requests into free slots, run one
  // forward pass over every active sequence, sample, retire the finished. Returns false when
  // there was nothing to do. An exception from an on_done is rethrown here once every other
  // callback of the round has run (the scheduler's state is whole: step() may be called again).
  bool step();
  // Loops step() on the calling thread, waiting on a condition variable while idle, until
  // stop() (after a drain, once everything accepted has finished).
  void run();
  // drain: take no new requests, finish every accepted one, then run() returns. Otherwise every
  // queued and active request ends cancelled at the next step and run() returns.
  void stop(bool drain);
  SchedulerStats stats() const;

 private:
  struct Seq;
  struct Done {  // a request retired this step, its on_done still to call
    std::unique_ptr<Seq> seq;
    FinishReason reason;
    std::string error;
  };
  // Frees the sequence's slot (and its KV) and moves it to `done`.
  void retire(std::unique_ptr<Seq>& slot, FinishReason reason, std::string error,
              std::vector<Done>& done);
  RequestResult result_of(Seq& seq, FinishReason reason, std::string error,
                          std::chrono::steady_clock::time_point now) const;

  ForwardPass& engine_;
  SchedulerOptions options_;
  // The KV pool's shape, read once: submit() runs beside a pass, so it must not ask the engine.
  KvUsage kv_shape_;

  mutable std::mutex mutex_;  // guards everything below but slots_
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Seq>> queue_;
  std::vector<uint64_t> cancel_requests_;
  uint64_t next_id_ = 1;
  bool stopping_ = false;    // stop() was called: no new requests
  bool cancel_all_ = false;  // stop(false): end everything at the next step
  SchedulerStats stats_;
  double recent_request_s_ = 0;  // moving average of total_s, for QueueFull's hint

  // [max_seqs], null when free. Only the thread in step() touches them (and the engine).
  std::vector<std::unique_ptr<Seq>> slots_;
  // [max_seqs] with draft_k > 0: each slot's drafter, used by whichever sequence holds it.
  std::vector<std::unique_ptr<Drafter>> drafters_;
};

// Runs every request to completion, batched, on the calling thread (ferry run --prompts,
// bindings, tests). Results are in the requests' order; their ids are 1-based positions.
std::vector<RequestResult> run_batch(ForwardPass& engine, std::vector<Request> requests,
                                     SchedulerOptions options);

}  // namespace ferry::engine
