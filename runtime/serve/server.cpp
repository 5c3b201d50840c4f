#include "runtime/serve/server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <exception>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "runtime/engine/scheduler.hpp"
#include "runtime/serve/api.hpp"
#include "runtime/serve/chat.hpp"
#include "runtime/text/tokenizer.hpp"

namespace ferry::serve {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kJson = "application/json";

enum class State { created, loading, ready, draining, stopped };

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// One request's queue between the scheduler's thread (which decodes tokens into text, matches
// stop strings and appends) and the HTTP thread that answers it (which takes the text).
struct Channel {
  // Scheduler thread only.
  std::optional<text::StreamDecoder> decoder;
  StopMatcher matcher;
  std::vector<int32_t> eos_ids;
  int32_t vocab_size = 0;
  bool stop_hit = false;
  bool first_token = true;
  Clock::time_point submitted;

  std::atomic<bool> abandoned{false};  // the client went away: end at the next token

  std::mutex mutex;  // guards what follows
  std::condition_variable ready;
  std::string text;  // decoded, past the stop check, not yet taken
  bool done = false;
  std::string finish_reason;  // "stop" | "length" | "cancelled"
  std::string error;          // the engine's, when it failed
  Usage usage;

  // HTTP thread only (a streamed response's progress between calls of its provider).
  bool sent_first = false;
  bool finished = false;
  Clock::time_point last_write = Clock::now();
};

// Prometheus' text format for a label value.
std::string label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

struct Server::Impl {
  ServerOptions options;
  httplib::Server http;
  std::thread http_thread;
  std::atomic<State> state{State::created};

  session::Session* session = nullptr;
  std::unique_ptr<engine::Scheduler> scheduler;
  std::optional<ChatRenderer> chat;
  std::string model_name;
  std::thread engine_thread;
  std::mutex engine_mutex;
  std::condition_variable engine_cv;
  bool engine_done = false;
  std::mutex shutdown_mutex;

  const Clock::time_point started = Clock::now();
  std::atomic<uint64_t> next_seed{0};
  // Generation requests whose answer is not fully written yet (a stream until its provider is
  // released): shutdown waits for them before closing the listener.
  std::atomic<int> in_flight{0};

  // Metrics.
  std::mutex metrics_mutex;
  std::map<int, uint64_t> responses;     // API responses by status
  std::deque<Clock::time_point> recent;  // tokens sampled in the last window
  std::vector<double> ttft;              // the last kTtftKept times to first token
  std::size_t ttft_next = 0;
  double ttft_sum = 0;
  uint64_t ttft_count = 0;
  std::atomic<uint64_t> bytes_streamed{0};
  static constexpr double kRateWindowS = 10;
  static constexpr std::size_t kTtftKept = 1024;

  explicit Impl(ServerOptions o) : options(std::move(o)) {}

  void log(const std::string& line) const {
    if (options.log) options.log(line);
  }

  // --- metrics -----------------------------------------------------------------------------

  void count_response(int status) {
    const std::lock_guard lock(metrics_mutex);
    ++responses[status];
  }

  // On the scheduler's thread, for every token.
  void on_token_metrics(Channel& ch) {
    const auto now = Clock::now();
    {
      const std::lock_guard lock(metrics_mutex);
      recent.push_back(now);
      while (!recent.empty() && seconds_between(recent.front(), now) > kRateWindowS)
        recent.pop_front();
      if (ch.first_token) {
        const double t = seconds_between(ch.submitted, now);
        if (ttft.size() < kTtftKept) {
          ttft.push_back(t);
        } else {
          ttft[ttft_next] = t;
          ttft_next = (ttft_next + 1) % kTtftKept;
        }
        ttft_sum += t;
        ++ttft_count;
      }
    }
    ch.first_token = false;
    sample_streamer();
  }

  // The backend's streamed bytes, read on the scheduler's thread (the streamer's counters are
  // the engine's, not meant for other threads).
  void sample_streamer() {
    if (session == nullptr) return;
    if (const offload::StreamerStats* s = session->engine().backend().streamer_stats())
      bytes_streamed.store(s->bytes_read, std::memory_order_relaxed);
  }

