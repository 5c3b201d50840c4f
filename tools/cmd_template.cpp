// ferry template: a conversation rendered with the model's own chat template, exactly the text
// a chat request would be tokenized from.
#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "runtime/core/error.hpp"
#include "runtime/engine/chat_template_files.hpp"
#include "runtime/text/chat_template.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace {

using ojson = nlohmann::ordered_json;

// JSON with its keys in the file's order (tojson prints them so).
ojson read_ordered_json(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  FERRY_EXPECT(in.good(), "cannot open {} ({})", path, what);
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return ojson::parse(ss.str());
  } catch (const ojson::parse_error& e) {
    throw FormatError(fmt::format("{}: not JSON ({}): {}", path, what, e.what()));
  }
}

}  // namespace

Command add_template(CLI::App& app) {
  struct Options {
    std::string model, messages, template_file, template_name, tools;
    std::vector<std::string> vars;
    bool add_generation_prompt = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "template",
      "print a conversation rendered with the model's chat template (the exact text, no newline "
      "added)");
  cmd->add_option("-m,--model", o->model,
                  "model directory (tokenizer_config.json, chat_template.jinja) or GGUF file");
  cmd->add_option("--messages", o->messages,
                  "a JSON file: an array of {\"role\", \"content\"} messages, or an object with "
                  "\"messages\" (and \"tools\", \"documents\", \"chat_template_kwargs\")")
      ->required();
  cmd->add_flag("--add-generation-prompt", o->add_generation_prompt,
                "end with the start of an assistant turn, as a chat request does");
  cmd->add_option("--template", o->template_file,
                  "a Jinja template file to use instead of the model's (the special tokens still "
                  "come from -m when given)");
  cmd->add_option("--template-name", o->template_name,
                  "which of the model's named templates (e.g. tool_use); default: \"default\"");
  cmd->add_option("--tools", o->tools, "a JSON file with a list of tool schemas");
  cmd->add_option("--var", o->vars,
                  "KEY=JSON: a further template variable, e.g. enable_thinking=false (a value "
                  "that is not JSON is taken as a string)");
  return [o] {
    FERRY_EXPECT(!o->model.empty() || !o->template_file.empty(),
                 "give -m DIR (the model's template) or --template FILE");
    std::optional<text::ChatTemplate> tmpl;
    ojson special_tokens = ojson::object();
    if (!o->template_file.empty()) {
      tmpl = text::read_chat_template_file(o->template_file);
      if (!o->model.empty()) special_tokens = text::read_special_tokens(o->model);
    } else {
      text::ModelChatTemplate m = engine::read_chat_template(o->model, o->template_name);
      tmpl = std::move(m.chat_template);
      special_tokens = std::move(m.special_tokens);
    }
    const ojson input = read_ordered_json(o->messages, "--messages");
    text::ChatOptions options;
    options.add_generation_prompt = o->add_generation_prompt;
    ojson messages = input;
    if (input.is_object()) {
      FERRY_EXPECT(input.contains("messages"),
                   "{}: an object must have \"messages\" (or give a JSON array of messages)",
                   o->messages);
      messages = input["messages"];
      if (input.contains("tools")) options.tools = input["tools"];
      if (input.contains("documents")) options.documents = input["documents"];
      if (input.contains("chat_template_kwargs")) {
        FERRY_EXPECT(input["chat_template_kwargs"].is_object(),
                     "{}: chat_template_kwargs must be an object", o->messages);
        options.extra = input["chat_template_kwargs"];
      }
    }
    if (!o->tools.empty()) options.tools = read_ordered_json(o->tools, "--tools");
    for (const auto& v : o->vars) {
      const auto eq = v.find('=');
      FERRY_EXPECT(eq != std::string::npos && eq > 0, "--var {}: expected KEY=VALUE", v);
      const std::string value = v.substr(eq + 1);
      ojson parsed;
      try {
        parsed = ojson::parse(value);
      } catch (const ojson::parse_error&) {
        parsed = value;
      }
      options.extra[v.substr(0, eq)] = std::move(parsed);
    }
    fmt::print("{}", tmpl->render(text::chat_context(messages, special_tokens, options)));
    return 0;
  };
}

}  // namespace ferry::tools
