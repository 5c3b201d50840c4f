// GPT-2's pre-tokeniser: splits text into the pieces BPE then encodes one at a time, exactly
// as the regex  's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// does, written as a scanner so it is fast and needs no regex engine with Unicode classes.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <vector>

namespace ferry::text::detail {

class Gpt2PreTokenizer {
 public:
  explicit Gpt2PreTokenizer(std::string_view text) : text_(text) {}

  // The next piece (a view into the text), or nullopt at the end. The pieces cover the text
  // exactly, in order. Bytes that are not valid UTF-8 count as one "other" character each.
  std::optional<std::string_view> next();

 private:
  std::string_view text_;
  std::size_t pos_ = 0;
};

// Every piece of text, for tests and tools.
std::vector<std::string_view> split_gpt2_pieces(std::string_view text);

}  // namespace ferry::text::detail
