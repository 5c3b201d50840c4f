// The real GPT-2 tokenizer (data/gpt2), loaded once for all the tests that need it, and the
// reference cases (tests/data/gpt2-bpe/cases.json: texts with the ids OpenAI's r50k_base gives).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/text/bpe_tokenizer.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::text::test {

inline const BpeTokenizer& gpt2() {
  static const BpeTokenizer tokenizer =
      BpeTokenizer::from_files(ferry::test::repo_data_dir() / "gpt2" / "vocab.json",
                               ferry::test::repo_data_dir() / "gpt2" / "merges.txt");
  return tokenizer;
}

struct ReferenceCase {
  std::string text;
  std::vector<std::int32_t> ids;
};

inline const std::vector<ReferenceCase>& reference_cases() {
  static const std::vector<ReferenceCase> cases = [] {
    const auto json = nlohmann::json::parse(
        ferry::test::read_file(ferry::test::data_dir() / "gpt2-bpe" / "cases.json"));
    std::vector<ReferenceCase> out;
    for (const auto& c : json) {
      out.push_back(
          {c.at("text").get<std::string>(), c.at("ids").get<std::vector<std::int32_t>>()});
    }
    return out;
  }();
  return cases;
}

}  // namespace ferry::text::test
