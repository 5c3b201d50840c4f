// The OpenAI wire format of ferry serve without a socket: request parsing and its refusals
// (status, field, message), stop strings over streamed pieces, server-sent-event framing.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/serve/api.hpp"

namespace ferry::serve {
namespace {

using json = nlohmann::json;

// The ApiError a body gets, with its status and param checked.
ApiError refusal(bool chat, const std::string& body) {
  try {
    if (chat)
      parse_chat_request(body);
    else
      parse_completion_request(body);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body;
  return ApiError(0, "");
}

void expect_refused(bool chat, const std::string& body, const std::string& param,
                    const std::string& message_part, int status = 400) {
  const ApiError e = refusal(chat, body);
  EXPECT_EQ(e.status(), status) << body;
  EXPECT_EQ(e.param(), param) << body;
  EXPECT_NE(std::string(e.what()).find(message_part), std::string::npos)
      << body << " -> " << e.what();
  // OpenAI's shape, always.
  const json j = json::parse(e.body());
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j["error"]["message"], e.what());
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  if (param.empty())
    EXPECT_TRUE(j["error"]["param"].is_null());
  else
    EXPECT_EQ(j["error"]["param"], param);
}

TEST(ServeApi, CompletionDefaultsAndFields) {
  const auto r = parse_completion_request(R"({"model":"x","prompt":"Hello"})");
  EXPECT_FALSE(r.chat);
  EXPECT_EQ(r.model, "x");
  ASSERT_TRUE(r.prompt_text);
  EXPECT_EQ(*r.prompt_text, "Hello");
  EXPECT_FALSE(r.max_tokens);
  EXPECT_FLOAT_EQ(r.temperature, 1.0f);
  EXPECT_FLOAT_EQ(r.top_p, 1.0f);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_FALSE(r.seed);
  EXPECT_FALSE(r.stream);

  const auto s = parse_completion_request(
      R"({"prompt":[1,2,3],"max_tokens":5,"temperature":0,"top_p":0.5,"top_k":-1,"seed":-3,
          "stop":["a","","bc"],"stream":true,"stream_options":{"include_usage":true},"n":1,
          "echo":false,"logprobs":null,"user":"u","frequency_penalty":0})");
  EXPECT_EQ(s.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(*s.max_tokens, 5);
  EXPECT_FLOAT_EQ(s.temperature, 0.0f);
  EXPECT_FLOAT_EQ(s.top_p, 0.5f);
  EXPECT_EQ(s.top_k, 0);
  EXPECT_EQ(*s.seed, static_cast<uint64_t>(-3));
  EXPECT_EQ(s.stop, (std::vector<std::string>{"a", "bc"}));  // empty ones dropped
  EXPECT_TRUE(s.stream);
  EXPECT_TRUE(s.include_usage);

  EXPECT_EQ(parse_completion_request(R"({"prompt":["one"],"stop":"x"})").stop,
            std::vector<std::string>{"x"});
  EXPECT_EQ(parse_completion_request(R"({"prompt":[[4,5]]})").prompt_ids,
            (std::vector<int32_t>{4, 5}));
}

TEST(ServeApi, CompletionRefusals) {
  expect_refused(false, "{not json", "", "could not parse the JSON body");
  expect_refused(false, "[1,2]", "", "must be a JSON object, not an array");
  expect_refused(false, "{}", "prompt", "Missing required parameter: 'prompt'");
  expect_refused(false, R"({"prompt":5})", "prompt", "expected a string or an array of token ids");
  expect_refused(false, R"({"prompt":[]})", "prompt", "empty array");
  expect_refused(false, R"({"prompt":["a","b"]})", "prompt", "a list of 2 prompts");
  expect_refused(false, R"({"prompt":[1,"x"]})", "prompt[1]", "expected an integer token id");
  expect_refused(false, R"({"prompt":[1,-2]})", "prompt[1]", "token id -2 is negative");
  expect_refused(false, R"({"prompt":"a","max_tokens":"9"})", "max_tokens",
                 "Invalid type for 'max_tokens': expected an integer, but got a string");
  expect_refused(false, R"({"prompt":"a","max_tokens":2.5})", "max_tokens", "expected an integer");
  expect_refused(false, R"({"prompt":"a","max_tokens":0})", "max_tokens", "0 is outside [1,");
  expect_refused(false, R"({"prompt":"a","temperature":"hot"})", "temperature", "expected a number");
  expect_refused(false, R"({"prompt":"a","temperature":2.5})", "temperature", "outside [0, 2]");
  expect_refused(false, R"({"prompt":"a","top_p":0})", "top_p", "outside (0, 1]");
  expect_refused(false, R"({"prompt":"a","stop":3})", "stop", "a string or an array of strings");
  expect_refused(false, R"({"prompt":"a","stop":["x",1]})", "stop[1]", "expected a string");
  expect_refused(false, R"({"prompt":"a","stream":"yes"})", "stream", "expected a boolean");
  expect_refused(false, R"({"prompt":"a","n":2})", "n", "n must be 1");
  expect_refused(false, R"({"prompt":"a","n":"2"})", "n", "expected an integer");
  expect_refused(false, R"({"prompt":"a","echo":true})", "echo", "not supported");
  expect_refused(false, R"({"prompt":"a","logprobs":2})", "logprobs", "log probabilities");
  expect_refused(false, R"({"prompt":"a","best_of":3})", "best_of", "not supported");
  expect_refused(false, R"({"prompt":"a","suffix":"z"})", "suffix", "not supported");
  expect_refused(false, R"({"prompt":"a","presence_penalty":1})", "presence_penalty",
                 "penalties");
  expect_refused(false, R"({"prompt":"a","logit_bias":{"5":100}})", "logit_bias", "bias");
  expect_refused(false, R"({"prompt":"a","model":7})", "model", "expected a string");
  expect_refused(false, R"({"prompt":"a","seed":1.5})", "seed", "expected an integer");
}

TEST(ServeApi, ChatMessages) {
  const auto r = parse_chat_request(
      R"({"model":"m","messages":[{"role":"system","content":"Be brief."},
          {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}],
           "name":"ann"}],"max_completion_tokens":7})");
  EXPECT_TRUE(r.chat);
  ASSERT_EQ(r.messages.size(), 2u);
  EXPECT_EQ(r.messages[1]["content"], "Hi there");  // text parts joined
  EXPECT_EQ(r.messages[1]["name"], "ann");           // other keys kept for the template
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_EQ(r.messages.begin().value()["role"], "system");
}

