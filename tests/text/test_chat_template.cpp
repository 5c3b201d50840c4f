// Chat templates: every case of tests/data/chat-templates/*.cases.json rendered byte for byte
// (Qwen3's real template, and any other NAME.tokenizer_config.json + NAME.cases.json placed
// there), templates in the styles of Llama 3, Mistral, ChatML, Gemma and tool-calling models,
// the Jinja features they use one by one, and the errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/text/chat_template.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::text {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

std::string render(const std::string& source, const ojson& context = ojson::object()) {
  return ChatTemplate::parse(source).render(context);
}

ojson msgs(std::initializer_list<std::pair<const char*, const char*>> list) {
  ojson m = ojson::array();
  for (const auto& [role, content] : list) m.push_back({{"role", role}, {"content", content}});
  return m;
}

// The error's message, or "" when none was thrown.
template <class E, class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

// ---- fixtures ----

TEST(ChatTemplateFixtures, EveryCaseRendersByteForByte) {
  const fs::path dir = test::data_dir() / "chat-templates";
  int files = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string file = entry.path().filename().string();
    if (!file.ends_with(".cases.json")) continue;
    const std::string name = file.substr(0, file.size() - std::string(".cases.json").size());
    SCOPED_TRACE(name);
    ++files;
    // The model's files as a model directory holds them.
    const test::TempDir model;
    if (fs::exists(dir / (name + ".tokenizer_config.json")))
      fs::copy_file(dir / (name + ".tokenizer_config.json"), model / "tokenizer_config.json");
    if (fs::exists(dir / (name + ".chat_template.jinja")))
      fs::copy_file(dir / (name + ".chat_template.jinja"), model / "chat_template.jinja");
    const ModelChatTemplate t = read_chat_template_dir(model.path());
    const ojson cases = ojson::parse(test::read_file(entry.path())).at("cases");
    ASSERT_FALSE(cases.empty());
    for (std::size_t k = 0; k < cases.size(); ++k) {
      const ojson& c = cases[k];
      SCOPED_TRACE("case " + std::to_string(k) + ": " + c.at("messages").dump());
      ChatOptions options;
      options.add_generation_prompt = c.value("add_generation_prompt", false);
      for (const auto& [key, value] : c.items()) {
        if (key == "messages" || key == "add_generation_prompt" || key == "text" || key == "error")
          continue;
        if (key == "tools") options.tools = value;
        else if (key == "documents") options.documents = value;
        else options.extra[key] = value;
      }
      const ojson context = chat_context(c.at("messages"), t.special_tokens, options);
      if (c.contains("error") && !c["error"].is_null()) {
        try {
          const std::string text = t.chat_template.render(context);
          ADD_FAILURE() << "rendered instead of failing with " << c["error"] << ":\n" << text;
        } catch (const ChatTemplateRenderError& e) {
          if (e.raised()) {
            EXPECT_NE(c["error"].get<std::string>().find(e.template_message()), std::string::npos)
                << e.what();
          }
        }
        continue;
      }
      EXPECT_EQ(t.chat_template.render(context), c.at("text").get<std::string>());
    }
  }
  EXPECT_GE(files, 1);
}

