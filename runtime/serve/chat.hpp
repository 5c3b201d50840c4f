// The chat endpoint's one dependency on chat templates: the model's own template, read once, and
// a conversation rendered with it as transformers' apply_chat_template(add_generation_prompt=True)
// renders it.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace ferry::serve {

class ChatRenderer {
 public:
  // The model's template (a directory's tokenizer_config.json or chat_template.jinja, a GGUF
  // file's tokenizer.chat_template: engine::read_chat_template). A model
  // without one still serves completions: available() is false and unavailable_reason() says
  // why, for the chat endpoint's 400. A template that does not parse throws (ChatTemplateError
  // naming the file and the construct): the operator's problem, told at start-up.
  // template_file (ferry serve --template FILE), when not empty, replaces the model's own; the
  // special tokens still come from the model directory's tokenizer_config.json when it has one.
  static ChatRenderer for_model(const std::filesystem::path& model,
                                const std::filesystem::path& template_file = {});

  bool available() const { return impl_ != nullptr; }
  const std::string& unavailable_reason() const { return reason_; }
  // The prompt text for OpenAI-style messages, ending with the assistant's turn opened. Throws
  // ApiError (400, param messages) when the template refuses them (its raise_exception, or
  // values of the wrong type).
  std::string render(const nlohmann::ordered_json& messages) const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
  std::string reason_;
};

}  // namespace ferry::serve
