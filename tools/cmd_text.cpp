// ferry tokenize: text → token ids (and ids → text) with the model's own tokenizer.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/text/tokenizer.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

Command add_tokenize(CLI::App& app) {
  struct Options {
    std::string model, vocab, merges, text, jsonl, decode;
    bool add_special = false;
    bool no_parse_special = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "print the token ids of a text as a JSON array (or, with --decode, the text of ids)");
  cmd->add_option("-m,--model", o->model,
                  "model directory holding tokenizer.json (+ tokenizer_config.json) or vocab.json "
                  "+ merges.txt, or a GGUF file");
  cmd->add_option("--vocab", o->vocab, "vocab.json");
  cmd->add_option("--merges", o->merges, "merges.txt");
  auto* t = cmd->add_option("--text", o->text, "the text");
  auto* j = cmd->add_option("--jsonl", o->jsonl,
                            "a file with one JSON string per line; prints one array per line");
  auto* d =
      cmd->add_option("--decode", o->decode, "token ids to turn into text, e.g. \"9707 1879\"");
  cmd->add_flag("--add-special", o->add_special,
                "add the special tokens the tokenizer puts around a text (e.g. Llama's <s>)");
  cmd->add_flag("--no-parse-special", o->no_parse_special,
                "tokenize the text of special tokens (\"<|eot_id|>\") as ordinary text instead of "
                "as their ids (llama.cpp's parse_special = false)");
  t->excludes(j);
  d->excludes(t);
  d->excludes(j);
  return [o] {
    FERRY_EXPECT(!o->model.empty() || (!o->vocab.empty() && !o->merges.empty()),
                 "give -m DIR, or both --vocab and --merges");
    FERRY_EXPECT(!o->text.empty() || !o->jsonl.empty() || !o->decode.empty(),
                 "give --text TEXT, --jsonl FILE or --decode \"ID ID ...\"");
    const text::Tokenizer tok = o->vocab.empty() ? engine::read_tokenizer(o->model)
                                                 : text::Tokenizer::from_files(o->vocab, o->merges);
    if (!o->decode.empty()) {
      fmt::print("{}\n", tok.decode(parse_ids(o->decode)));
      return 0;
    }
    if (o->jsonl.empty()) {
      fmt::print("[{}]\n", fmt::join(tok.encode(o->text, o->add_special, !o->no_parse_special), ", "));
      return 0;
    }
    std::ifstream in(o->jsonl);
    FERRY_EXPECT(in.good(), "cannot open {}", o->jsonl);
    std::string line;
    int64_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (line.empty()) continue;
      nlohmann::json v;
      try {
        v = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        throw FormatError(fmt::format("{}:{}: not a JSON string: {}", o->jsonl, line_no, e.what()));
      }
      FERRY_FORMAT_EXPECT(v.is_string(), "{}:{}: expected a JSON string, found {}", o->jsonl,
                          line_no, v.type_name());
      fmt::print("[{}]\n", fmt::join(tok.encode(v.get<std::string>(), o->add_special, !o->no_parse_special),
                                  ", "));
    }
    return 0;
  };
}

}  // namespace ferry::tools
