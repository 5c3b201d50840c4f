#include "runtime/serve/chat.hpp"

#include <fmt/format.h>

#include "runtime/engine/chat_template_files.hpp"
#include "runtime/serve/api.hpp"
#include "runtime/text/chat_template.hpp"

namespace ferry::serve {

struct ChatRenderer::Impl {
  text::ModelChatTemplate model_template;
};

ChatRenderer ChatRenderer::for_model(const std::filesystem::path& model,
                                    const std::filesystem::path& template_file) {
  ChatRenderer r;
  if (!template_file.empty()) {
    text::ModelChatTemplate t{text::read_chat_template_file(template_file), template_file.string(),
                              nlohmann::ordered_json::object()};
    if (std::filesystem::is_directory(model)) t.special_tokens = text::read_special_tokens(model);
    r.impl_ = std::make_shared<const Impl>(Impl{std::move(t)});
    return r;
  }
  try {
    // A Hugging Face directory's files, or a GGUF file's tokenizer.chat_template.
    r.impl_ = std::make_shared<const Impl>(Impl{engine::read_chat_template(model)});
  } catch (const text::ChatTemplateError&) {
    throw;  // a template that does not parse: the operator's to fix
  } catch (const InvalidArgument& e) {
    r.reason_ = e.what();  // the model has no template
  }
  return r;
}

std::string ChatRenderer::render(const nlohmann::ordered_json& messages) const {
  if (!impl_)
    throw ApiError(400, fmt::format("this model has no chat template: {}", reason_), "messages",
                   "no_chat_template");
  text::ChatOptions options;
  options.add_generation_prompt = true;
  try {
    const auto context =
        text::chat_context(messages, impl_->model_template.special_tokens, options);
    return impl_->model_template.chat_template.render(context);
  } catch (const text::ChatTemplateRenderError& e) {
    throw ApiError(400,
                   e.raised() ? fmt::format("the chat template refused the messages: {}",
                                            e.template_message())
                              : fmt::format("the chat template could not render the messages: {}",
                                            e.what()),
                   "messages", "invalid_messages");
  } catch (const text::ChatTemplateError& e) {
    throw ApiError(400, fmt::format("the chat template could not render the messages: {}", e.what()),
                   "messages", "unsupported_template");
  } catch (const InvalidArgument& e) {
    throw ApiError(400, e.what(), "messages", "invalid_messages");
  }
}

}  // namespace ferry::serve
