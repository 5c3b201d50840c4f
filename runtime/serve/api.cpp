#include "runtime/serve/api.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace ferry::serve {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

namespace {

json null_or(std::string_view s) { return s.empty() ? json(nullptr) : json(std::string(s)); }

// JSON's own names for a value's type, as OpenAI's messages say them.
std::string type_words(const ordered_json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a decimal";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

[[noreturn]] void bad_type(const std::string& field, std::string_view expected,
                           const ordered_json& got) {
  throw ApiError(400,
                 fmt::format("Invalid type for '{}': expected {}, but got {} instead.", field,
                             expected, type_words(got)),
                 field, "invalid_type");
}

[[noreturn]] void bad_value(const std::string& field, const std::string& message) {
  throw ApiError(400, fmt::format("Invalid value for '{}': {}", field, message), field,
                 "invalid_value");
}

[[noreturn]] void unsupported(const std::string& field, const std::string& message) {
  throw ApiError(400, fmt::format("'{}' is not supported: {}", field, message), field,
                 "unsupported_parameter");
}

// The field, or null when absent (absent and null mean the default alike).
const ordered_json& field(const ordered_json& body, const char* name) {
  static const ordered_json null_value;
  const auto it = body.find(name);
  return it == body.end() ? null_value : *it;
}

bool is_integer(const ordered_json& v) { return v.is_number_integer() || v.is_number_unsigned(); }

std::optional<double> number(const ordered_json& body, const char* name, double lo, double hi,
                             bool lo_open = false) {
  const ordered_json& v = field(body, name);
  if (v.is_null()) return std::nullopt;
  if (!v.is_number()) bad_type(name, "a number", v);
  const double x = v.get<double>();
  if (!(lo_open ? x > lo : x >= lo) || !(x <= hi))
    bad_value(name, fmt::format("{} is outside {}{}, {}]", x, lo_open ? "(" : "[", lo, hi));
  return x;
}

std::optional<int64_t> integer(const ordered_json& body, const char* name, int64_t lo,
                               int64_t hi) {
  const ordered_json& v = field(body, name);
  if (v.is_null()) return std::nullopt;
  if (!is_integer(v)) bad_type(name, "an integer", v);
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi))
    bad_value(name, fmt::format("{} is above the largest allowed, {}", v.get<uint64_t>(), hi));
  const auto x = v.get<int64_t>();
  if (x < lo || x > hi) bad_value(name, fmt::format("{} is outside [{}, {}]", x, lo, hi));
  return x;
}

std::optional<bool> boolean(const ordered_json& body, const char* name) {
  const ordered_json& v = field(body, name);
  if (v.is_null()) return std::nullopt;
  if (!v.is_boolean()) bad_type(name, "a boolean", v);
  return v.get<bool>();
}

ordered_json parse_body(std::string_view body) {
  ordered_json j = ordered_json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    throw ApiError(400,
                   "We could not parse the JSON body of your request: it is not valid JSON. "
                   "Send a JSON object with Content-Type: application/json.",
                   "", "invalid_json");
  if (!j.is_object())
    throw ApiError(400, fmt::format("The request body must be a JSON object, not {}.",
                                    type_words(j)),
                   "", "invalid_json");
  return j;
}

// The fields both endpoints share.
void parse_common(const ordered_json& b, GenerationRequest& r) {
  const ordered_json& model = field(b, "model");
  if (!model.is_null()) {
    if (!model.is_string()) bad_type("model", "a string", model);
    r.model = model.get<std::string>();
  }
  const char* max_name = "max_tokens";
  if (r.chat && !field(b, "max_completion_tokens").is_null()) max_name = "max_completion_tokens";
  r.max_tokens = integer(b, max_name, 1, int64_t{1} << 30);
  if (auto t = number(b, "temperature", 0, 2)) r.temperature = static_cast<float>(*t);
  if (auto p = number(b, "top_p", 0, 1, /*lo_open=*/true)) r.top_p = static_cast<float>(*p);
  if (auto k = integer(b, "top_k", -1, std::numeric_limits<int32_t>::max()))
    r.top_k = static_cast<int>(std::max<int64_t>(*k, 0));  // -1: all, as vLLM spells it
  if (auto s = integer(b, "seed", std::numeric_limits<int64_t>::min(),
                       std::numeric_limits<int64_t>::max()))
    r.seed = static_cast<uint64_t>(*s);

  const ordered_json& stop = field(b, "stop");
  if (stop.is_string()) {
    if (!stop.get<std::string>().empty()) r.stop.push_back(stop.get<std::string>());
  } else if (stop.is_array()) {
    if (stop.size() > 16) bad_value("stop", fmt::format("{} stop strings; at most 16", stop.size()));
    for (std::size_t i = 0; i < stop.size(); ++i) {
      if (!stop[i].is_string()) bad_type(fmt::format("stop[{}]", i), "a string", stop[i]);
      if (!stop[i].get<std::string>().empty()) r.stop.push_back(stop[i].get<std::string>());
    }
  } else if (!stop.is_null()) {
    bad_type("stop", "a string or an array of strings", stop);
  }

  r.stream = boolean(b, "stream").value_or(false);
  const ordered_json& so = field(b, "stream_options");
  if (!so.is_null()) {
    if (!so.is_object()) bad_type("stream_options", "an object", so);
    r.include_usage = boolean(so, "include_usage").value_or(false);
  }

  if (auto n = integer(b, "n", 1, std::numeric_limits<int32_t>::max()); n && *n != 1)
    unsupported("n", fmt::format("n is {}; ferry returns one choice per request, so n must be 1 "
                                 "(send {} requests instead)",
                                 *n, *n));
  for (const char* name : {"frequency_penalty", "presence_penalty"})
    if (auto x = number(b, name, -2, 2); x && *x != 0)
      unsupported(name, "ferry does not apply penalties; leave it out or send 0");
  const ordered_json& bias = field(b, "logit_bias");
  if (!bias.is_null()) {
    if (!bias.is_object()) bad_type("logit_bias", "an object", bias);
    if (!bias.empty()) unsupported("logit_bias", "ferry does not bias logits; leave it out");
  }
}

