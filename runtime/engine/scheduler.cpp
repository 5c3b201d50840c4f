#include "runtime/engine/scheduler.hpp"

#include <algorithm>
#include <chrono>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <utility>

#include "runtime/core/clock.hpp"

namespace ferry::engine {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Positions a request can occupy at most: the last sampled token is never fed back. Speculation
// needs no more: a round drafts at most the tokens still wanted less one, so its rows reach this
// bound at most, before the rejected ones are rolled back.
int64_t max_positions(int64_t prompt, int64_t max_new_tokens) {
  return prompt + std::max<int64_t>(max_new_tokens - 1, 0);
}

// One slot of a batch drafter as a sequence's own drafter (what SpeculativeSequence holds);
// the scheduler drafts for all slots at once through the batch drafter itself.
class SlotDrafter final : public Drafter {
 public:
  SlotDrafter(std::shared_ptr<BatchModelDrafter> batch, int slot)
      : batch_(std::move(batch)), slot_(slot) {}
  std::string name() const override { return batch_->name(); }
  void propose(std::span<const int32_t> context, int k, const SamplingParams& sampling,
               std::mt19937_64& rng, Draft& out) override {
    DraftRequest r{slot_, context, k, &sampling, &rng, &out};
    batch_->propose({&r, 1});
  }
  uint64_t resident_bytes() const override { return batch_->resident_bytes(); }

 private:
  std::shared_ptr<BatchModelDrafter> batch_;
  int slot_;
};

}  // namespace

const char* to_string(FinishReason reason) {
  switch (reason) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::cancelled: return "cancelled";
    case FinishReason::error: return "error";
  }
  return "unknown";
}

// A request from submit() to retirement. While queued it belongs to queue_ (under the lock);
// once admitted, to slots_, which only the thread running step() touches.
struct Scheduler::Seq {
  Seq(uint64_t id_, Request request_, Clock::time_point submitted_)
      : id(id_), request(std::move(request_)), sampler(request.options.sampling),
        submitted(submitted_) {}

  uint64_t id;
  Request request;
  Sampler sampler;
  int slot = -1;
  int64_t kv_blocks = 0;   // blocks reserved for its longest possible length
  int64_t prompt_done = 0;  // prompt tokens already in its cache
  std::vector<int32_t> out;
  Clock::time_point submitted, admitted, first_token;
  // Speculation: its rounds (null when it decodes plainly), the prompt and every token emitted
  // (what its drafter reads), and this step's rows: the last token and the drafts.
  std::optional<SpeculativeSequence> spec;
  std::vector<int32_t> context;
  std::vector<int32_t> step_tokens;

  bool decoding() const { return prompt_done == static_cast<int64_t>(request.prompt.size()); }
};

namespace {

// Blocks of the KV pool a sequence of `positions` tokens may hold; 0 when the engine does not
// say how its cache is divided (every slot then holds a whole context).
int64_t blocks_for(const KvUsage& kv, int64_t positions) {
  if (kv.block_tokens <= 0 || kv.blocks_total <= 0) return 0;
  return (positions + kv.block_tokens - 1) / kv.block_tokens;
}

}  // namespace

