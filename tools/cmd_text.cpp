// ferry tokenize: text → GPT-2 BPE ids.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/text/bpe_tokenizer.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

Command add_tokenize(CLI::App& app) {
  struct Options {
    std::string model, vocab, merges, text, jsonl;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("tokenize", "print the token ids of a text as a JSON array");
  cmd->add_option("-m,--model", o->model, "model directory holding the tokenizer files");
  cmd->add_option("--vocab", o->vocab, "vocab.json");
  cmd->add_option("--merges", o->merges, "merges.txt");
  auto* t = cmd->add_option("--text", o->text, "the text");
  auto* j = cmd->add_option("--jsonl", o->jsonl, "a file with one JSON string per line");
  t->excludes(j);
  return [o] {
    FERRY_EXPECT(!o->model.empty() || (!o->vocab.empty() && !o->merges.empty()),
                 "give -m DIR, or both --vocab and --merges");
    FERRY_EXPECT(!o->text.empty() || !o->jsonl.empty(), "give --text TEXT or --jsonl FILE");
    const text::BpeTokenizer tok = o->vocab.empty()
                                       ? text::BpeTokenizer::from_model_dir(o->model)
                                       : text::BpeTokenizer::from_files(o->vocab, o->merges);
    if (o->jsonl.empty()) {
      fmt::print("[{}]\n", fmt::join(tok.encode(o->text), ", "));
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
      fmt::print("[{}]\n", fmt::join(tok.encode(v.get<std::string>()), ", "));
    }
    return 0;
  };
}

}  // namespace ferry::tools
