// ferry serve's HTTP server: the OpenAI API (/v1/completions, /v1/chat/completions,
// /v1/models) over one loaded model, plus /health for load balancers and /metrics for
// Prometheus. One engine thread runs the continuous-batching scheduler; HTTP worker threads
// (cpp-httplib's pool) parse a request, submit it, and wait on its own queue, which the
// scheduler's callbacks fill with text already decoded and checked for stop strings.
//
// Life cycle: listen() first (/health answers 503 "loading", so a balancer sees the replica and
// waits), then serve(session) once the model is loaded (/health 200), then shutdown() on
// SIGTERM: /health 503 "draining", new requests 503, in-flight ones finish (for at most
// drain_timeout_s, then they are cancelled), the listener closes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "runtime/engine/scheduler.hpp"
#include "runtime/session/session.hpp"

namespace ferry::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (listen() returns it)
  std::string api_key;  // non-empty: /v1/* need "Authorization: Bearer KEY"
  std::size_t max_body = std::size_t{1} << 20;  // bytes; a larger body gets 413
  std::size_t max_queue = 64;  // requests waiting for a slot; beyond, 429 with Retry-After
  int max_seqs = 0;            // sequences decoded together; 0: the session's slots
  int64_t prefill_chunk = 512;
  int64_t max_step_rows = 0;  // the plan's max_batch_rows (0: no cap)
  double drain_timeout_s = 30;
  int http_threads = 0;  // 0: max_seqs + max_queue + 8 (a streaming request holds a thread)
  std::string model_name;  // /v1/models' id; empty: the session's model name
  std::string chat_template_file;  // a Jinja file instead of the model's own chat template
  // Lines for the operator (start-up, shutdown, engine errors); none when empty.
  std::function<void(const std::string&)> log;
};

class Server {
 public:
  explicit Server(ServerOptions options);
  ~Server();  // shutdown() with no drain if it was not called
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port and answers on a thread of its own. Returns the port. Throws Error when the
  // address cannot be bound (in use, not this machine's).
  int listen();
  // The model is loaded: the scheduler starts on the engine thread, /health says ok. The
  // session must outlive the server (or its shutdown()). `speculation` (draft_k,
  // make_drafter or batch_drafter): drafters for the batch other than the session's own (a draft model's, which
  // must outlive shutdown() too); none: the session's (SessionOptions::draft).
  void serve(session::Session& session, const engine::SchedulerOptions& speculation = {});
  // Drains and stops (see above). Idempotent; safe from any thread but the server's own.
  void shutdown();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::serve