TEST(ChatTemplateFixtures, Qwen3SpecialTokensComeFromTheConfig) {
  const test::TempDir model;
  fs::copy_file(test::data_dir() / "chat-templates" / "qwen3.tokenizer_config.json",
                model / "tokenizer_config.json");
  const ModelChatTemplate t = read_chat_template_dir(model.path());
  EXPECT_EQ(t.special_tokens.value("eos_token", ""), "<|im_end|>");
  EXPECT_FALSE(t.special_tokens.contains("bos_token"));  // null in Qwen3's config
  EXPECT_EQ(t.origin, (model / "tokenizer_config.json").string());
  // enable_thinking=false, as Qwen3's model card passes it.
  ChatOptions o;
  o.add_generation_prompt = true;
  o.extra["enable_thinking"] = false;
  EXPECT_EQ(t.chat_template.render(chat_context(msgs({{"user", "Hi"}}), t.special_tokens, o)),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
  // Tools: each schema printed with tojson, keys in the order given.
  o.extra = ojson::object();
  o.tools = ojson::parse(
      R"([{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}])");
  const std::string text =
      t.chat_template.render(chat_context(msgs({{"user", "Weather?"}}), t.special_tokens, o));
  EXPECT_NE(text.find("<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", "
                      "\"parameters\": {\"type\": \"object\", \"properties\": {\"city\": "
                      "{\"type\": \"string\"}}, \"required\": [\"city\"]}}}\n</tools>"),
            std::string::npos)
      << text;
}

TEST(ChatTemplateFixtures, Qwen3ToolCallsAndThinking) {
  const test::TempDir model;
  fs::copy_file(test::data_dir() / "chat-templates" / "qwen3.tokenizer_config.json",
                model / "tokenizer_config.json");
  const ModelChatTemplate t = read_chat_template_dir(model.path());
  const ojson messages = ojson::parse(R"([
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "<think>\nNeed a tool.\n</think>\n\nChecking.",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}}]},
    {"role": "tool", "content": "18C"},
    {"role": "tool", "content": "sunny"}
  ])");
  ChatOptions o;
  o.add_generation_prompt = true;
  EXPECT_EQ(t.chat_template.render(chat_context(messages, t.special_tokens, o)),
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n<think>\nNeed a tool.\n</think>\n\nChecking.\n<tool_call>\n"
            "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"C\"}}\n"
            "</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\nsunny\n"
            "</tool_response><|im_end|>\n<|im_start|>assistant\n");
}

// ---- model styles ----

constexpr const char* kLlama3 =
    "{{- bos_token }}\n"
    "{%- for message in messages %}\n"
    "    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n"
    "{%- endif %}\n";