  std::string metrics_text() {
    engine::SchedulerStats st;
    if (scheduler) st = scheduler->stats();
    std::string out;
    auto metric = [&](const char* name, const char* type, const char* help) {
      out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    };
    const auto now = Clock::now();
    const std::lock_guard lock(metrics_mutex);
    metric("ferry_up", "gauge", "1 once the model is loaded and requests are served");
    out += fmt::format("ferry_up {}\n", state.load() == State::ready ? 1 : 0);
    metric("ferry_requests_total", "counter",
           "responses to /v1 requests, by HTTP status (streams count when they end)");
    for (const auto& [status, n] : responses)
      out += fmt::format("ferry_requests_total{{status=\"{}\"}} {}\n", status, n);
    metric("ferry_sequences_total", "counter", "generations the scheduler ended, by how");
    out += fmt::format("ferry_sequences_total{{reason=\"finished\"}} {}\n", st.requests_finished);
    out += fmt::format("ferry_sequences_total{{reason=\"cancelled\"}} {}\n",
                       st.requests_cancelled);
    out += fmt::format("ferry_sequences_total{{reason=\"error\"}} {}\n", st.requests_failed);
    metric("ferry_queue_depth", "gauge", "requests waiting for a sequence slot");
    out += fmt::format("ferry_queue_depth {}\n", st.queued);
    metric("ferry_active_sequences", "gauge", "sequences in a slot (reading the prompt or decoding)");
    out += fmt::format("ferry_active_sequences {}\n", st.active);
    metric("ferry_max_sequences", "gauge", "sequence slots decoded together");
    out += fmt::format("ferry_max_sequences {}\n", st.max_seqs);
    metric("ferry_prompt_tokens_total", "counter", "prompt tokens run through the model");
    out += fmt::format("ferry_prompt_tokens_total {}\n", st.prompt_tokens_total);
    metric("ferry_generated_tokens_total", "counter", "tokens sampled");
    out += fmt::format("ferry_generated_tokens_total {}\n", st.generated_tokens_total);
    metric("ferry_forward_passes_total", "counter", "forward passes (one per scheduler step)");
    out += fmt::format("ferry_forward_passes_total {}\n", st.steps);
    metric("ferry_draft_tokens_proposed_total", "counter",
           "speculative decoding (--draft): drafted tokens the model scored");
    out += fmt::format("ferry_draft_tokens_proposed_total {}\n", st.draft_tokens_proposed);
    metric("ferry_draft_tokens_accepted_total", "counter",
           "speculative decoding (--draft): drafted tokens the model agreed with and kept");
    out += fmt::format("ferry_draft_tokens_accepted_total {}\n", st.draft_tokens_accepted);
    while (!recent.empty() && seconds_between(recent.front(), now) > kRateWindowS)
      recent.pop_front();
    const double window = std::min(kRateWindowS, std::max(seconds_between(started, now), 1e-3));
    metric("ferry_tokens_per_second", "gauge",
           "tokens sampled per second over the last 10 s, all sequences together");
    out += fmt::format("ferry_tokens_per_second {:.3f}\n",
                       static_cast<double>(recent.size()) / window);
    metric("ferry_kv_blocks_used", "gauge", "KV cache blocks holding tokens");
    out += fmt::format("ferry_kv_blocks_used {}\n", st.kv.blocks_used);
    metric("ferry_kv_blocks_total", "gauge", "KV cache blocks in the pool");
    out += fmt::format("ferry_kv_blocks_total {}\n", st.kv.blocks_total);
    metric("ferry_kv_block_tokens", "gauge", "tokens per KV cache block");
    out += fmt::format("ferry_kv_block_tokens {}\n", st.kv.block_tokens);
    metric("ferry_bytes_streamed_total", "counter",
           "weight bytes read from disk by streamed layers (0 when every layer is resident)");
    out += fmt::format("ferry_bytes_streamed_total {}\n",
                       bytes_streamed.load(std::memory_order_relaxed));
    metric("ferry_time_to_first_token_seconds", "summary",
           "from a request's submission to its first sampled token (quantiles of the last 1024)");
    std::vector<double> sorted = ttft;
    std::sort(sorted.begin(), sorted.end());
    for (double q : {0.5, 0.9, 0.99}) {
      const double v = sorted.empty()
                           ? std::nan("")
                           : sorted[std::min(sorted.size() - 1,
                                             static_cast<std::size_t>(q * static_cast<double>(sorted.size())))];
      out += fmt::format("ferry_time_to_first_token_seconds{{quantile=\"{}\"}} {}\n", q,
                         std::isnan(v) ? std::string("NaN") : fmt::format("{:.6f}", v));
    }
    out += fmt::format("ferry_time_to_first_token_seconds_sum {:.6f}\n", ttft_sum);
    out += fmt::format("ferry_time_to_first_token_seconds_count {}\n", ttft_count);
    metric("ferry_model_info", "gauge", "the model served");
    out += fmt::format("ferry_model_info{{model=\"{}\"}} 1\n", label(model_name));
    return out;
  }

