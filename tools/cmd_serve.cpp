// ferry serve: an OpenAI-compatible HTTP server over one model (runtime/serve).
#include <fmt/format.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <mutex>
#include <cstdlib>
#include <pthread.h>
#include <thread>

#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/model/model_config.hpp"
#include "offload/checkpoint.hpp"
#include "offload/io_engine.hpp"
#include "runtime/profile/policy.hpp"
#include "runtime/session/session.hpp"
#include "runtime/engine/drafts.hpp"
#include "tools/commands.hpp"
#include "tools/run_draft.hpp"

#ifdef FERRY_HAS_SERVE
#include "runtime/serve/server.hpp"
#endif

namespace ferry::tools {

namespace {

struct ServeOptions {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8080;
  int max_seqs = 8;
  int64_t ctx = 0;
  std::string kv_tokens = "auto";
  std::size_t max_queue = 64;
  std::string api_key;
  std::string max_body = "1MiB";
  double drain_timeout_s = 30;
  std::string model_name;
  std::string chat_template;
  std::string device = "cpu";
  std::string max_vram;
  std::string kv_memory;
  std::string max_ram;
  std::string io;
  std::string plan;
  std::string policy;
  std::string verify;
  std::string draft;  // speculative decoding: lookup (empty: none)
  int draft_k = 4;
  bool quiet = false;
};

}  // namespace

Command add_serve(CLI::App& app) {
  auto o = std::make_shared<ServeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "serve", "serve a model over HTTP with OpenAI's API (/v1/completions, /v1/chat/completions)");
  cmd->add_option("-m,--model", o->model, "model directory or GGUF file")->required();
  cmd->add_option("--host", o->host,
                  "address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for all)")
      ->envname("FERRY_HOST");
  cmd->add_option("--port", o->port, "TCP port (default 8080; 0: any free port)")
      ->check(whole_number(0, 65535))
      ->envname("FERRY_PORT");
  cmd->add_option("--max-seqs", o->max_seqs, "sequences decoded together (default 8)")
      ->check(whole_number(1, 1024));
  cmd->add_option("--ctx", o->ctx,
                  "KV tokens per sequence: the longest prompt + completion (default: the "
                  "model's context, at most 4096)")
      ->check(whole_number(1, int64_t{1} << 24));
  cmd->add_option("--kv-tokens", o->kv_tokens,
                  "tokens the paged KV cache holds for all sequences together: auto (default: "
                  "the planner weighs each sequence's cache against resident layers and keeps "
                  "the pool that decodes the most tokens/s) or a number")
      ->envname("FERRY_KV_TOKENS");
  cmd->add_option("--max-queue", o->max_queue,
                  "requests waiting for a slot beyond which the server answers 429 (default 64; "
                  "each waiting request holds an HTTP thread)")
      ->check(whole_number(1, 4096));
  cmd->add_option("--api-key", o->api_key,
                  "require 'Authorization: Bearer KEY' on /v1/* (default: none)")
      ->envname("FERRY_API_KEY");
  cmd->add_option("--max-body", o->max_body, "largest request body (default 1MiB); larger: 413");
  cmd->add_option("--drain-timeout", o->drain_timeout_s,
                  "seconds SIGTERM waits for in-flight requests before cancelling them "
                  "(default 30)")
      ->check(CLI::Range(0.0, 86400.0));
  cmd->add_option("--model-name", o->model_name,
                  "the model's id in /v1/models and responses (default: the directory's name)");
  cmd->add_option("--template", o->chat_template,
                  "a Jinja chat template file for /v1/chat/completions instead of the model's own")
      ->check(CLI::ExistingFile);
  cmd->add_option("--device", o->device, "cpu (default) | cuda")->envname("FERRY_DEVICE");
  add_kv_memory_option(cmd, o->kv_memory);
  cmd->add_option("--max-vram", o->max_vram, "cap on GPU memory with --device cuda, e.g. 6GiB")
      ->envname("FERRY_MAX_VRAM");
  cmd->add_option("--max-ram", o->max_ram,
                  "cap on host memory, e.g. 4GiB (default: what is free, cgroup limits included)")
      ->envname("FERRY_MAX_RAM");
  cmd->add_option("--io", o->io, "I/O engine: auto | uring | pread | buffered")->envname("FERRY_IO");
  cmd->add_option("--policy", o->policy,
                  "I/O options and staging slots from a policy written by `ferry tune`");
  cmd->add_option("--plan", o->plan, "replay a plan saved by `ferry plan --json -o FILE`")
      ->check(CLI::ExistingFile);
  cmd->add_option("--verify", o->verify, "a ferry pack's checksums: always | once | off")
      ->envname("FERRY_VERIFY");
  cmd->add_option("--draft", o->draft,
                  "speculative decoding in the batch: lookup (each sequence drafts from n-grams "
                  "of its own text), self-int4 / self-int8 (a pack of this model, kept resident) "
                  "or the PATH of a smaller model sharing the tokenizer (a cache slot per "
                  "sequence); the output is the same as without")
      ->envname("FERRY_DRAFT");
  cmd->add_option("--draft-k", o->draft_k, "tokens each sequence drafts per pass (default 4)")
      ->check(whole_number(1, 32));
  cmd->add_flag("-q,--quiet", o->quiet, "no start-up lines on stderr");
  return [o]() -> int {
#ifndef FERRY_HAS_SERVE
    FERRY_EXPECT(false,
                 "this ferry was built without cpp-httplib, so it cannot serve; install "
                 "libcpp-httplib-dev (scripts/setup.sh does) and rebuild");
    return 1;
#else
    // Before listening: a bad --draft is refused with nothing loaded.
    if (!o->draft.empty()) engine::DraftSpec::parse(o->draft);
    const uint64_t max_body = parse_size(o->max_body);
    FERRY_EXPECT(max_body >= 1024, "--max-body {} is too small for any request; give at least 1KiB",
                 o->max_body);
    // Flags whose refusal must come before the server's threads start (an error thrown once the
    // signal thread runs ended as "an exception escaped (a bug …)").
    const int64_t kv_pool_tokens = parse_kv_tokens(o->kv_tokens);
    const planner::KvMemory kv_memory = parse_kv_memory_flag(o->kv_memory, o->device);

    // SIGTERM and SIGINT are taken by one thread with sigwait: blocked here, before any other
    // thread starts, so every thread inherits the mask. A closed client socket must not kill the
    // server either.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    serve::ServerOptions so;
    so.host = o->host;
    so.port = o->port;
    so.api_key = o->api_key;
    so.max_body = max_body;
    so.max_queue = o->max_queue;
    so.max_seqs = o->max_seqs;
    so.drain_timeout_s = o->drain_timeout_s;
    so.model_name = o->model_name;
    so.chat_template_file = o->chat_template;
    const bool quiet = o->quiet;
    so.log = [](const std::string& line) { eprint("ferry: {}\n", line); };

    // Listening before loading: /health says "loading" meanwhile, so a balancer or an
    // orchestrator sees the replica start instead of a refused connection.
    const auto config = engine::read_model_config(o->model);
    const int64_t context = o->ctx > 0 ? o->ctx : model::default_context(config);
    so.prefill_chunk = std::min<int64_t>(512, context);
    so.max_step_rows = o->max_seqs + so.prefill_chunk - 1;
    serve::Server server(so);
    const int port = server.listen();
    if (!quiet) eprint("ferry: listening on http://{}:{} (loading {})\n", o->host, port, o->model);

    std::atomic<bool> loaded{false};
    std::atomic<bool> load_failed{false};
    std::atomic<int> signal_seen{0};
    std::mutex stop_mutex;
    std::condition_variable stop_cv;
    std::thread signal_thread([&] {
      int sig = 0;
      sigwait(&signals, &sig);
      if (load_failed.load()) return;  // woken by the main thread to end
      if (!loaded.load()) {
        // Nothing is in flight while loading: leave at once, as a process killed mid-load would.
        eprint("ferry: signal {} while loading; exiting\n", sig);
        std::_Exit(0);
      }
      {
        const std::lock_guard lock(stop_mutex);
        signal_seen.store(sig);
      }
      stop_cv.notify_all();
    });

    session::SessionOptions ses_o;
    ses_o.model = o->model;
    ses_o.device = o->device;
    ses_o.context = context;
    ses_o.max_seqs = o->max_seqs;
    ses_o.max_batch_rows = so.max_step_rows;
    ses_o.max_logit_rows = o->max_seqs;
    ses_o.kv_pool_tokens = kv_pool_tokens;
    if (!o->max_ram.empty()) ses_o.load.max_ram_bytes = parse_max_ram(o->max_ram);
    if (!o->policy.empty()) profile::apply_policy(profile::load_policy(o->policy), ses_o.load);
    if (!o->io.empty()) ses_o.load.io.backend = offload::parse_io_backend(o->io);
    if (!o->plan.empty()) ses_o.load.plan = read_plan_file(o->plan);
    if (!o->verify.empty()) ses_o.load.verify = offload::parse_verify_mode(o->verify, "--verify");
    ses_o.load.context_hint = "serve a shorter context with --ctx, or fewer sequences with --max-seqs";
    if (!o->max_vram.empty()) ses_o.max_vram_bytes = parse_size(o->max_vram);
    ses_o.load.kv_memory = kv_memory;
    ses_o.require_tokenizer = true;
    // The drafter opens first (a self pack converted once into the cache; a draft model loaded
    // resident with a slot per sequence, its bytes out of the target's budget).
    std::unique_ptr<DraftRun> draft;
    std::unique_ptr<session::Session> ses;
    engine::SchedulerOptions speculation;
    try {
      if (!o->draft.empty()) draft = std::make_unique<DraftRun>(DraftFlags{o->draft, o->draft_k},
                                                                ses_o, quiet);
      ses = std::make_unique<session::Session>(std::move(ses_o));
      if (draft) {
        draft->check_against(*ses);
        speculation = draft->speculation();
      }
      if (!quiet) {
        for (const std::string& line : ses->describe()) eprint("ferry: {}\n", line);
        if (draft) eprint("ferry: {}\n", draft->describe());
      }
      server.serve(*ses, speculation);  // throws for a chat template that does not parse
    } catch (...) {
      server.shutdown();
      load_failed.store(true);
      pthread_kill(signal_thread.native_handle(), SIGTERM);  // wakes its sigwait
      signal_thread.join();
      throw;
    }
    loaded.store(true);
    if (!quiet)
      eprint("ferry: serving {} on http://{}:{}/v1 ({} sequences, context {}{})\n",
             ses->model_name(), o->host, port, o->max_seqs, ses->context(),
             draft ? fmt::format(", drafts: {} k {}", o->draft, draft->k()) : std::string());

    {
      std::unique_lock lock(stop_mutex);
      stop_cv.wait(lock, [&] { return signal_seen.load() != 0; });
    }
    signal_thread.join();
    if (!quiet)
      eprint("ferry: signal {}: draining (at most {} s)\n", signal_seen.load(),
             o->drain_timeout_s);
    server.shutdown();
    if (!quiet) eprint("ferry: stopped\n");
    return 0;
#endif
  };
}

}  // namespace ferry::tools