Scheduler::Scheduler(ForwardPass& engine, SchedulerOptions options)
    : engine_(engine), options_(options) {
  const int slots = engine_.max_seqs();
  if (options_.max_seqs == 0) options_.max_seqs = slots;
  FERRY_EXPECT(options_.max_seqs >= 1 && options_.max_seqs <= slots,
               "the scheduler was asked for {} sequences but the engine has {} slots; make the "
               "engine with max_seqs = {} or ask for fewer",
               options_.max_seqs, slots, options_.max_seqs);
  FERRY_EXPECT(options_.prefill_chunk >= 1,
               "the prefill chunk ({} tokens) must be at least 1 token", options_.prefill_chunk);
  // Every decoding sequence adds one row per pass, so the cap must let them all run together.
  FERRY_EXPECT(options_.max_step_rows == 0 || options_.max_step_rows >= options_.max_seqs,
               "a pass of at most {} tokens cannot step {} sequences at once; allow at least {} "
               "rows per pass or run fewer sequences",
               options_.max_step_rows, options_.max_seqs, options_.max_seqs);
  FERRY_EXPECT(options_.max_queue >= 1, "the request queue must hold at least 1 request");
  FERRY_EXPECT(options_.draft_k >= 0 && options_.draft_k <= SpeculativeOptions::kMaxK,
               "{} drafts per pass is out of range; use 0 (no speculation) to {}",
               options_.draft_k, SpeculativeOptions::kMaxK);
  FERRY_EXPECT(options_.draft_k == 0 || options_.make_drafter || options_.batch_drafter,
               "speculation with {} drafts per pass needs a drafter (make_drafter)",
               options_.draft_k);
  if (options_.draft_k > 0) {
    for (int s = 0; s < options_.max_seqs; ++s) {
      drafters_.push_back(options_.batch_drafter
                              ? std::make_unique<SlotDrafter>(options_.batch_drafter, s)
                              : options_.make_drafter(s));
      FERRY_EXPECT(drafters_.back() != nullptr, "make_drafter gave no drafter for slot {}", s);
    }
  }
  slots_.resize(static_cast<std::size_t>(options_.max_seqs));
  stats_.max_seqs = options_.max_seqs;
  stats_.kv = engine_.kv_usage();
  kv_shape_ = stats_.kv;
  for (int s = 0; s < options_.max_seqs; ++s) engine_.reset(s);
}

Scheduler::~Scheduler() {
  // Every accepted request hears how it ended, even when the scheduler goes first.
  try {
    stop(false);
    while (step()) {
    }
  } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
}

uint64_t Scheduler::submit(Request request) {
  const model::ModelConfig& config = engine_.config();
  const auto n_prompt = static_cast<int64_t>(request.prompt.size());
  FERRY_EXPECT(n_prompt > 0, "the prompt is empty; give at least one token");
  for (std::size_t i = 0; i < request.prompt.size(); ++i)
    FERRY_EXPECT(request.prompt[i] >= 0 && request.prompt[i] < config.vocab_size,
                 "token id {} (position {} of the prompt) is outside the vocabulary of this "
                 "model (ids 0 … {})",
                 request.prompt[i], i, config.vocab_size - 1);
  const GenerateOptions& o = request.options;
  FERRY_EXPECT(o.max_new_tokens >= 0, "the number of new tokens ({}) must not be negative",
               o.max_new_tokens);
  o.sampling.validate();
  const int64_t ctx = engine_.context();
  check_prompt_length(n_prompt, ctx);
  FERRY_EXPECT(max_positions(n_prompt, o.max_new_tokens) <= ctx,
               "the prompt ({} tokens) plus {} new tokens exceeds the context of {} tokens; ask "
               "for at most {} new tokens or shorten the prompt",
               n_prompt, o.max_new_tokens, ctx, ctx - n_prompt + 1);
  const KvUsage& kv = kv_shape_;
  const int64_t blocks = blocks_for(kv, max_positions(n_prompt, o.max_new_tokens));
  FERRY_EXPECT(blocks <= kv.blocks_total || kv.blocks_total <= 0,
               "the prompt ({} tokens) plus {} new tokens needs {} KV blocks of {} tokens but "
               "the cache holds {}; ask for fewer tokens or give the cache more memory",
               n_prompt, o.max_new_tokens, blocks, kv.block_tokens, kv.blocks_total);

  const auto now = Clock::now();
  std::unique_lock lock(mutex_);
  if (stopping_) throw SchedulerStopped("the scheduler is shutting down and takes no new requests");
  // Requests submitted since the last step that a free slot already waits for are not waiting
  // for a slot: a queue of 1 beside a free slot holds 2 until the scheduler admits them.
  const auto slots = static_cast<std::size_t>(options_.max_seqs);
  const std::size_t free_slots =
      slots - std::min(slots, static_cast<std::size_t>(std::max(stats_.active, 0)));
  if (queue_.size() >= options_.max_queue + free_slots) {
    // Roughly when a queue place frees up: the queue drains max_seqs requests per request time.
    const double per_request = recent_request_s_ > 0 ? recent_request_s_ : 1.0;
    const double retry = std::max(1.0, per_request * static_cast<double>(queue_.size()) /
                                           static_cast<double>(options_.max_seqs));
    throw QueueFull(fmt::format("{} requests are already waiting (the queue holds {}); try again "
                                "in {:.0f} s",
                                queue_.size() - free_slots, options_.max_queue, retry),
                    retry);
  }
  const uint64_t id = next_id_++;
  auto seq = std::make_unique<Seq>(id, std::move(request), now);
  seq->kv_blocks = blocks;
  queue_.push_back(std::move(seq));
  ++stats_.requests_total;
  stats_.queued = queue_.size();
  lock.unlock();
  wake_.notify_all();
  return id;
}

