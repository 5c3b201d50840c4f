#include "runtime/engine/chat_template_files.hpp"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/engine/model_files.hpp"

namespace ferry::engine {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

text::ModelChatTemplate gguf_chat_template(const fs::path& file, const std::string& name) {
  const json md = gguf_file_metadata(file);
  const std::string key = name.empty() || name == "default"
                              ? std::string("tokenizer.chat_template")
                              : "tokenizer.chat_template." + name;
  const auto it = md.find(key);
  if (it == md.end()) {
    if (key != "tokenizer.chat_template")
      throw InvalidArgument(fmt::format("{} has no chat template named '{}' (no metadata key {})",
                                        file.string(), name, key));
    throw InvalidArgument(fmt::format(
        "{} has no chat template (no tokenizer.chat_template metadata); give one with "
        "--template FILE",
        file.string()));
  }
  FERRY_FORMAT_EXPECT(it->is_string(), "{}: metadata key '{}' is not a string", file.string(),
                      key);
  // The special tokens a template sees are the vocabulary's BOS and EOS texts.
  nlohmann::ordered_json tokens = nlohmann::ordered_json::object();
  const auto vocab = md.find("tokenizer.ggml.tokens");
  auto token = [&](const char* id_key, const char* as) {
    const auto id = md.find(id_key);
    if (id == md.end() || !id->is_number_integer() || vocab == md.end() || !vocab->is_array())
      return;
    const int64_t i = id->get<int64_t>();
    if (i < 0 || i >= static_cast<int64_t>(vocab->size())) return;
    const json& t = (*vocab)[static_cast<std::size_t>(i)];
    if (t.is_string()) tokens[as] = t.get<std::string>();
  };
  token("tokenizer.ggml.bos_token_id", "bos_token");
  token("tokenizer.ggml.eos_token_id", "eos_token");
  token("tokenizer.ggml.unknown_token_id", "unk_token");
  token("tokenizer.ggml.padding_token_id", "pad_token");
  try {
    return text::ModelChatTemplate{text::ChatTemplate::parse(it->get<std::string>()),
                                   fmt::format("{} ({})", file.string(), key), tokens};
  } catch (const text::ChatTemplateError& e) {
    throw text::ChatTemplateError(fmt::format("{} ({}): {}", file.string(), key, e.what()));
  }
}

}  // namespace

text::ModelChatTemplate read_chat_template(const fs::path& model, const std::string& name) {
  if (const auto gguf = gguf_model_file(model)) return gguf_chat_template(*gguf, name);
  std::error_code ec;
  // A pack converted from a GGUF file keeps the file's tokenizer (and template) as
  // tokenizer.gguf.
  if (fs::is_directory(model, ec) && fs::is_regular_file(model / "tokenizer.gguf", ec) &&
      !fs::exists(model / "tokenizer_config.json", ec) &&
      !fs::exists(model / "chat_template.jinja", ec))
    return gguf_chat_template(model / "tokenizer.gguf", name);
  return text::read_chat_template_dir(model, name);
}

}  // namespace ferry::engine
