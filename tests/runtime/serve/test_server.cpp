// The server in-process, over loopback with cpp-httplib's client: what the OpenAI client test
// (tests/serve) checks, in the part that needs no Node — answers, streams, refusals, the
// life cycle (loading, ok, draining), and that a finished or cancelled request leaves no
// sequence or KV block behind.
#include <gtest/gtest.h>
#include <httplib.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/engine/speculative.hpp"
#include "runtime/serve/server.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::serve {
namespace {

using json = nlohmann::json;

session::SessionOptions fixture_options() {
  session::SessionOptions o;
  o.model = test::data_dir() / "serve" / "tiny-llama-chat";
  o.context = 128;
  o.max_seqs = 2;
  o.max_batch_rows = 128;
  o.max_logit_rows = 2;
  o.require_tokenizer = true;
  return o;
}

// A prompt of about 2n tokens.
std::string words(int n) {
  std::string p;
  for (int i = 0; i < n; ++i) p += "hello world ";
  return p;
}

// The value of one unlabelled metric.
double metric(const std::string& text, const std::string& name) {
  const auto at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stod(text.substr(at + name.size() + 2));
}

TEST(ServeServer, LifeCycleAnswersAndRefusals) {
  ServerOptions so;
  so.port = 0;
  so.max_queue = 4;
  so.max_body = 4096;
  so.api_key = "k";
  Server server(so);
  const int port = server.listen();
  httplib::Client c("127.0.0.1", port);
  const httplib::Headers auth = {{"Authorization", "Bearer k"}};

  // Listening before the model: loading.
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 503);
  EXPECT_EQ(json::parse(h->body)["status"], "loading");
  auto early = c.Post("/v1/completions", auth, R"({"prompt":"x"})", "application/json");
  ASSERT_TRUE(early);
  EXPECT_EQ(early->status, 503);

  session::Session ses(fixture_options());
  server.serve(ses);
  h = c.Get("/health");
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(json::parse(h->body)["status"], "ok");

  // A completion, and the same one streamed.
  const std::string body = R"({"prompt":"Hello","max_tokens":6,"temperature":0})";
  auto r = c.Post("/v1/completions", auth, body, "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const json j = json::parse(r->body);
  EXPECT_EQ(j["usage"]["completion_tokens"], 6);
  const std::string text = j["choices"][0]["text"];

  std::string streamed_text;
  auto s = c.Post("/v1/completions", auth,
                  R"({"prompt":"Hello","max_tokens":6,"temperature":0,"stream":true})",
                  "application/json");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->get_header_value("Content-Type"), "text/event-stream");
  std::string events = s->body;
  ASSERT_GE(events.size(), 14u);
  EXPECT_EQ(events.substr(events.size() - 14), "data: [DONE]\n\n");
  for (std::size_t at = 0; (at = events.find("data: {", at)) != std::string::npos;) {
    const auto end = events.find("\n\n", at);
    const json chunk = json::parse(events.substr(at + 6, end - at - 6));
    streamed_text += chunk["choices"][0]["text"].get<std::string>();
    at = end;
  }
  EXPECT_EQ(streamed_text, text);

