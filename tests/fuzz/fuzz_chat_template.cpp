// Fuzzes chat templates: the input is a template's source, optionally followed by a NUL and a
// JSON array of messages; it is parsed, then rendered with those messages (or a fixed
// conversation with a system prompt, a tool call and tools). Refusals are ferry::Error; anything
// else escaping, a crash, a leak or a hang is a bug.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "runtime/core/error.hpp"
#include "runtime/text/chat_template.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using ojson = nlohmann::ordered_json;
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = input.find('\0');
  const std::string_view source = input.substr(0, nul);
  static const ojson kMessages = ojson::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi <b>\u00e9</b>"},
    {"role": "assistant", "content": "<think>x</think>ok", "tool_calls": [
      {"type": "function", "function": {"name": "f", "arguments": {"a": 1, "b": [true, null, 2.5]}}}]},
    {"role": "tool", "content": "42"},
    {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image"}]}])");
  ojson messages = kMessages;
  if (nul != std::string_view::npos) {
    messages = ojson::parse(input.substr(nul + 1), nullptr, false);
    if (messages.is_discarded() || !messages.is_array()) return 0;
  }
  try {
    const auto t = ferry::text::ChatTemplate::parse(std::string(source));
    ferry::text::ChatOptions options;
    options.add_generation_prompt = true;
    options.tools = ojson::parse(R"([{"type": "function", "function": {"name": "f",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}])");
    options.extra["enable_thinking"] = false;
    const ojson special = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
    (void)t.render(ferry::text::chat_context(messages, special, options));
  } catch (const ferry::Error&) {
  }
  return 0;
}
