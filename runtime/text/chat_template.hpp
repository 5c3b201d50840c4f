// Chat templates: the Jinja template a Hugging Face model carries to turn a conversation
// (OpenAI-style messages) into the prompt text it was trained on. ferry renders the subset of
// Jinja2 that these templates use, as transformers configures it (trim_blocks, lstrip_blocks,
// loop controls, raise_exception, strftime_now, its tojson); docs/chat-templates.md lists it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"

namespace ferry::text {

namespace detail::jinja {
struct Program;
}  // namespace detail::jinja

// A template that does not parse, or that uses a construct ferry does not render: the message
// names the line and the construct ("chat template line 12: filter 'wordwrap' is not
// supported").
class ChatTemplateError : public FormatError {
 public:
  using FormatError::FormatError;
};

// Rendering refused these messages: the template's own raise_exception (raised() is true and
// template_message() is exactly its text, e.g. "Conversation roles must alternate
// user/assistant/user/assistant/..."), or an operation on values of the wrong type (a template
// that adds strings given content that is a list). A request's fault, not the model's.
class ChatTemplateRenderError : public InvalidArgument {
 public:
  ChatTemplateRenderError(const std::string& what, std::string template_message, bool raised)
      : InvalidArgument(what), template_message_(std::move(template_message)), raised_(raised) {}
  bool raised() const { return raised_; }
  const std::string& template_message() const { return template_message_; }

 private:
  std::string template_message_;
  bool raised_;
};

// A parsed template. Copies share the parsed form; render() may run on many threads at once.
class ChatTemplate {
 public:
  // Throws ChatTemplateError (syntax, unknown filter/test/statement, not UTF-8).
  static ChatTemplate parse(std::string source);

  // `context` is a JSON object of the template's variables (chat_context builds the usual
  // ones). ordered_json because dicts keep their key order: tojson of a tool's schema prints
  // its keys as given. Throws ChatTemplateRenderError, or ChatTemplateError for a construct met
  // only while rendering (a method ferry does not provide).
  std::string render(const nlohmann::ordered_json& context) const;

  const std::string& source() const;

 private:
  ChatTemplate() = default;
  struct Parsed;
  std::shared_ptr<const Parsed> parsed_;
};

// What apply_chat_template hands a template besides the messages.
struct ChatOptions {
  bool add_generation_prompt = false;
  nlohmann::ordered_json tools;      // a list of tool schemas, or null (none)
  nlohmann::ordered_json documents;  // a list of documents, or null (none)
  // Further variables (enable_thinking, ...); they may override the standard ones.
  nlohmann::ordered_json extra = nlohmann::ordered_json::object();
};

// The context transformers renders with: messages, add_generation_prompt, tools, documents,
// the special tokens (bos_token, eos_token, ... as special_tokens gives them), then `extra`.
// Throws InvalidArgument when messages is not a list of objects.
nlohmann::ordered_json chat_context(const nlohmann::ordered_json& messages,
                                    const nlohmann::ordered_json& special_tokens,
                                    const ChatOptions& options);

// A model's template as found in its files.
struct ModelChatTemplate {
  ChatTemplate chat_template;
  std::string origin;                     // the file it came from, for messages
  nlohmann::ordered_json special_tokens;  // {"bos_token": "<s>", "eos_token": "</s>", ...}
};

// From a Hugging Face model directory: chat_template.jinja (newer transformers; it overrides
// the config, as transformers does), else tokenizer_config.json's chat_template (a string, or a
// list of {name, template}), else chat_template.json's (processors). `name` picks a named
// template ("" → "default", or the only one); chat_templates/NAME.jinja also counts. The
// special tokens are tokenizer_config.json's (strings or {"content": ...}). Throws
// InvalidArgument when the directory has no template (saying how to give one) or lacks `name`,
// ChatTemplateError (prefixed with the file) when it does not parse.
ModelChatTemplate read_chat_template_dir(const std::filesystem::path& dir,
                                         const std::string& name = "");

// tokenizer_config.json's special tokens alone (for a template given with --template); an empty
// object when the directory has no tokenizer_config.json.
nlohmann::ordered_json read_special_tokens(const std::filesystem::path& dir);

// A template file given by hand (--template FILE); its errors are prefixed with the file.
ChatTemplate read_chat_template_file(const std::filesystem::path& file);

}  // namespace ferry::text