TEST(ServeApi, ChatRefusals) {
  expect_refused(true, R"({"model":"m"})", "messages", "Missing required parameter: 'messages'");
  expect_refused(true, R"({"messages":"hi"})", "messages", "expected an array");
  expect_refused(true, R"({"messages":[]})", "messages", "no messages");
  expect_refused(true, R"({"messages":["hi"]})", "messages[0]", "expected an object");
  expect_refused(true, R"({"messages":[{"content":"hi"}]})", "messages[0].role",
                 "Missing required parameter");
  expect_refused(true, R"({"messages":[{"role":1,"content":"hi"}]})", "messages[0].role",
                 "expected a string");
  expect_refused(true, R"({"messages":[{"role":"user","content":5}]})", "messages[0].content",
                 "expected a string or an array of content parts");
  expect_refused(true,
                 R"({"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]})",
                 "messages[0].content[0]", "only text content parts");
  const std::string ok = R"("messages":[{"role":"user","content":"hi"}])";
  expect_refused(true, "{" + ok + R"(,"n":3})", "n", "n must be 1");
  expect_refused(true, "{" + ok + R"(,"logprobs":true})", "logprobs", "log probabilities");
  expect_refused(true, "{" + ok + R"(,"tools":[{"type":"function"}]})", "tools", "tool calls");
  expect_refused(true, "{" + ok + R"(,"response_format":{"type":"json_object"}})",
                 "response_format", "does not constrain");
  expect_refused(true, "{" + ok + R"(,"max_tokens":-1})", "max_tokens", "outside");
  // Accepted: an empty tool list, a text response format, logprobs false.
  EXPECT_NO_THROW(parse_chat_request(
      "{" + ok + R"(,"tools":[],"response_format":{"type":"text"},"logprobs":false})"));
}

// Feeds pieces and returns what was released, and whether it stopped.
std::pair<std::string, bool> run_stops(std::vector<std::string> stops,
                                       const std::vector<std::string>& pieces) {
  StopMatcher m(std::move(stops));
  std::string out;
  for (const std::string& p : pieces) out += m.push(p);
  out += m.flush();
  return {out, m.stopped()};
}