TEST(ChatTemplateStyles, Llama3) {
  ojson ctx = chat_context(msgs({{"system", "Be brief."}, {"user", "  Hi  "}}),
                           {{"bos_token", "<|begin_of_text|>"}}, {true, nullptr, nullptr});
  EXPECT_EQ(render(kLlama3, ctx),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

constexpr const char* kMistral =
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}";

TEST(ChatTemplateStyles, MistralAndItsRaiseException) {
  const ojson tokens = {{"bos_token", "<s>"}, {"eos_token", "</s>"}};
  EXPECT_EQ(render(kMistral, chat_context(msgs({{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}}),
                                          tokens, {})),
            "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]");
  try {
    render(kMistral, chat_context(msgs({{"user", "a"}, {"user", "b"}}), tokens, {}));
    FAIL() << "no error";
  } catch (const ChatTemplateRenderError& e) {
    EXPECT_TRUE(e.raised());
    EXPECT_EQ(e.template_message(),
              "Conversation roles must alternate user/assistant/user/assistant/...");
    EXPECT_NE(std::string(e.what()).find("line 1"), std::string::npos) << e.what();
  }
}

constexpr const char* kChatML =
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n";

TEST(ChatTemplateStyles, ChatMLWithDefaultSystemPrompt) {
  EXPECT_EQ(render(kChatML, chat_context(msgs({{"user", "Hi"}}), {}, {true, nullptr, nullptr})),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
            "assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
}

constexpr const char* kGemma =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}";

TEST(ChatTemplateStyles, GemmaRenamesRolesAndRefusesSystem) {
  const ojson tokens = {{"bos_token", "<bos>"}};
  EXPECT_EQ(render(kGemma, chat_context(msgs({{"user", "Hi "}, {"assistant", "Hey"}}), tokens,
                                        {true, nullptr, nullptr})),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\nHey<end_of_turn>\n"
            "<start_of_turn>model\n");
  const std::string err = error_of<ChatTemplateRenderError>(
      [&] { render(kGemma, chat_context(msgs({{"system", "x"}}), tokens, {})); });
  EXPECT_NE(err.find("System role not supported"), std::string::npos) << err;
}

TEST(ChatTemplateStyles, ToolsAsJsonWithIndentAndNamespaceCounters) {
  const char* src =
      "{%- set ns = namespace(count=0, last='') %}"
      "{%- for m in messages %}{% set ns.count = ns.count + 1 %}{% set ns.last = m.role %}{% endfor %}"
      "{{ ns.count }} {{ ns.last }}\n"
      "{{- tools | tojson(indent=2) }}";
  ChatOptions o;
  o.tools = ojson::parse(R"([{"name": "f", "args": {"b": 1, "a": [true, null, 1.5]}, "empty": {}}])");
  EXPECT_EQ(render(src, chat_context(msgs({{"user", "a"}, {"assistant", "b"}}), {}, o)),
            "2 assistant[\n  {\n    \"name\": \"f\",\n    \"args\": {\n      \"b\": 1,\n"
            "      \"a\": [\n        true,\n        null,\n        1.5\n      ]\n    },\n"
            "    \"empty\": {}\n  }\n]");
}

// ---- features ----

TEST(ChatTemplateFeatures, LoopVariables) {
  EXPECT_EQ(render("{% for x in 'abc' %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}"
                   "{{ loop.revindex0 }}{{ loop.length }}{% if loop.first %}F{% endif %}"
                   "{% if loop.last %}L{% endif %}{{ loop.previtem }}{{ loop.nextitem }}|"
                   "{% endfor %}"),
            "10323Fb|21213ac|32103Lb|");
  EXPECT_EQ(render("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for x in [1,2,3,4] if x is even %}{{ x }}/{{ loop.length }} {% endfor %}"),
            "2/2 4/2 ");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=2;");
  EXPECT_EQ(render("{% for x in [3,1,2] | sort %}{{ x }}{% endfor %}"), "123");
  EXPECT_EQ(render("{% for x in range(5) %}{% if x == 1 %}{% continue %}{% endif %}"
                   "{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  EXPECT_EQ(render("{% for x in range(3) %}{{ loop.cycle('a', 'b') }}{% endfor %}"), "aba");
  // A loop's variables stay inside it; a namespace carries values out.
  EXPECT_EQ(render("{% set x = 1 %}{% for i in [5] %}{% set x = i %}{% endfor %}{{ x }}"), "1");
}

TEST(ChatTemplateFeatures, WhitespaceControl) {
  // trim_blocks eats the newline after a block; lstrip_blocks the indentation before it.
  EXPECT_EQ(render("<a>\n  {% if true %}\n    x\n  {% endif %}\n</a>\n"), "<a>\n    x\n</a>");
  EXPECT_EQ(render("a  {%- if true -%}  b  {%- endif -%}  c"), "abc");
  EXPECT_EQ(render("a  {{- 'b' -}}  \n c"), "abc");
  EXPECT_EQ(render("a {{ 'b' }}\nc"), "a b\nc");  // no trim after an expression
  EXPECT_EQ(render("a\n  {# note #}\nb"), "a\nb");
  EXPECT_EQ(render("a {#- note -#} b"), "ab");
  EXPECT_EQ(render("x {% if true %}y{% endif %} z"), "x y z");
  EXPECT_EQ(render("  {%+ if true %}y{% endif %}"), "  y");
  EXPECT_EQ(render("{% raw %}{{ not rendered }}{% endraw %}"), "{{ not rendered }}");
  EXPECT_EQ(render("{% generation %}kept{% endgeneration %}"), "kept");
}

TEST(ChatTemplateFeatures, ExpressionsAndLiterals) {
  EXPECT_EQ(render("{{ 'a\\tb\\n' ~ \"q\\\"\" ~ '\\u00e9' }}"), "a\tb\nq\"é");
  EXPECT_EQ(render("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }}"),
            "3 -4 1 2 3.5 1024");
  EXPECT_EQ(render("{{ 1 + 1.5 }} {{ 4 / 2 }} {{ 0.1 + 0.2 }} {{ 1e20 }} {{ 1e-5 }}"),
            "2.5 2.0 0.30000000000000004 1e+20 1e-05");
  EXPECT_EQ(render("{{ true }} {{ False }} {{ none }} {{ [1, 'a', none] }} {{ {'k': (1,)} }}"),
            "True False None [1, 'a', None] {'k': (1,)}");
  EXPECT_EQ(render("{{ 'yes' if 1 in [1, 2] else 'no' }} {{ 'x' not in 'abc' }} "
                   "{{ 'k' in {'k': 1} }} {{ not 0 and 3 or 4 }}"),
            "yes True True 3");
  EXPECT_EQ(render("{{ [1,2,3][1:] }} {{ 'hello'[::-1] }} {{ [1,2,3][-1] }} {{ 'héllo'[1] }}"),
            "[2, 3] olleh 3 é");
  EXPECT_EQ(render("{{ x.y.z }}|{{ x is defined }}|{{ x is undefined }}|{{ none is none }}"),
            "|False|True|True");
  EXPECT_EQ(render("{{ 1 == 1.0 }} {{ [1, 2] == [1, 2] }} {{ 'a' < 'b' }} {{ 3 is odd }} "
                   "{{ 9 is divisibleby 3 }}"),
            "True True True True True");
  EXPECT_EQ(render("{{ m.content is string }} {{ m is mapping }} {{ m.n is number }} "
                   "{{ m.l is sequence }} {{ m.l is iterable }} {{ m.b is boolean }} {{ m.b is true }}",
                   {{"m", {{"content", "c"}, {"n", 1}, {"l", {1}}, {"b", true}}}}),
            "True True True True True True True");
}

TEST(ChatTemplateFeatures, MethodsAndFilters) {
  EXPECT_EQ(render("{{ '  a b  '.strip() }}|{{ 'xxaxx'.strip('x') }}|{{ '\\n\\na'.lstrip('\\n') }}|"
                   "{{ 'a  '.rstrip() }}|{{ 'a,b,,c'.split(',') }}|{{ ' a  b '.split() }}|"
                   "{{ 'a b c'.split(' ', 1) }}|{{ 'a/b/c'.rsplit('/', 1)[0] }}"),
            "a b|a|a|a|['a', 'b', '', 'c']|['a', 'b']|['a', 'b c']|a/b");
  EXPECT_EQ(render("{{ 'Hello'.startswith('He') }} {{ 'Hello'.endswith(('x', 'lo')) }} "
                   "{{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }} {{ 'ab'.upper() }} "
                   "{{ 'aXa'.replace('a', 'b') }} {{ 'abcb'.find('b') }} {{ 'abcb'.count('b') }}"),
            "True True Hello World Hello AB bXb 1 2");
  EXPECT_EQ(render("{{ d.get('a') }} {{ d.get('z', 9) }} {{ d.get('z') }} {{ d.keys() | list }} "
                   "{{ d.values() | list }} {{ d | length }}",
                   {{"d", {{"a", 1}, {"b", 2}}}}),
            "1 9 None ['a', 'b'] [1, 2] 2");
  EXPECT_EQ(render("{{ ' x ' | trim }}|{{ [1,2] | length }}|{{ 'abc' | count }}|{{ [1,2] | first }}|"
                   "{{ [1,2] | last }}|{{ ['a','b'] | join(', ') }}|{{ u | default('d') }}|"
                   "{{ '' | default('e', true) }}|{{ 'aB' | lower }}{{ 'aB' | upper }}|"
                   "{{ 'hello there' | capitalize }}|{{ 'hello-there you' | title }}|"
                   "{{ 'aa' | replace('a', 'b', 1) }}|{{ 12 | string }}|{{ '42' | int + 1 }}|"
                   "{{ '2.5' | float }}|{{ 'x' | int }}|{{ {'a': 1} | items | list }}"),
            "x|2|3|1|2|a, b|d|e|abAB|Hello there|Hello-There You|ba|12|43|2.5|0|[('a', 1)]");
  EXPECT_EQ(render("{{ m | selectattr('role', 'equalto', 'user') | map(attribute='content') | "
                   "join(',') }}|{{ m | rejectattr('role', 'eq', 'user') | list | length }}|"
                   "{{ m | map(attribute='role') | unique | list }}|{{ [1, 0, 2] | select | list }}",
                   {{"m", msgs({{"user", "a"}, {"assistant", "b"}, {"user", "c"}})}}),
            "a,c|1|['user', 'assistant']|[1, 2]");
  EXPECT_EQ(render("{{ 'é\\n\"<' | tojson }} {{ {'a': [1, 2.0]} | tojson }} "
                   "{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }} {{ none | tojson }}"),
            "\"é\\n\\\"<\" {\"a\": [1, 2.0]} {\"a\": 2, \"b\": 1} null");
  EXPECT_EQ(render("{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'x' | indent(2, true) }}"),
            "a\n  b\n\n  c|  x");
  EXPECT_EQ(render("{{ '<a & \"b\">' | e }} {{ 3.7 | round }} {{ 3.14159 | round(2) }} "
                   "{{ -3 | abs }} {{ [3, 1] | max }} {{ [1, 2, 3] | sum }}"),
            "&lt;a &amp; &#34;b&#34;&gt; 4.0 3.14 3 3 6");
}

TEST(ChatTemplateFeatures, StripWithWhitespaceCharactersFollowsTheReference) {
  // @huggingface/jinja strips all whitespace whatever characters are named; for whitespace sets
  // (Qwen3's strip('\n')) ferry does the same, for others it strips what Python would.
  EXPECT_EQ(render("[{{ '\n  a \n'.strip('\n') }}][{{ '\n\n  b'.lstrip('\n') }}]"
                   "[{{ 'c \t\n'.rstrip('\n') }}][{{ '--d-'.strip('-') }}][{{ 'xy e yx'.strip('xy') }}]"),
            "[a][b][c][d][ e ]");
}

TEST(ChatTemplateFeatures, SetMacroCallAndFilterBlocks) {
  EXPECT_EQ(render("{% set a, b = 1, 2 %}{{ a + b }}"), "3");
  EXPECT_EQ(render("{% set x %}  inner  {% endset %}[{{ x | trim }}]"), "[inner]");
  EXPECT_EQ(render("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}"
                   "{{ greet('Ann') }} {{ greet('Bo', punct='?') }}"),
            "Hi Ann! Hi Bo?");
  EXPECT_EQ(render("{% macro wrap() %}[{{ caller() }}]{% endmacro %}"
                   "{% for i in [1] %}{% call wrap() %}in{{ i }}{% endcall %}{% endfor %}"),
            "[in1]");
  EXPECT_EQ(render("{% filter upper %}abc{% endfilter %}"), "ABC");
  EXPECT_EQ(render("{% set d = dict(a=1) %}{{ d.a }}{% set ns = namespace(d) %}{{ ns.a }}"), "11");
}

TEST(ChatTemplateFeatures, StrftimeNowAndExtraVariables) {
  const std::string year = render("{{ strftime_now('%Y') }}");
  ASSERT_EQ(year.size(), 4u);
  EXPECT_GE(std::stoi(year), 2024);
  ChatOptions o;
  o.extra["enable_thinking"] = true;
  o.extra["custom"] = ojson::parse(R"({"k": [1]})");
  EXPECT_EQ(render("{{ enable_thinking }} {{ custom.k[0] }} {{ tools is none }} {{ documents }}",
                   chat_context(ojson::array(), {}, o)),
            "True 1 True None");
}

TEST(ChatTemplateFeatures, ContentAsAListOfPartsIsKept) {
  const ojson messages = ojson::parse(
      R"([{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image"}]}])");
  EXPECT_EQ(render("{% for m in messages %}{% if m.content is string %}{{ m.content }}{% else %}"
                   "{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% else %}<{{ p.type }}>"
                   "{% endif %}{% endfor %}{% endif %}{% endfor %}",
                   chat_context(messages, {}, {})),
            "Hi<image>");
}