void Scheduler::cancel(uint64_t id) {
  {
    const std::lock_guard lock(mutex_);
    cancel_requests_.push_back(id);
  }
  wake_.notify_all();
}

void Scheduler::stop(bool drain) {
  {
    const std::lock_guard lock(mutex_);
    stopping_ = true;
    // A later stop(false) turns a drain into a cancellation, never the other way.
    if (!drain) cancel_all_ = true;
  }
  wake_.notify_all();
}

SchedulerStats Scheduler::stats() const {
  const std::lock_guard lock(mutex_);
  SchedulerStats s = stats_;
  s.queued = queue_.size();
  return s;
}

RequestResult Scheduler::result_of(Seq& seq, FinishReason reason, std::string error,
                                   Clock::time_point now) const {
  RequestResult r;
  r.id = seq.id;
  r.tokens = std::move(seq.out);
  r.reason = reason;
  r.error = std::move(error);
  r.prompt_tokens = static_cast<int64_t>(seq.request.prompt.size());
  const bool admitted = seq.admitted != Clock::time_point{};
  r.queued_s = seconds_between(seq.submitted, admitted ? seq.admitted : now);
  r.first_token_s =
      r.tokens.empty() ? 0.0 : seconds_between(seq.submitted, seq.first_token);
  r.total_s = seconds_between(seq.submitted, now);
  return r;
}

