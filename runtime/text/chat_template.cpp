#include "runtime/text/chat_template.hpp"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

#include "runtime/core/json_parse.hpp"
#include "runtime/text/detail/jinja.hpp"

namespace ferry::text {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

struct ChatTemplate::Parsed {
  std::string source;
  detail::jinja::Program program;
};

ChatTemplate ChatTemplate::parse(std::string source) {
  auto parsed = std::make_shared<Parsed>();
  parsed->program = detail::jinja::parse(source);
  parsed->source = std::move(source);
  ChatTemplate t;
  t.parsed_ = std::move(parsed);
  return t;
}

std::string ChatTemplate::render(const ojson& context) const {
  return detail::jinja::render(parsed_->program, context);
}

const std::string& ChatTemplate::source() const { return parsed_->source; }

ojson chat_context(const ojson& messages, const ojson& special_tokens,
                   const ChatOptions& options) {
  FERRY_EXPECT(messages.is_array(),
               "messages must be a JSON array of {{\"role\": ..., \"content\": ...}} objects, not "
               "{}",
               messages.type_name());
  for (std::size_t k = 0; k < messages.size(); ++k)
    FERRY_EXPECT(messages[k].is_object(),
                 "messages[{}] is {}, not a {{\"role\": ..., \"content\": ...}} object", k,
                 messages[k].type_name());
  FERRY_EXPECT(options.extra.is_object() || options.extra.is_null(),
               "the extra template variables must be a JSON object, not {}",
               options.extra.type_name());
  ojson ctx = ojson::object();
  ctx["messages"] = messages;
  // transformers passes tools and documents as None when the request has none, and templates
  // test them with `is not none` as often as with `is defined`.
  ctx["tools"] = options.tools;
  ctx["documents"] = options.documents;
  ctx["add_generation_prompt"] = options.add_generation_prompt;
  if (special_tokens.is_object())
    for (const auto& [k, v] : special_tokens.items()) ctx[k] = v;
  if (options.extra.is_object())
    for (const auto& [k, v] : options.extra.items()) ctx[k] = v;
  return ctx;
}

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  FERRY_FORMAT_EXPECT(in.good(), "cannot open {}", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  FERRY_FORMAT_EXPECT(!in.bad(), "cannot read {}", path.string());
  return ss.str();
}

ChatTemplate parse_from(std::string source, const std::string& origin) {
  try {
    return ChatTemplate::parse(std::move(source));
  } catch (const ChatTemplateError& e) {
    throw ChatTemplateError(fmt::format("{}: {}", origin, e.what()));
  }
}

// A special token's text: a string, {"content": ...} (an AddedToken), or null (unset).
std::optional<std::string> token_text(const nlohmann::json& v, const std::string& key,
                                      const std::string& source) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  FERRY_FORMAT_EXPECT(v.is_object() && v.contains("content") && v["content"].is_string(),
                      "{}: {} must be a string or {{\"content\": ...}}, not {}", source, key,
                      v.dump());
  return v["content"].get<std::string>();
}

ojson special_tokens_of(const nlohmann::json& config, const std::string& source) {
  ojson tokens = ojson::object();
  if (!config.is_object()) return tokens;
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                          "cls_token", "mask_token"}) {
    const auto it = config.find(key);
    if (it == config.end()) continue;
    if (auto text = token_text(*it, key, source)) tokens[key] = *text;
  }
  if (const auto it = config.find("additional_special_tokens");
      it != config.end() && it->is_array()) {
    ojson list = ojson::array();
    for (const auto& v : *it)
      if (auto text = token_text(v, "additional_special_tokens", source)) list.push_back(*text);
    tokens["additional_special_tokens"] = std::move(list);
  }
  return tokens;
}

nlohmann::json read_config(const fs::path& file) {
  return read_json_file(file, "fix the file or give a template with --template FILE");
}