std::vector<int32_t> token_ids(const ordered_json& list, const std::string& name) {
  std::vector<int32_t> ids;
  ids.reserve(list.size());
  for (std::size_t i = 0; i < list.size(); ++i) {
    const ordered_json& v = list[i];
    const std::string at = fmt::format("{}[{}]", name, i);
    if (!is_integer(v)) bad_type(at, "an integer token id", v);
    if (v.is_number_integer() && v.get<int64_t>() < 0)
      bad_value(at, fmt::format("token id {} is negative", v.get<int64_t>()));
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int32_t>::max()))
      bad_value(at, fmt::format("token id {} is too large", v.get<uint64_t>()));
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

}  // namespace

std::string error_body(std::string_view message, std::string_view type, std::string_view param,
                       std::string_view code) {
  json e = {{"message", std::string(message)},
            {"type", std::string(type)},
            {"param", null_or(param)},
            {"code", null_or(code)}};
  return dump_json(json{{"error", e}});
}

std::string ApiError::body() const { return error_body(what(), type_, param_, code_); }

GenerationRequest parse_completion_request(std::string_view body) {
  const ordered_json b = parse_body(body);
  GenerationRequest r;
  r.chat = false;
  const ordered_json& prompt = field(b, "prompt");
  if (prompt.is_null())
    throw ApiError(400, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter");
  if (prompt.is_string()) {
    r.prompt_text = prompt.get<std::string>();
  } else if (prompt.is_array()) {
    if (prompt.empty()) bad_value("prompt", "the prompt is an empty array");
    if (prompt.size() == 1 && prompt[0].is_string()) {
      r.prompt_text = prompt[0].get<std::string>();
    } else if (prompt.size() == 1 && prompt[0].is_array()) {
      r.prompt_ids = token_ids(prompt[0], "prompt[0]");
    } else if (prompt[0].is_string() || prompt[0].is_array()) {
      unsupported("prompt", fmt::format("a list of {} prompts; send one prompt per request",
                                        prompt.size()));
    } else {
      r.prompt_ids = token_ids(prompt, "prompt");
    }
    if (!r.prompt_text && r.prompt_ids.empty()) bad_value("prompt", "the prompt has no tokens");
  } else {
    bad_type("prompt", "a string or an array of token ids", prompt);
  }
  parse_common(b, r);
  if (boolean(b, "echo").value_or(false))
    unsupported("echo", "ferry does not return the prompt with the completion; send false");
  if (auto best = integer(b, "best_of", 1, std::numeric_limits<int32_t>::max()); best && *best > 1)
    unsupported("best_of", "ferry returns one completion per request; send 1");
  const ordered_json& lp = field(b, "logprobs");
  if (!lp.is_null() && !(lp.is_boolean() && !lp.get<bool>()))
    unsupported("logprobs", "ferry does not return log probabilities; leave it out");
  const ordered_json& suffix = field(b, "suffix");
  if (!suffix.is_null() && !(suffix.is_string() && suffix.get<std::string>().empty()))
    unsupported("suffix", "ferry does not insert text; leave it out");
  return r;
}

GenerationRequest parse_chat_request(std::string_view body) {
  const ordered_json b = parse_body(body);
  GenerationRequest r;
  r.chat = true;
  const ordered_json& messages = field(b, "messages");
  if (messages.is_null())
    throw ApiError(400, "Missing required parameter: 'messages'.", "messages",
                   "missing_required_parameter");
  if (!messages.is_array()) bad_type("messages", "an array", messages);
  if (messages.empty()) bad_value("messages", "the conversation has no messages");
  r.messages = ordered_json::array();
  for (std::size_t i = 0; i < messages.size(); ++i) {
    const ordered_json& m = messages[i];
    const std::string at = fmt::format("messages[{}]", i);
    if (!m.is_object()) bad_type(at, "an object", m);
    const ordered_json& role = field(m, "role");
    if (role.is_null())
      throw ApiError(400, fmt::format("Missing required parameter: '{}.role'.", at), at + ".role",
                     "missing_required_parameter");
    if (!role.is_string()) bad_type(at + ".role", "a string", role);
    ordered_json out = m;
    const ordered_json& content = field(m, "content");
    if (content.is_array()) {
      // OpenAI's content parts: the text ones joined, as a text-only model reads them.
      std::string text;
      for (std::size_t k = 0; k < content.size(); ++k) {
        const ordered_json& part = content[k];
        const std::string pat = fmt::format("{}.content[{}]", at, k);
        if (!part.is_object()) bad_type(pat, "an object", part);
        const ordered_json& type = field(part, "type");
        if (!type.is_string() || type.get<std::string>() != "text")
          unsupported(pat, "only text content parts ({\"type\": \"text\", \"text\": ...}) are "
                           "supported");
        const ordered_json& t = field(part, "text");
        if (!t.is_string()) bad_type(pat + ".text", "a string", t);
        text += t.get<std::string>();
      }
      out["content"] = text;
    } else if (!content.is_string() && !content.is_null()) {
      bad_type(at + ".content", "a string or an array of content parts", content);
    }
    r.messages.push_back(std::move(out));
  }
  parse_common(b, r);
  if (boolean(b, "logprobs").value_or(false))
    unsupported("logprobs", "ferry does not return log probabilities; leave it out");
  if (!field(b, "top_logprobs").is_null())
    unsupported("top_logprobs", "ferry does not return log probabilities; leave it out");
  for (const char* name : {"tools", "functions"}) {
    const ordered_json& t = field(b, name);
    if (!t.is_null() && !(t.is_array() && t.empty()))
      unsupported(name, "ferry does not parse tool calls; leave it out");
  }
  const ordered_json& format = field(b, "response_format");
  if (!format.is_null()) {
    if (!format.is_object()) bad_type("response_format", "an object", format);
    const ordered_json& type = field(format, "type");
    if (!(type.is_string() && type.get<std::string>() == "text"))
      unsupported("response_format", "ferry does not constrain the output; only {\"type\": "
                                     "\"text\"} is accepted");
  }
  return r;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  held_.append(text);
  if (stops_.empty()) return std::exchange(held_, {});
  // The earliest stop string in the text (a match can only begin in the held tail or the new
  // text: earlier text was released because no stop string could start there).
  std::size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    stopped_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest tail that begins some stop string.
  std::size_t keep = 0;
  for (const std::string& s : stops_) {
    const std::size_t most = std::min(s.size() - 1, held_.size());
    for (std::size_t n = most; n > keep; --n)
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  }
  std::string out = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return out;
}

std::string StopMatcher::flush() {
  if (stopped_) return {};
  return std::exchange(held_, {});
}

std::string dump_json(const json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& data) { return "data: " + dump_json(data) + "\n\n"; }
std::string sse_done() { return "data: [DONE]\n\n"; }

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json completion_response(const std::string& id, int64_t created, const std::string& model,
                         const std::string& text, const std::string& finish_reason,
                         const Usage& usage) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0},
                                    {"text", text},
                                    {"logprobs", nullptr},
                                    {"finish_reason", null_or(finish_reason)}}})},
          {"usage", usage_json(usage)}};
}