  // --- responses ---------------------------------------------------------------------------

  static void send_error(httplib::Response& res, int status, const std::string& body) {
    res.status = status;
    res.set_content(body, kJson);
  }

  void refuse_unless_ready(const char* what) const {
    const State s = state.load();
    if (s == State::ready) return;
    if (s == State::loading || s == State::created)
      throw ApiError(503, fmt::format("the model is still loading; try {} again once GET /health "
                                      "says ok",
                                      what),
                     "", "model_loading", "server_error");
    throw ApiError(503, "the server is shutting down and takes no new requests", "",
                   "shutting_down", "server_error");
  }

  // The prompt's token ids, checked against the vocabulary and the context.
  std::vector<int32_t> prompt_ids(const GenerationRequest& g) const {
    const text::Tokenizer& tok = session->require_tokenizer();
    std::vector<int32_t> ids;
    if (g.chat) {
      const std::string prompt = chat->render(g.messages);
      // The template writes the special tokens (<|im_start|>, <s>) as text: they become their
      // ids, and nothing is added around the text, as apply_chat_template tokenizes.
      ids = tok.encode(prompt, /*add_special=*/false, /*parse_special=*/true);
    } else if (g.prompt_text) {
      // As `ferry run` encodes a prompt: with the model's BOS where its tokenizer adds one.
      ids = tok.encode(*g.prompt_text, /*add_special=*/true);
    } else {
      ids = g.prompt_ids;
      const int32_t vocab = static_cast<int32_t>(session->config().vocab_size);
      for (std::size_t i = 0; i < ids.size(); ++i)
        if (ids[i] >= vocab)
          throw ApiError(400,
                         fmt::format("Invalid value for 'prompt[{}]': token id {} is outside the "
                                     "vocabulary (ids 0 … {})",
                                     i, ids[i], vocab - 1),
                         "prompt", "invalid_value");
    }
    const char* param = g.chat ? "messages" : "prompt";
    if (ids.empty())
      throw ApiError(400, fmt::format("Invalid value for '{}': the prompt has no tokens", param),
                     param, "invalid_value");
    const int64_t context = session->context();
    if (static_cast<int64_t>(ids.size()) >= context)
      throw ApiError(400,
                     fmt::format("This model's maximum context length is {} tokens, but the "
                                 "prompt has {} tokens (and at least one is generated). Shorten "
                                 "the {}, or start the server with a larger --ctx.",
                                 context, ids.size(), g.chat ? "messages" : "prompt"),
                     param, "context_length_exceeded");
    return ids;
  }