TEST(ServeApi, StopStrings) {
  // No stops: everything passes at once.
  StopMatcher none;
  EXPECT_EQ(none.push("abc"), "abc");
  // A stop inside one piece: the text before it, the rest dropped.
  EXPECT_EQ(run_stops({"END"}, {"hello END world"}), std::make_pair(std::string("hello "), true));
  // Split across pieces, the start held back until it is decided.
  StopMatcher m({"END"});
  EXPECT_EQ(m.push("abc E"), "abc ");
  EXPECT_EQ(m.push("N"), "");
  EXPECT_EQ(m.push("D tail"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.flush(), "");
  // A false start is released once it cannot be a stop any more.
  StopMatcher f({"END"});
  EXPECT_EQ(f.push("xE"), "x");
  EXPECT_EQ(f.push("Nx"), "ENx");
  EXPECT_EQ(f.flush(), "");
  EXPECT_FALSE(f.stopped());
  // The held tail is released at the end when no stop came.
  EXPECT_EQ(run_stops({"END"}, {"ab", "EN"}), std::make_pair(std::string("abEN"), false));
  // The earliest of several stops wins.
  EXPECT_EQ(run_stops({"cd", "b"}, {"abcd"}).first, "a");
  EXPECT_EQ(run_stops({"\n\n"}, {"line\n", "\nnext"}).first, "line");
  // Multi-byte characters stay whole: a stop beginning with é holds back only whole characters.
  StopMatcher u({"é!"});
  EXPECT_EQ(u.push("café"), "caf");
  EXPECT_EQ(u.push("?"), "é?");
}

TEST(ServeApi, ServerSentEvents) {
  EXPECT_EQ(sse_event(json{{"a", 1}}), "data: {\"a\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
  // Bytes that are not UTF-8 cannot break the JSON.
  EXPECT_EQ(sse_event(json{{"t", std::string("\xff")}}), "data: {\"t\":\"\xEF\xBF\xBD\"}\n\n");

  const json first = chat_chunk("chatcmpl-1", 5, "m", "", "", true);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(first["choices"][0]["finish_reason"].is_null());
  const json mid = chat_chunk("chatcmpl-1", 5, "m", "hi", "", false);
  EXPECT_FALSE(mid["choices"][0]["delta"].contains("role"));
  EXPECT_EQ(mid["choices"][0]["delta"]["content"], "hi");
  const json last = chat_chunk("chatcmpl-1", 5, "m", "", "length", false);
  EXPECT_TRUE(last["choices"][0]["delta"].empty());
  EXPECT_EQ(last["choices"][0]["finish_reason"], "length");

  const json c = completion_chunk("cmpl-2", 5, "m", "x", "stop");
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["choices"][0]["text"], "x");
  EXPECT_EQ(c["choices"][0]["finish_reason"], "stop");
  const json u = usage_chunk("cmpl-2", 5, "m", false, {3, 4});
  EXPECT_TRUE(u["choices"].empty());
  EXPECT_EQ(u["usage"]["total_tokens"], 7);
}

TEST(ServeApi, Responses) {
  const json c = completion_response("cmpl-1", 9, "tiny", "text", "length", {5, 2});
  EXPECT_EQ(c["id"], "cmpl-1");
  EXPECT_EQ(c["created"], 9);
  EXPECT_EQ(c["model"], "tiny");
  EXPECT_EQ(c["choices"][0]["text"], "text");
  EXPECT_EQ(c["usage"], (json{{"prompt_tokens", 5}, {"completion_tokens", 2}, {"total_tokens", 7}}));
  const json m = chat_response("chatcmpl-1", 9, "tiny", "hey", "stop", {1, 1});
  EXPECT_EQ(m["object"], "chat.completion");
  EXPECT_EQ(m["choices"][0]["message"], (json{{"role", "assistant"}, {"content", "hey"}}));
  EXPECT_EQ(m["choices"][0]["finish_reason"], "stop");
  const json e = json::parse(error_body("bad", "invalid_request_error", "stop", "invalid_type"));
  EXPECT_EQ(e, (json{{"error",
                      {{"message", "bad"},
                       {"type", "invalid_request_error"},
                       {"param", "stop"},
                       {"code", "invalid_type"}}}}));
}

}  // namespace
}  // namespace ferry::serve