// tokenizer_config.json's (or chat_template.json's) chat_template: a string, or a list of
// {name, template}.
std::optional<std::string> pick_template(const nlohmann::json& value, const std::string& name,
                                         const std::string& source) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) {
    FERRY_EXPECT(name.empty() || name == "default",
                 "{} has one chat template, not one named '{}'; leave out --template-name",
                 source, name);
    return value.get<std::string>();
  }
  FERRY_FORMAT_EXPECT(value.is_array(),
                      "{}: chat_template must be a string or a list of {{\"name\": ..., "
                      "\"template\": ...}}, not {}",
                      source, value.type_name());
  std::vector<std::string> names;
  std::optional<std::string> only;
  for (const auto& entry : value) {
    FERRY_FORMAT_EXPECT(entry.is_object() && entry.contains("name") && entry["name"].is_string() &&
                            entry.contains("template") && entry["template"].is_string(),
                        "{}: each chat_template entry must be {{\"name\": ..., \"template\": "
                        "...}}, not {}",
                        source, entry.dump().substr(0, 200));
    const std::string n = entry["name"].get<std::string>();
    if (n == (name.empty() ? std::string("default") : name)) return entry["template"].get<std::string>();
    names.push_back(n);
    only = entry["template"].get<std::string>();
  }
  if (name.empty() && names.size() == 1) return only;
  std::string list;
  for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
  if (name.empty())
    throw InvalidArgument(fmt::format("{} has chat templates named {} and none named 'default'; "
                                      "pick one with --template-name",
                                      source, list));
  throw InvalidArgument(fmt::format("{} has no chat template named '{}' (it has {})", source,
                                    name, list));
}

}  // namespace

ojson read_special_tokens(const fs::path& dir) {
  std::error_code ec;
  const fs::path config = dir / "tokenizer_config.json";
  if (!fs::is_directory(dir, ec) || !fs::exists(config, ec)) return ojson::object();
  return special_tokens_of(read_config(config), config.string());
}

ModelChatTemplate read_chat_template_dir(const fs::path& dir, const std::string& name) {
  std::error_code ec;
  FERRY_EXPECT(fs::is_directory(dir, ec), "{} is not a model directory", dir.string());
  const fs::path config_path = dir / "tokenizer_config.json";
  nlohmann::json config;
  if (fs::exists(config_path, ec)) config = read_config(config_path);
  ojson tokens = special_tokens_of(config, config_path.string());
  auto make = [&](std::string source, const fs::path& origin) {
    return ModelChatTemplate{parse_from(std::move(source), origin.string()), origin.string(),
                             tokens};
  };
  // transformers: chat_template.jinja replaces any template in the config; named templates
  // live in chat_templates/NAME.jinja.
  if (!name.empty() && name != "default") {
    const fs::path named = dir / "chat_templates" / (name + ".jinja");
    if (fs::is_regular_file(named, ec)) return make(read_text(named), named);
  }
  const fs::path jinja = dir / "chat_template.jinja";
  if ((name.empty() || name == "default") && fs::is_regular_file(jinja, ec))
    return make(read_text(jinja), jinja);
  if (config.is_object() && config.contains("chat_template")) {
    if (auto source = pick_template(config["chat_template"], name, config_path.string()))
      return make(std::move(*source), config_path);
  }
  const fs::path processor = dir / "chat_template.json";
  if (fs::is_regular_file(processor, ec)) {
    const nlohmann::json p = read_config(processor);
    if (p.is_object() && p.contains("chat_template")) {
      if (auto source = pick_template(p["chat_template"], name, processor.string()))
        return make(std::move(*source), processor);
    }
  }
  if (!name.empty() && name != "default")
    throw InvalidArgument(fmt::format("{} has no chat template named '{}'", dir.string(), name));
  throw InvalidArgument(fmt::format(
      "{} has no chat template (none in tokenizer_config.json, and no chat_template.jinja or "
      "chat_template.json); give one with --template FILE",
      dir.string()));
}

ChatTemplate read_chat_template_file(const fs::path& file) {
  return parse_from(read_text(file), file.string());
}

}  // namespace ferry::text
