// GPT-2's tokenizer files (vocab.json, merges.txt from data/gpt2) built into the library, so
// ferry can tokenise and write tokenizer files for synthetic models with no data directory.
#pragma once

#include <string_view>

namespace ferry::text {

// The exact bytes of data/gpt2/vocab.json and data/gpt2/merges.txt as they were at build time.
std::string_view embedded_gpt2_vocab_json();
std::string_view embedded_gpt2_merges_txt();

}  // namespace ferry::text
