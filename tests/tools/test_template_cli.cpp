// ferry template: every fixture case of tests/data/chat-templates printed byte for byte through
// the CLI, a GGUF file's tokenizer.chat_template, --template, --var, and the errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "offload/detail/gguf.hpp"
#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

test::CommandResult ferry(const std::vector<std::string>& args) {
  return test::run_command(FERRY_BIN, args);
}

TEST(TemplateCli, PrintsEveryFixtureCaseExactly) {
  const fs::path dir = test::data_dir() / "chat-templates";
  const test::TempDir tmp;
  fs::create_directory(tmp / "model");
  fs::copy_file(dir / "qwen3.tokenizer_config.json", tmp / "model" / "tokenizer_config.json");
  const ojson cases = ojson::parse(test::read_file(dir / "qwen3.cases.json")).at("cases");
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const ojson& c = cases[k];
    SCOPED_TRACE("case " + std::to_string(k));
    test::write_file(tmp / "messages.json", c.at("messages").dump());
    std::vector<std::string> args = {"template", "-m", (tmp / "model").string(), "--messages",
                                     (tmp / "messages.json").string()};
    if (c.at("add_generation_prompt").get<bool>()) args.emplace_back("--add-generation-prompt");
    const auto r = ferry(args);
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_EQ(r.out, c.at("text").get<std::string>());
    EXPECT_EQ(r.err, "");
  }
}

TEST(TemplateCli, VarsToolsAndATemplateFile) {
  const test::TempDir tmp;
  fs::create_directory(tmp / "model");
  fs::copy_file(test::data_dir() / "chat-templates" / "qwen3.tokenizer_config.json",
                tmp / "model" / "tokenizer_config.json");
  test::write_file(tmp / "m.json", R"({"messages": [{"role": "user", "content": "Hi"}],
                                       "tools": [{"name": "f", "z": 1, "a": 2}]})");
  const auto thinking_off =
      ferry({"template", "-m", (tmp / "model").string(), "--messages", (tmp / "m.json").string(),
             "--add-generation-prompt", "--var", "enable_thinking=false"});
  ASSERT_EQ(thinking_off.rc, 0) << thinking_off.err;
  EXPECT_TRUE(thinking_off.out.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"))
      << thinking_off.out;
  EXPECT_NE(thinking_off.out.find("<tools>\n{\"name\": \"f\", \"z\": 1, \"a\": 2}\n</tools>"),
            std::string::npos)
      << thinking_off.out;
  test::write_file(tmp / "t.jinja", "{{ eos_token }}|{{ who }}|{{ messages | length }}\n");
  const auto custom = ferry({"template", "-m", (tmp / "model").string(), "--template",
                             (tmp / "t.jinja").string(), "--messages", (tmp / "m.json").string(),
                             "--var", "who=me"});
  ASSERT_EQ(custom.rc, 0) << custom.err;
  EXPECT_EQ(custom.out, "<|im_end|>|me|1");
}

TEST(TemplateCli, ReadsAGgufFilesTemplate) {
  const test::TempDir tmp;
  offload::detail::GgufWriter w;
  using offload::detail::GgufType;
  w.set("general.architecture", GgufType::string, "llama");
  w.set("tokenizer.ggml.tokens", GgufType::array, ojson::array({"<s>", "</s>", "a"}).get<nlohmann::json>(),
        GgufType::string);
  w.set("tokenizer.ggml.bos_token_id", GgufType::u32, 0);
  w.set("tokenizer.ggml.eos_token_id", GgufType::u32, 1);
  w.set("tokenizer.chat_template", GgufType::string,
        "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}"
        "{% endfor %}");
  test::write_file(tmp / "model.gguf", w.header());
  test::write_file(tmp / "m.json", R"([{"role": "user", "content": "Hi"}])");
  const auto r = ferry({"template", "-m", (tmp / "model.gguf").string(), "--messages",
                        (tmp / "m.json").string()});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out, "<s>[user] Hi</s>");
}

TEST(TemplateCli, Errors) {
  const test::TempDir tmp;
  fs::create_directory(tmp / "model");
  test::write_file(tmp / "model" / "tokenizer_config.json", R"({"eos_token": "</s>"})");
  test::write_file(tmp / "m.json", R"([{"role": "user", "content": "Hi"}])");
  const auto none = ferry({"template", "-m", (tmp / "model").string(), "--messages",
                           (tmp / "m.json").string()});
  EXPECT_EQ(none.rc, 1);
  EXPECT_NE(none.err.find("has no chat template"), std::string::npos) << none.err;
  EXPECT_NE(none.err.find("--template FILE"), std::string::npos) << none.err;

  test::write_file(tmp / "bad.jinja", "{% for m in messages %}\n{{ m | wordwrap }}{% endfor %}");
  const auto bad = ferry({"template", "--template", (tmp / "bad.jinja").string(), "--messages",
                          (tmp / "m.json").string()});
  EXPECT_EQ(bad.rc, 1);
  EXPECT_EQ(bad.err, "ferry: error: " + (tmp / "bad.jinja").string() +
                         ": chat template line 2: filter 'wordwrap' is not supported\n");

  test::write_file(tmp / "raise.jinja", "{{ raise_exception('Only user roles') }}");
  const auto raised = ferry({"template", "--template", (tmp / "raise.jinja").string(),
                             "--messages", (tmp / "m.json").string()});
  EXPECT_EQ(raised.rc, 1);
  EXPECT_NE(raised.err.find("Only user roles"), std::string::npos) << raised.err;

  test::write_file(tmp / "notjson.json", "[{");
  const auto notjson = ferry({"template", "--template", (tmp / "raise.jinja").string(),
                              "--messages", (tmp / "notjson.json").string()});
  EXPECT_EQ(notjson.rc, 1);
  EXPECT_NE(notjson.err.find("not JSON"), std::string::npos) << notjson.err;

  test::write_file(tmp / "obj.json", R"({"role": "user"})");
  const auto obj = ferry({"template", "--template", (tmp / "raise.jinja").string(),
                          "--messages", (tmp / "obj.json").string()});
  EXPECT_EQ(obj.rc, 1);
  EXPECT_NE(obj.err.find("must have \"messages\""), std::string::npos) << obj.err;
}

}  // namespace
}  // namespace ferry