  // Refusals in OpenAI's shape.
  auto bad = c.Post("/v1/completions", auth, R"({"prompt":"x","n":2})", "application/json");
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(json::parse(bad->body)["error"]["param"], "n");
  auto no_key = c.Post("/v1/completions", body, "application/json");
  EXPECT_EQ(no_key->status, 401);
  EXPECT_EQ(json::parse(no_key->body)["error"]["code"], "invalid_api_key");
  auto big = c.Post("/v1/completions", auth, std::string(8192, ' '), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_NE(json::parse(big->body)["error"]["message"].get<std::string>().find("4096 bytes"),
            std::string::npos);
  auto missing = c.Get("/v2/anything");
  EXPECT_EQ(missing->status, 404);
  auto wrong = c.Get("/v1/completions", auth);
  EXPECT_EQ(wrong->status, 405);
  EXPECT_EQ(wrong->get_header_value("Allow"), "POST");
  auto longp = c.Post("/v1/completions", auth,
                      json{{"prompt", words(100)}}.dump(),
                      "application/json");
  EXPECT_EQ(longp->status, 400);
  EXPECT_EQ(json::parse(longp->body)["error"]["code"], "context_length_exceeded");

  // Models, and nothing left active.
  auto models = c.Get("/v1/models", auth);
  EXPECT_EQ(json::parse(models->body)["data"][0]["id"], "tiny-llama-chat");
  const std::string m = c.Get("/metrics")->body;
  EXPECT_EQ(metric(m, "ferry_active_sequences"), 0);
  EXPECT_EQ(metric(m, "ferry_kv_blocks_used"), 0);
  EXPECT_GT(metric(m, "ferry_kv_blocks_total"), 0);
  EXPECT_GE(metric(m, "ferry_generated_tokens_total"), 12);

  server.shutdown();
  EXPECT_FALSE(c.Get("/health"));  // the listener is closed
}

// --draft lookup and a draft model: the same completions as without drafts (greedy, several at
// once), and /metrics counts the drafts scored and kept.
TEST(ServeServer, SpeculationGivesTheSameCompletions) {
  const std::vector<std::string> prompts = {"hello world hello world hello world hello",
                                            "one two one two one two one", "Hello"};
  const auto complete_all = [&](const std::string& draft, bool self_draft = false) {
    ServerOptions so;
    so.port = 0;
    so.max_step_rows = 64;
    Server server(so);
    const int port = server.listen();
    session::SessionOptions o = fixture_options();
    o.draft = draft;
    o.draft_k = 4;
    session::Session ses(std::move(o));
    // The model drafting for itself on a session of its own, a cache slot per sequence.
    std::optional<session::Session> drafts;
    engine::SchedulerOptions speculation;
    if (self_draft) {
      drafts.emplace(fixture_options());
      speculation.draft_k = 4;
      speculation.make_drafter = [&drafts](int slot) -> std::unique_ptr<engine::Drafter> {
        return std::make_unique<engine::ModelDrafter>(drafts->engine(), "self", slot);
      };
    }
    server.serve(ses, speculation);
    std::vector<std::string> texts(prompts.size());
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < prompts.size(); ++i)
      threads.emplace_back([&, i] {
        httplib::Client c("127.0.0.1", port);
        auto r = c.Post("/v1/completions",
                        json{{"prompt", prompts[i]}, {"max_tokens", 24}, {"temperature", 0}}.dump(),
                        "application/json");
        if (r && r->status == 200) texts[i] = json::parse(r->body)["choices"][0]["text"];
      });
    for (auto& t : threads) t.join();
    httplib::Client c("127.0.0.1", port);
    const std::string m = c.Get("/metrics")->body;
    server.shutdown();
    return std::make_pair(texts, m);
  };
  const auto [plain, plain_metrics] = complete_all("");
  const auto [spec, spec_metrics] = complete_all("lookup");
  EXPECT_EQ(spec, plain);
  for (const std::string& t : plain) EXPECT_FALSE(t.empty());
  EXPECT_EQ(metric(plain_metrics, "ferry_draft_tokens_proposed_total"), 0);
  EXPECT_GE(metric(spec_metrics, "ferry_draft_tokens_proposed_total"),
            metric(spec_metrics, "ferry_draft_tokens_accepted_total"));
  EXPECT_GE(metric(spec_metrics, "ferry_draft_tokens_accepted_total"), 0);
  EXPECT_EQ(metric(spec_metrics, "ferry_kv_blocks_used"), 0);
  const auto [model, model_metrics] = complete_all("", /*self_draft=*/true);
  EXPECT_EQ(model, plain);
  EXPECT_GT(metric(model_metrics, "ferry_draft_tokens_proposed_total"), 0);
  EXPECT_EQ(metric(model_metrics, "ferry_draft_tokens_accepted_total"),
            metric(model_metrics, "ferry_draft_tokens_proposed_total"));
  EXPECT_LT(metric(model_metrics, "ferry_forward_passes_total"),
            metric(plain_metrics, "ferry_forward_passes_total"));
}

}  // namespace
}  // namespace ferry::serve