bool Scheduler::step() {
  const auto step_start = Clock::now();
  std::vector<Done> done;  // retired this step: callbacks run at the end, unlocked

  // 1. Under the lock: cancellations, then admission.
  {
    const std::lock_guard lock(mutex_);
    std::vector<uint64_t> cancels;
    cancels.swap(cancel_requests_);
    auto is_cancelled = [&](uint64_t id) {
      return cancel_all_ || std::find(cancels.begin(), cancels.end(), id) != cancels.end();
    };
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (is_cancelled((*it)->id)) {
        done.push_back({std::move(*it), FinishReason::cancelled, {}});
        it = queue_.erase(it);
      } else {
        ++it;
      }
    }
    // Cancelled sequences leave their slots before admission, so the queue gets them now.
    for (auto& slot : slots_)
      if (slot && is_cancelled(slot->id)) retire(slot, FinishReason::cancelled, {}, done);

    // FIFO into free slots while the KV pool can hold each one's longest possible length.
    int64_t reserved = 0;
    for (const auto& slot : slots_)
      if (slot) reserved += slot->kv_blocks;
    const KvUsage& kv = kv_shape_;
    while (!queue_.empty()) {
      Seq& next = *queue_.front();
      if (next.request.options.max_new_tokens == 0) {  // nothing to compute, as generate()
        next.admitted = Clock::now();
        done.push_back({std::move(queue_.front()), FinishReason::length, {}});
        queue_.pop_front();
        continue;
      }
      auto free_slot = std::find(slots_.begin(), slots_.end(), nullptr);
      if (free_slot == slots_.end()) break;
      if (kv.blocks_total > 0 && reserved + next.kv_blocks > kv.blocks_total) break;
      reserved += next.kv_blocks;
      next.slot = static_cast<int>(free_slot - slots_.begin());
      next.admitted = Clock::now();
      if (!drafters_.empty() && next.request.speculate)
        next.spec.emplace(*drafters_[static_cast<std::size_t>(next.slot)],
                          next.request.options.sampling, options_.draft_k,
                          engine_.config().vocab_size);
      *free_slot = std::move(queue_.front());
      queue_.pop_front();
    }
    stats_.active = static_cast<int>(
        std::count_if(slots_.begin(), slots_.end(), [](const auto& s) { return s != nullptr; }));
    stats_.queued = queue_.size();
  }

  // 2. The pass: every decoding sequence's last token first (one row each, always fits) with
  // its drafts behind it as the row cap allows, then prompt chunks in admission order.
  std::vector<Seq*> order;
  for (auto& slot : slots_)
    if (slot) order.push_back(slot.get());
  std::sort(order.begin(), order.end(), [](const Seq* a, const Seq* b) { return a->id < b->id; });
  std::vector<SeqTokens> batch;
  std::vector<Seq*> in_batch;
  std::vector<int64_t> chunk;  // prompt tokens each batch entry adds (0 when decoding)
  int64_t rows = std::count_if(order.begin(), order.end(), [](const Seq* s) {
    return s->decoding();
  });
  // A batch drafter drafts for every speculating sequence at once, before the pass is built.
  std::vector<Seq*> drafted;
  if (options_.batch_drafter) {
    std::vector<DraftRequest> requests;
    int64_t budget = rows;  // rows if every sequence drafts all it may
    for (Seq* s : order) {
      if (!s->decoding() || !s->spec) continue;
      const int64_t remaining =
          s->request.options.max_new_tokens - static_cast<int64_t>(s->out.size());
      const int64_t spare = options_.max_step_rows > 0 ? options_.max_step_rows - budget
                                                       : SpeculativeOptions::kMaxK;
      DraftRequest r = s->spec->begin_round(s->context, remaining, spare);
      r.slot = s->slot;
      budget += r.k;
      requests.push_back(r);
      drafted.push_back(s);
    }
    std::string failure;
    try {
      options_.batch_drafter->propose(requests);
    } catch (const std::exception& e) {
      failure = fmt::format("drafting failed: {}", e.what());
    }
    for (std::size_t i = 0; i < drafted.size(); ++i) {
      Seq* s = drafted[i];
      if (!failure.empty()) {
        --rows;
        retire(slots_[static_cast<std::size_t>(s->slot)], FinishReason::error, failure, done);
        continue;
      }
      const std::span<const int32_t> drafts = s->spec->end_round(requests[i].k);
      s->step_tokens.assign(1, s->out.back());
      s->step_tokens.insert(s->step_tokens.end(), drafts.begin(), drafts.end());
      rows += static_cast<int64_t>(drafts.size());
    }
    if (!failure.empty()) drafted.clear();
  }
  for (Seq* s : order) {
    if (!s->decoding()) continue;
    if (!slots_[static_cast<std::size_t>(s->slot)]) continue;  // drafting failed: retired
    const bool drafted_already =
        std::find(drafted.begin(), drafted.end(), s) != drafted.end();
    if (!drafted_already) s->step_tokens.assign(1, s->out.back());
    if (s->spec && !drafted_already) {
      const int64_t remaining =
          s->request.options.max_new_tokens - static_cast<int64_t>(s->out.size());
      const int64_t spare = options_.max_step_rows > 0 ? options_.max_step_rows - rows
                                                       : SpeculativeOptions::kMaxK;
      try {
        const std::span<const int32_t> drafts = s->spec->propose(s->context, remaining, spare);
        s->step_tokens.insert(s->step_tokens.end(), drafts.begin(), drafts.end());
      } catch (const std::exception& e) {
        --rows;
        retire(slots_[static_cast<std::size_t>(s->slot)], FinishReason::error,
               fmt::format("drafting failed: {}", e.what()), done);
        continue;
      }
      rows += static_cast<int64_t>(s->step_tokens.size()) - 1;
    }
    SeqTokens entry{s->slot, s->step_tokens};
    entry.tail_logits = static_cast<int64_t>(s->step_tokens.size());
    batch.push_back(entry);
    in_batch.push_back(s);
    chunk.push_back(0);
  }
  for (Seq* s : order) {
    if (s->decoding()) continue;
    const auto n_prompt = static_cast<int64_t>(s->request.prompt.size());
    int64_t n = std::min(options_.prefill_chunk, n_prompt - s->prompt_done);
    if (options_.max_step_rows > 0) n = std::min(n, options_.max_step_rows - rows);
    if (n <= 0) break;
    batch.push_back({s->slot, std::span<const int32_t>(s->request.prompt)
                                  .subspan(static_cast<std::size_t>(s->prompt_done),
                                           static_cast<std::size_t>(n))});
    in_batch.push_back(s);
    chunk.push_back(n);
    rows += n;
  }

  // 3. The pass, unlocked: only this thread touches the engine and the slots.
  bool ran = false;
  struct NewToken {
    Seq* seq;
    int32_t token;
    std::size_t index;  // in seq->out
  };
  std::vector<NewToken> new_tokens;
  uint64_t proposed = 0, accepted = 0, rejected = 0, rounds = 0, round_tokens = 0;
  if (!batch.empty()) {
    ran = true;
    const std::vector<float>* logits = nullptr;
    std::string failure;
    try {
      logits = &engine_.forward(batch, LogitsFor::tail);
    } catch (const std::exception& e) {
      failure = e.what();
    }
    if (!logits) {
      // The pass may have written part of these sequences' caches: they cannot go on.
      for (Seq* s : in_batch) retire(slots_[static_cast<std::size_t>(s->slot)],
                                     FinishReason::error, failure, done);
    } else {
      const auto vocab = static_cast<std::size_t>(engine_.config().vocab_size);
      const auto now = Clock::now();
      std::size_t row = 0;  // the entry's first row of logits
      for (std::size_t i = 0; i < in_batch.size(); ++i) {
        Seq& s = *in_batch[i];
        const auto n_rows = static_cast<std::size_t>(batch[i].tail_logits);
        const std::span<const float> entry_logits{logits->data() + row * vocab, n_rows * vocab};
        row += n_rows;
        s.prompt_done += chunk[i];
        if (!s.decoding()) continue;  // mid-prompt: its row is not a prediction to sample
        // Appends a token; false once the sequence ends with it (an end id, or its length), so
        // an accepted run stops exactly where decoding one token at a time would.
        const auto emit = [&](int32_t token) {
          if (s.out.empty()) s.first_token = now;
          s.out.push_back(token);
          if (s.spec) s.context.push_back(token);
          new_tokens.push_back({&s, token, s.out.size() - 1});
          const auto& eos = s.request.options.eos_ids;
          return std::find(eos.begin(), eos.end(), token) == eos.end() &&
                 static_cast<int64_t>(s.out.size()) < s.request.options.max_new_tokens;
        };
        if (!s.spec) {
          emit(s.sampler.sample(entry_logits.first(vocab)));
        } else if (chunk[i] > 0) {  // the prompt's last chunk: the first token
          s.context = s.request.prompt;
          emit(s.spec->first(entry_logits));
        } else {
          const SpeculativeStats before = s.spec->stats();
          const int64_t emitted = s.spec->verify(entry_logits, emit);
          // Keep the fed token and the accepted drafts emitted; the rejected ones never were.
          const int64_t past = engine_.length(s.slot) - static_cast<int64_t>(n_rows);
          engine_.truncate(s.slot, past + emitted);
          const SpeculativeStats& after = s.spec->stats();
          ++rounds;
          round_tokens += static_cast<uint64_t>(emitted);
          proposed += static_cast<uint64_t>(after.drafted - before.drafted);
          accepted += static_cast<uint64_t>(after.accepted - before.accepted);
          rejected += static_cast<uint64_t>(after.rejected - before.rejected);
        }
      }
    }
  }

  // 4. Tokens to their callers in order, then retire what ended (eos, length, on_token false);
  // a sequence that ends inside an accepted run keeps no token after the one it ended with.
  uint64_t delivered = 0;
  for (const NewToken& t : new_tokens) {
    Seq* s = t.seq;
    auto& slot = slots_[static_cast<std::size_t>(s->slot)];
    if (slot.get() != s) continue;  // retired at an earlier token of this step
    ++delivered;
    bool more = true;
    std::string failure;
    if (s->request.on_token) {
      try {
        more = s->request.on_token(t.token);
      } catch (const std::exception& e) {
        failure = fmt::format("the token callback threw: {}", e.what());
      }
    }
    const auto& eos = s->request.options.eos_ids;
    const bool ends = !failure.empty() || !more ||
                      std::find(eos.begin(), eos.end(), t.token) != eos.end() ||
                      static_cast<int64_t>(t.index) + 1 >= s->request.options.max_new_tokens;
    if (!ends) continue;
    s->out.resize(t.index + 1);
    if (!failure.empty())
      retire(slot, FinishReason::error, std::move(failure), done);
    else if (std::find(eos.begin(), eos.end(), t.token) != eos.end())
      retire(slot, FinishReason::stop, {}, done);
    else if (static_cast<int64_t>(s->out.size()) >= s->request.options.max_new_tokens)
      retire(slot, FinishReason::length, {}, done);
    else
      retire(slot, FinishReason::cancelled, {}, done);
  }

  // 5. Statistics, then on_done for everything retired, unlocked.
  const auto now = Clock::now();
  std::vector<std::pair<std::function<void(const RequestResult&)>, RequestResult>> calls;
  {
    const std::lock_guard lock(mutex_);
    if (ran) {
      ++stats_.steps;
      stats_.busy_s += seconds_between(step_start, now);
      if (std::all_of(chunk.begin(), chunk.end(), [](int64_t n) { return n == 0; })) {
        ++stats_.decode_steps;
        stats_.decode_tokens += delivered;
        stats_.decode_s += seconds_between(step_start, now);
      }
      for (int64_t n : chunk) stats_.prompt_tokens_total += static_cast<uint64_t>(n);
      stats_.generated_tokens_total += delivered;
      stats_.draft_rounds += rounds;
      stats_.draft_round_tokens += round_tokens;
      stats_.draft_tokens_proposed += proposed;
      stats_.draft_tokens_accepted += accepted;
      stats_.draft_tokens_rejected += rejected;
    }
    for (Done& d : done) {
      switch (d.reason) {
        case FinishReason::stop:
        case FinishReason::length: ++stats_.requests_finished; break;
        case FinishReason::cancelled: ++stats_.requests_cancelled; break;
        case FinishReason::error: ++stats_.requests_failed; break;
      }
      RequestResult r = result_of(*d.seq, d.reason, std::move(d.error), now);
      // An exponential average of request times, for QueueFull's hint.
      recent_request_s_ =
          recent_request_s_ == 0 ? r.total_s : 0.8 * recent_request_s_ + 0.2 * r.total_s;
      calls.emplace_back(std::move(d.seq->request.on_done), std::move(r));
    }
    stats_.active = static_cast<int>(
        std::count_if(slots_.begin(), slots_.end(), [](const auto& s) { return s != nullptr; }));
    stats_.queued = queue_.size();
    stats_.kv = engine_.kv_usage();
  }
  if (!done.empty()) wake_.notify_all();  // run() may be waiting for the drain to finish

  // Every caller hears, even when one callback throws; the first exception is rethrown after.
  std::exception_ptr first_error;
  for (auto& [on_done, result] : calls) {
    if (!on_done) continue;
    try {
      on_done(result);
    } catch (...) {
      if (!first_error) first_error = std::current_exception();
    }
  }
  if (first_error) std::rethrow_exception(first_error);
  return ran || !done.empty();
}