TEST(ChatTemplateFeatures, ConcurrentRendersOfOneTemplate) {
  const ChatTemplate t = ChatTemplate::parse(kChatML);
  std::vector<std::thread> threads;
  std::vector<std::string> out(8);
  for (std::size_t k = 0; k < out.size(); ++k)
    threads.emplace_back([&, k] {
      for (int r = 0; r < 50; ++r)
        out[k] = t.render(chat_context(msgs({{"user", "x"}}), {}, {true, nullptr, nullptr}));
    });
  for (auto& th : threads) th.join();
  for (const auto& s : out) EXPECT_EQ(s, out[0]);
}

// ---- errors ----

TEST(ChatTemplateErrors, UnsupportedConstructsNameThemselvesAndTheirLine) {
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("a\n\n{{ x | wordwrap }}"); }),
            "chat template line 3: filter 'wordwrap' is not supported");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("{% if x is prime %}{% endif %}"); }),
            "chat template line 1: test 'prime' is not supported");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("\n{% include 'x' %}"); }),
            "chat template line 2: statement 'include' is not supported");
  EXPECT_EQ(error_of<ChatTemplateError>([] { render("{{ 'a'.zfill(3) }}"); }),
            "chat template line 1: method 'zfill' of a string is not supported");
  EXPECT_NE(error_of<ChatTemplateError>([] { render("{{ lipsum() }}"); })
                .find("function 'lipsum' is not supported"),
            std::string::npos);
  EXPECT_NE(error_of<ChatTemplateError>([] { render("{% set l = [] %}{{ l.append(1) }}"); })
                .find("method 'append' of a list is not supported"),
            std::string::npos);
}

