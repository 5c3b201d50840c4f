// The OpenAI API's wire format, apart from HTTP: request bodies of /v1/completions and
// /v1/chat/completions parsed and checked (every refusal an ApiError naming the field, in
// OpenAI's error shape), stop strings matched on streamed text, server-sent-event framing and the
// response objects. Pure functions, so the tests reach them without a socket.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace ferry::serve {

// A request refused with an HTTP status and OpenAI's error object:
// {"error": {"message", "type", "param", "code"}}. param names the field at fault (empty: none).
class ApiError : public Error {
 public:
  ApiError(int status, const std::string& message, std::string param = {}, std::string code = {},
           std::string type = "invalid_request_error")
      : Error(message),
        status_(status),
        param_(std::move(param)),
        code_(std::move(code)),
        type_(std::move(type)) {}
  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& code() const { return code_; }
  const std::string& type() const { return type_; }
  // The JSON body.
  std::string body() const;

 private:
  int status_;
  std::string param_;
  std::string code_;
  std::string type_;
};

// OpenAI's error body for a message; param and code are null when empty.
std::string error_body(std::string_view message, std::string_view type = "invalid_request_error",
                       std::string_view param = {}, std::string_view code = {});

// One request of either endpoint, checked. What OpenAI accepts and ferry cannot honour (n > 1,
// logprobs, echo, tools, penalties) is refused naming the field rather than ignored; fields that
// change nothing here (user, service_tier, ...) are ignored as OpenAI's own servers do.
struct GenerationRequest {
  bool chat = false;
  std::string model;  // as sent (any name is accepted: OpenAI clients always send one)
  // /v1/completions: the prompt as text, or as token ids.
  std::optional<std::string> prompt_text;
  std::vector<int32_t> prompt_ids;
  // /v1/chat/completions: the messages, each {role, content} with content a string (text parts
  // of a content list are joined), other keys kept for the template.
  nlohmann::ordered_json messages;
  std::optional<int64_t> max_tokens;  // none: 16 for completions, the context's rest for chat
  float temperature = 1.0f;           // OpenAI's default; 0 is greedy
  float top_p = 1.0f;
  int top_k = 0;  // an extension (0: all tokens)
  std::optional<uint64_t> seed;
  std::vector<std::string> stop;  // non-empty strings
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
};

// Throw ApiError (400) for malformed JSON, a body that is not an object, a missing or mistyped
// field, a value out of range or an unsupported feature; the message names the field.
GenerationRequest parse_completion_request(std::string_view body);
GenerationRequest parse_chat_request(std::string_view body);

// Stop strings over text that arrives in pieces: push() returns what may be sent now, holding
// back a tail that could still become a stop string; when one appears, the text before it is
// returned, the rest dropped, and stopped() is true. Pieces must be whole UTF-8 characters
// (text::StreamDecoder's), and so are the returned ones.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops = {});
  std::string push(std::string_view text);
  // The end of the stream: what was held back (nothing after a stop).
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// Server-sent events: one "data: JSON\n\n" event, and the stream's end, "data: [DONE]\n\n".
std::string sse_event(const nlohmann::json& data);
std::string sse_done();

struct Usage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
};

// The response objects. finish_reason null (streamed chunks before the last) is an empty string.
nlohmann::json usage_json(const Usage& usage);
nlohmann::json completion_response(const std::string& id, int64_t created,
                                   const std::string& model, const std::string& text,
                                   const std::string& finish_reason, const Usage& usage);
nlohmann::json chat_response(const std::string& id, int64_t created, const std::string& model,
                             const std::string& content, const std::string& finish_reason,
                             const Usage& usage);
nlohmann::json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                                const std::string& text, const std::string& finish_reason);
// The first chunk of a chat stream carries the role; content is omitted when empty there.
nlohmann::json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                          const std::string& content, const std::string& finish_reason,
                          bool first);
// The usage chunk that stream_options.include_usage adds before [DONE]: no choices.
nlohmann::json usage_chunk(const std::string& id, int64_t created, const std::string& model,
                           bool chat, const Usage& usage);

// Text for JSON: bytes that are not UTF-8 (a model's stray byte tokens) become U+FFFD.
std::string dump_json(const nlohmann::json& value);

}  // namespace ferry::serve
