// A model's chat template, whatever its format: a Hugging Face directory's files (see
// text::read_chat_template_dir) or a GGUF file's tokenizer.chat_template metadata.
#pragma once

#include <filesystem>
#include <string>

#include "runtime/text/chat_template.hpp"

namespace ferry::engine {

// The template and special tokens of the model at `model` (-m): a GGUF file, a directory with
// one, a pack converted from one (tokenizer.gguf), or a Hugging Face directory. `name` picks a
// named template ("" for the default; GGUF's tokenizer.chat_template.NAME). Throws
// InvalidArgument when the model has none, saying to give one with --template FILE.
text::ModelChatTemplate read_chat_template(const std::filesystem::path& model,
                                           const std::string& name = "");

}  // namespace ferry::engine