json chat_response(const std::string& id, int64_t created, const std::string& model,
                   const std::string& content, const std::string& finish_reason,
                   const Usage& usage) {
  return {{"id", id},
          {"object", "chat.completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0},
                                    {"message", {{"role", "assistant"}, {"content", content}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", null_or(finish_reason)}}})},
          {"usage", usage_json(usage)}};
}

json completion_chunk(const std::string& id, int64_t created, const std::string& model,
                      const std::string& text, const std::string& finish_reason) {
  return {{"id", id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0},
                                    {"text", text},
                                    {"logprobs", nullptr},
                                    {"finish_reason", null_or(finish_reason)}}})}};
}

json chat_chunk(const std::string& id, int64_t created, const std::string& model,
                const std::string& content, const std::string& finish_reason, bool first) {
  json delta = json::object();
  if (first) delta["role"] = "assistant";
  if (!content.empty() || first) delta["content"] = content;
  return {{"id", id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model},
          {"choices", json::array({{{"index", 0},
                                    {"delta", delta},
                                    {"logprobs", nullptr},
                                    {"finish_reason", null_or(finish_reason)}}})}};
}

json usage_chunk(const std::string& id, int64_t created, const std::string& model, bool chat,
                 const Usage& usage) {
  return {{"id", id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model},
          {"choices", json::array()},
          {"usage", usage_json(usage)}};
}

}  // namespace ferry::serve