TEST(ChatTemplateErrors, SyntaxErrorsSayWhatWasExpected) {
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("x\n{% for m in messages %}\n{{ m }}"); }),
            "chat template line 2: the 'for' block opened here is never closed (expected "
            "'{% endfor %}')");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("{% endif %}"); }),
            "chat template line 1: unexpected 'endif' (no block is open that it would close or "
            "continue)");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("{{ 'a' + }}"); }),
            "chat template line 1: expected an expression, found '}}'");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("{{ x"); }),
            "chat template line 1: the '{{' tag opened here is never closed (expected '}}')");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("{{ 'abc }}"); }),
            "chat template line 1: a string opened here is never closed");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("{% break %}"); }),
            "chat template line 1: 'break' outside a for loop");
  EXPECT_EQ(error_of<ChatTemplateError>([] { ChatTemplate::parse("{# x"); }),
            "chat template line 1: the comment '{#' opened here is never closed (expected '#}')");
  EXPECT_NE(error_of<ChatTemplateError>([] { ChatTemplate::parse(std::string("\xff")); })
                .find("not UTF-8"),
            std::string::npos);
}

TEST(ChatTemplateErrors, RenderErrorsAreTheRequestsFault) {
  const std::string err = error_of<ChatTemplateRenderError>(
      [] { render("{{ 'a' + m.content }}", {{"m", {{"content", ojson::array()}}}}); });
  EXPECT_EQ(err, "chat template line 1: unsupported operand types for +: a string and a list");
  EXPECT_NE(error_of<ChatTemplateRenderError>([] { render("{{ 1 // 0 }}"); }).find("division by zero"),
            std::string::npos);
  EXPECT_NE(error_of<ChatTemplateRenderError>([] { render("{% for i in range(1000000) %}{% endfor %}"); })
                .find("range() is limited"),
            std::string::npos);
  EXPECT_NE(error_of<ChatTemplateRenderError>([] {
              render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}");
            }).find("steps"),
            std::string::npos);
  EXPECT_NE(error_of<ChatTemplateRenderError>([] {
              render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
            }).find("deep"),
            std::string::npos);
  EXPECT_NE(error_of<ChatTemplateRenderError>([] {
              render("{% set ns = namespace(x=none) %}{% set ns.x = ns %}{{ ns | tojson }}");
            }).find("not JSON serializable"),
            std::string::npos);
  EXPECT_NE(error_of<InvalidArgument>([] { chat_context(ojson::object(), {}, {}); })
                .find("messages must be a JSON array"),
            std::string::npos);
}