  void generate(const httplib::Request& req, httplib::Response& res, bool chat_endpoint) {
    refuse_unless_ready(chat_endpoint ? "/v1/chat/completions" : "/v1/completions");
    GenerationRequest g =
        chat_endpoint ? parse_chat_request(req.body) : parse_completion_request(req.body);
    const std::vector<int32_t> ids = prompt_ids(g);
    const auto n_prompt = static_cast<int64_t>(ids.size());
    const int64_t room = session->context() - n_prompt;
    // Beyond the context's end a request is cut short (finish_reason "length"), as OpenAI's
    // servers do when max_tokens is left out of a chat request.
    const int64_t max_new = std::min(g.max_tokens.value_or(g.chat ? room : 16), room);

    auto ch = std::make_shared<Channel>();
    ch->decoder.emplace(session->require_tokenizer(), /*at_start_of_text=*/g.chat);
    ch->matcher = StopMatcher(g.stop);
    ch->eos_ids = session->eos_ids();
    ch->vocab_size = session->require_tokenizer().vocab_size();
    ch->usage.prompt_tokens = n_prompt;
    ch->submitted = Clock::now();

    engine::Request er;
    er.prompt = ids;
    er.options.max_new_tokens = max_new;
    er.options.eos_ids = session->eos_ids();
    er.options.sampling.temperature = g.temperature;
    er.options.sampling.top_p = g.top_p;
    er.options.sampling.top_k = g.top_k;
    // Without a seed, each request draws its own (OpenAI's sampling is not repeatable either).
    er.options.sampling.seed =
        g.seed ? *g.seed
               : std::hash<uint64_t>{}(next_seed.fetch_add(1) ^
                                       static_cast<uint64_t>(
                                           Clock::now().time_since_epoch().count()));
    er.on_token = [this, ch](int32_t id) { return on_token(*ch, id); };
    er.on_done = [this, ch](const engine::RequestResult& r) { on_done(*ch, r); };

    uint64_t seq_id = 0;
    try {
      ++in_flight;  // before submit: a drain must not close the listener under this answer
      seq_id = scheduler->submit(std::move(er));
    } catch (const engine::QueueFull& e) {
      --in_flight;
      res.set_header("Retry-After",
                     std::to_string(static_cast<int64_t>(std::ceil(e.retry_after_s()))));
      throw ApiError(429, fmt::format("the server is busy: {}", e.what()), "", "queue_full",
                     "rate_limit_error");
    } catch (const engine::SchedulerStopped&) {
      --in_flight;
      throw ApiError(503, "the server is shutting down and takes no new requests", "",
                     "shutting_down", "server_error");
    } catch (const InvalidArgument& e) {
      --in_flight;
      throw ApiError(400, e.what(), g.chat ? "messages" : "prompt", "invalid_value");
    }

    const std::string id = fmt::format("{}-{}", g.chat ? "chatcmpl" : "cmpl", seq_id);
    const int64_t created = static_cast<int64_t>(std::time(nullptr));
    const std::string model = g.model.empty() ? model_name : g.model;

    if (!g.stream) {
      struct Leave {
        std::atomic<int>& n;
        ~Leave() { --n; }
      } leave{in_flight};
      std::unique_lock lock(ch->mutex);
      ch->ready.wait(lock, [&] { return ch->done; });
      if (!ch->error.empty()) {
        send_error(res, 500,
                   error_body(fmt::format("the model failed on this request: {}", ch->error),
                              "server_error", "", "engine_error"));
        return;
      }
      if (ch->finish_reason == "cancelled") {
        send_error(res, 503,
                   error_body("the server shut down before the request finished",
                              "server_error", "", "shutting_down"));
        return;
      }
      const json body = g.chat ? chat_response(id, created, model, ch->text, ch->finish_reason,
                                               ch->usage)
                               : completion_response(id, created, model, ch->text,
                                                     ch->finish_reason, ch->usage);
      res.set_content(dump_json(body), kJson);
      return;
    }

    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Accel-Buffering", "no");  // proxies: pass events on as they come
    const bool chat_stream = g.chat;
    const bool include_usage = g.include_usage;
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, ch, seq_id, id, created, model, chat_stream, include_usage](
            std::size_t, httplib::DataSink& sink) {
          std::string text;
          bool done = false;
          {
            std::unique_lock lock(ch->mutex);
            ch->ready.wait_for(lock, std::chrono::milliseconds(500),
                               [&] { return ch->done || !ch->text.empty(); });
            text = std::exchange(ch->text, {});
            done = ch->done;
          }
          std::string out;
          if (chat_stream && !ch->sent_first) {
            out += sse_event(chat_chunk(id, created, model, "", "", /*first=*/true));
            ch->sent_first = true;
          }
          if (!text.empty())
            out += sse_event(chat_stream ? chat_chunk(id, created, model, text, "", false)
                                         : completion_chunk(id, created, model, text, ""));
          if (done) {
            std::string error, finish;
            Usage usage;
            {
              const std::lock_guard lock(ch->mutex);
              error = ch->error;
              finish = ch->finish_reason;
              usage = ch->usage;
            }
            if (!error.empty()) {
              out += "data: " +
                     error_body(fmt::format("the model failed on this request: {}", error),
                                "server_error", "", "engine_error") +
                     "\n\n";
            } else if (finish == "cancelled") {
              out += "data: " +
                     error_body("the server shut down before the request finished",
                                "server_error", "", "shutting_down") +
                     "\n\n";
            } else {
              out += sse_event(chat_stream ? chat_chunk(id, created, model, "", finish, false)
                                           : completion_chunk(id, created, model, "", finish));
              if (include_usage) out += sse_event(usage_chunk(id, created, model, chat_stream, usage));
            }
            out += sse_done();
          }
          // A stream still waiting (queued, or a long prompt) sends an SSE comment now and
          // then: clients ignore it, and a client that has gone is found by the failed write.
          const auto now = Clock::now();
          if (out.empty() && seconds_between(ch->last_write, now) >= 1.0) out = ": waiting\n\n";
          if (!out.empty()) ch->last_write = now;
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            abandon(*ch, seq_id);  // the client went away
            return false;
          }
          if (done) {
            ch->finished = true;
            sink.done();
          }
          return true;
        },
        [this, ch, seq_id](bool success) {
          if (!success || !ch->finished) abandon(*ch, seq_id);
          --in_flight;
        });
  }

  void abandon(Channel& ch, uint64_t seq_id) {
    ch.abandoned.store(true);
    if (scheduler) scheduler->cancel(seq_id);  // frees its slot and KV at the next step
  }

  // The scheduler's callbacks (its thread): text decoded whole characters at a time, stop
  // strings matched, the sequence ended when one appears or the client is gone.
  bool on_token(Channel& ch, int32_t id) {
    try {
      on_token_metrics(ch);
      if (ch.abandoned.load()) return false;
      if (std::find(ch.eos_ids.begin(), ch.eos_ids.end(), id) != ch.eos_ids.end()) return true;
      if (id < 0 || id >= ch.vocab_size) return true;  // a padding row of the embedding
      const std::string out = ch.matcher.push(ch.decoder->push(id));
      if (ch.matcher.stopped()) ch.stop_hit = true;
      if (!out.empty()) {
        const std::lock_guard lock(ch.mutex);
        ch.text += out;
      }
      if (!out.empty()) ch.ready.notify_all();
      return !ch.stop_hit;
    } catch (const std::exception& e) {
      log(fmt::format("serve: decoding token {} failed: {}", id, e.what()));
      return false;
    }
  }

  void on_done(Channel& ch, const engine::RequestResult& r) {
    std::string rest;
    try {
      sample_streamer();
      if (!ch.stop_hit && r.reason != engine::FinishReason::cancelled) {
        rest = ch.matcher.push(ch.decoder->flush());
        if (ch.matcher.stopped())
          ch.stop_hit = true;
        else
          rest += ch.matcher.flush();
      }
    } catch (const std::exception& e) {
      log(fmt::format("serve: finishing request {}: {}", r.id, e.what()));
    }
    {
      const std::lock_guard lock(ch.mutex);
      ch.text += rest;
      ch.usage.completion_tokens = static_cast<int64_t>(r.tokens.size());
      switch (r.reason) {
        case engine::FinishReason::stop: ch.finish_reason = "stop"; break;
        case engine::FinishReason::length:
          ch.finish_reason = ch.stop_hit ? "stop" : "length";
          break;
        case engine::FinishReason::cancelled:
          ch.finish_reason = ch.stop_hit ? "stop" : "cancelled";
          break;
        case engine::FinishReason::error:
          ch.error = r.error.empty() ? std::string("unknown engine error") : r.error;
          ch.finish_reason = "error";
          break;
      }
      ch.done = true;
    }
    ch.ready.notify_all();
  }

  // --- routes ------------------------------------------------------------------------------

  // Runs a handler; any refusal becomes OpenAI's error shape, and nothing escapes to kill the
  // worker.
  template <class F>
  void guarded(httplib::Response& res, F&& f) {
    try {
      f();
    } catch (const ApiError& e) {
      send_error(res, e.status(), e.body());
    } catch (const InvalidArgument& e) {
      send_error(res, 400, error_body(e.what()));
    } catch (const std::bad_alloc&) {
      send_error(res, 503, error_body("the server is out of memory for this request",
                                      "server_error", "", "out_of_memory"));
    } catch (const std::exception& e) {
      log(fmt::format("serve: internal error: {}", e.what()));
      send_error(res, 500, error_body(fmt::format("internal error: {}", e.what()),
                                      "server_error"));
    }
  }

  void routes() {
    http.set_payload_max_length(options.max_body);
    const std::size_t threads = options.http_threads > 0
                                    ? static_cast<std::size_t>(options.http_threads)
                                    : static_cast<std::size_t>(std::max(options.max_seqs, 1)) +
                                          options.max_queue + 8;
    http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };

    httplib::Server::HandlerWithResponse auth = [this](const httplib::Request& req,
                                                       httplib::Response& res) {
      if (options.api_key.empty() || req.path.rfind("/v1/", 0) != 0)
        return httplib::Server::HandlerResponse::Unhandled;
      const std::string given = req.get_header_value("Authorization");
      const std::string want = "Bearer " + options.api_key;
      // Compared in time independent of where they differ.
      unsigned diff = given.size() == want.size() ? 0u : 1u;
      for (std::size_t i = 0; i < std::min(given.size(), want.size()); ++i)
        diff |= static_cast<unsigned char>(given[i]) ^ static_cast<unsigned char>(want[i]);
      if (diff == 0) return httplib::Server::HandlerResponse::Unhandled;
      res.set_header("WWW-Authenticate", "Bearer");
      send_error(res, 401,
                 error_body(given.empty() ? "You didn't provide an API key: send it in the "
                                            "header 'Authorization: Bearer KEY'."
                                          : "Incorrect API key provided.",
                            "invalid_request_error", "", "invalid_api_key"));
      return httplib::Server::HandlerResponse::Handled;
    };
    http.set_pre_routing_handler(auth);

    httplib::Server::HandlerWithResponse on_error = [this](const httplib::Request& req,
                                                           httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      std::string message, code;
      switch (res.status) {
        case 404:
          message = fmt::format("Unknown request URL: {} {}. The endpoints are POST "
                                "/v1/completions, POST /v1/chat/completions, GET /v1/models, "
                                "GET /health and GET /metrics.",
                                req.method, req.path);
          code = "unknown_url";
          break;
        case 413:
          message = fmt::format("The request body is larger than this server's limit of {} "
                                "bytes (ferry serve --max-body).",
                                options.max_body);
          code = "request_too_large";
          break;
        default:
          message = fmt::format("The request could not be read (HTTP {}).", res.status);
          break;
      }
      res.set_content(error_body(message, "invalid_request_error", "", code), kJson);
      return httplib::Server::HandlerResponse::Handled;
    };
    http.set_error_handler(on_error);
    http.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
          send_error(res, 500, error_body("internal error", "server_error"));
        });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      if (req.path.rfind("/v1/", 0) == 0) count_response(res.status);
    });

    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(res, [&] { generate(req, res, false); });
    });
    http.Post("/v1/chat/completions",
              [this](const httplib::Request& req, httplib::Response& res) {
                guarded(res, [&] { generate(req, res, true); });
              });
    http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
      guarded(res, [&] {
        refuse_unless_ready("/v1/models");
        const json m = {{"id", model_name},
                        {"object", "model"},
                        {"created", static_cast<int64_t>(std::time(nullptr))},
                        {"owned_by", "ferry"},
                        {"context_length", session->context()}};
        res.set_content(dump_json(json{{"object", "list"}, {"data", json::array({m})}}), kJson);
      });
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
      const State s = state.load();
      const char* word = s == State::ready      ? "ok"
                         : s == State::draining ? "draining"
                         : s == State::stopped  ? "stopped"
                                                : "loading";
      res.status = s == State::ready ? 200 : 503;
      res.set_content(dump_json(json{{"status", word}}), kJson);
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics_text(), "text/plain; version=0.0.4; charset=utf-8");
    });

    // The right path with the wrong method: 405 naming the allowed one.
    const std::vector<std::pair<std::string, std::string>> allowed = {
        {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"}, {"/v1/models", "GET"},
        {"/health", "GET"},          {"/metrics", "GET"}};
    for (const auto& [path, method] : allowed) {
      auto not_allowed = [path = path, method = method](const httplib::Request& req,
                                                         httplib::Response& res) {
        res.set_header("Allow", method);
        send_error(res, 405,
                   error_body(fmt::format("{} is not allowed on {}; use {}.", req.method, path,
                                          method),
                              "invalid_request_error", "", "method_not_allowed"));
      };
      if (method != "GET") http.Get(path, not_allowed);
      if (method != "POST") http.Post(path, not_allowed);
      http.Put(path, not_allowed);
      http.Patch(path, not_allowed);
      http.Delete(path, not_allowed);
    }
  }
};