void Scheduler::retire(std::unique_ptr<Seq>& slot, FinishReason reason, std::string error,
                       std::vector<Done>& done) {
  engine_.reset(slot->slot);
  done.push_back({std::move(slot), reason, std::move(error)});
}

void Scheduler::run() {
  for (;;) {
    if (step()) continue;
    // Nothing ran, so no sequence is active (each active one adds a row to every pass).
    std::unique_lock lock(mutex_);
    if (stopping_ && queue_.empty() && cancel_requests_.empty()) return;
    wake_.wait(lock, [&] { return !queue_.empty() || !cancel_requests_.empty() || stopping_; });
  }
}

std::vector<RequestResult> run_batch(ForwardPass& engine, std::vector<Request> requests,
                                     SchedulerOptions options) {
  options.max_queue = std::max(options.max_queue, requests.size());
  std::vector<RequestResult> results(requests.size());
  Scheduler scheduler(engine, options);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    Request& r = requests[i];
    r.on_done = [&results, i, user = std::move(r.on_done)](const RequestResult& result) {
      results[i] = result;
      if (user) user(result);
    };
    try {
      scheduler.submit(std::move(r));
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(fmt::format("request {}: {}", i + 1, e.what()));
    }
  }
  while (scheduler.step()) {
  }
  return results;
}

}  // namespace ferry::engine