TEST(ChatTemplateFiles, WhereTheTemplateComesFrom) {
  const test::TempDir dir;
  // None at all: say how to give one.
  test::write_file(dir / "tokenizer_config.json", R"({"eos_token": {"content": "</s>"}})");
  const std::string none = error_of<InvalidArgument>([&] { read_chat_template_dir(dir.path()); });
  EXPECT_NE(none.find("has no chat template"), std::string::npos) << none;
  EXPECT_NE(none.find("--template FILE"), std::string::npos) << none;
  // A list of named templates: "default", or one picked by name.
  test::write_file(dir / "tokenizer_config.json",
                   R"({"eos_token": {"content": "</s>"}, "chat_template": [
                      {"name": "default", "template": "D{{ eos_token }}"},
                      {"name": "tool_use", "template": "T"}]})");
  EXPECT_EQ(read_chat_template_dir(dir.path()).chat_template.render(
                chat_context(ojson::array(), read_special_tokens(dir.path()), {})),
            "D</s>");
  EXPECT_EQ(read_chat_template_dir(dir.path(), "tool_use").chat_template.render({}), "T");
  EXPECT_NE(error_of<InvalidArgument>([&] { read_chat_template_dir(dir.path(), "rag"); })
                .find("no chat template named 'rag' (it has default, tool_use)"),
            std::string::npos);
  // chat_template.jinja overrides the config, as in transformers.
  test::write_file(dir / "chat_template.jinja", "J\n");
  EXPECT_EQ(read_chat_template_dir(dir.path()).chat_template.render({}), "J");
  // A template that does not parse names its file.
  test::write_file(dir / "chat_template.jinja", "{% if %}");
  const std::string bad = error_of<ChatTemplateError>([&] { read_chat_template_dir(dir.path()); });
  EXPECT_EQ(bad, (dir / "chat_template.jinja").string() +
                     ": chat template line 1: expected an expression, found '%}'");
}

}  // namespace
}  // namespace ferry::text