Server::Server(ServerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Server::~Server() {
  try {
    impl_->options.drain_timeout_s = 0;
    shutdown();
  } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw
  }
}

int Server::listen() {
  Impl& s = *impl_;
  FERRY_EXPECT(s.state.load() == State::created, "the server is already listening");
  s.routes();
  int port = s.options.port;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.options.host);
    if (port < 0) port = 0;
  } else if (!s.http.bind_to_port(s.options.host, port)) {
    port = 0;
  }
  FERRY_EXPECT(port > 0,
               "cannot listen on {}:{}: the port is in use or the address is not this "
               "machine's; pick another with --port or --host",
               s.options.host, s.options.port);
  s.state.store(State::loading);
  s.http_thread = std::thread([&s] { s.http.listen_after_bind(); });
  return port;
}

void Server::serve(session::Session& session, const engine::SchedulerOptions& speculation) {
  Impl& s = *impl_;
  FERRY_EXPECT(s.state.load() == State::loading, "listen() before serve(), and serve() once");
  s.session = &session;
  session.require_tokenizer();
  s.model_name = s.options.model_name.empty() ? session.model_name() : s.options.model_name;
  s.chat = ChatRenderer::for_model(session.options().model, s.options.chat_template_file);
  if (!s.chat->available())
    s.log(fmt::format("serve: note: /v1/chat/completions is unavailable: {}",
                      s.chat->unavailable_reason()));
  // The session's drafters (--draft lookup), and room in each pass for their drafts.
  engine::SchedulerOptions so = session.scheduler_options();
  if (speculation.make_drafter || speculation.batch_drafter) {
    so.draft_k = speculation.draft_k;
    so.make_drafter = speculation.make_drafter;
    so.batch_drafter = speculation.batch_drafter;
  }
  so.max_seqs = s.options.max_seqs;
  so.prefill_chunk = std::min<int64_t>(s.options.prefill_chunk, session.context());
  const int seqs = so.max_seqs > 0 ? so.max_seqs : session.max_seqs();
  so.max_step_rows = s.options.max_step_rows > 0
                         ? s.options.max_step_rows + int64_t{seqs} * so.draft_k
                         : 0;
  so.max_queue = s.options.max_queue;
  s.scheduler = std::make_unique<engine::Scheduler>(session.engine(), so);
  s.engine_thread = std::thread([&s] {
    for (;;) {
      try {
        s.scheduler->run();
        break;
      } catch (const std::exception& e) {  // a callback threw: log it and keep serving
        s.log(fmt::format("serve: engine thread: {}", e.what()));
      }
    }
    {
      const std::lock_guard lock(s.engine_mutex);
      s.engine_done = true;
    }
    s.engine_cv.notify_all();
  });
  s.state.store(State::ready);
}

void Server::shutdown() {
  Impl& s = *impl_;
  const std::lock_guard guard(s.shutdown_mutex);
  const State was = s.state.load();
  if (was == State::stopped || was == State::created) {
    s.state.store(State::stopped);
    return;
  }
  s.state.store(State::draining);
  if (s.scheduler) {
    s.scheduler->stop(/*drain=*/true);
    std::unique_lock lock(s.engine_mutex);
    const bool drained =
        s.engine_cv.wait_for(lock, std::chrono::duration<double>(s.options.drain_timeout_s),
                             [&] { return s.engine_done; });
    lock.unlock();
    if (!drained) {
      const auto st = s.scheduler->stats();
      s.log(fmt::format("serve: drain timeout ({} s): cancelling {} active and {} queued requests",
                        s.options.drain_timeout_s, st.active, st.queued));
      s.scheduler->stop(/*drain=*/false);
    }
    if (s.engine_thread.joinable()) s.engine_thread.join();
  }
  // Every request has its answer now: let the workers write them (streams stop being written
  // once the listener stops), then close.
  for (int i = 0; i < 500 && s.in_flight.load() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  s.http.stop();
  if (s.http_thread.joinable()) s.http_thread.join();
  // Nothing can reach the scheduler now; it goes before the session (the engine it drives)
  // does, as its destructor still steps the engine.
  s.scheduler.reset();
  s.state.store(State::stopped);
}

}  // namespace ferry::serve
