// Finds added tokens such as "<|endoftext|>" in raw text, so they can be cut out before
// pre-tokenisation (which would otherwise split them into "<|", "endoftext", "|>").
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::text::detail {

class SpecialTokenMatcher {
 public:
  struct Match {
    std::size_t pos;  // byte offset in the text
    std::size_t len;
    std::int32_t id;
  };

  // content must not be empty. Adding the same content again replaces its id.
  void add(std::string content, std::int32_t id);

  // The leftmost occurrence at or after `from`; the longest one where several start there
  // (Hugging Face's leftmost-longest rule).
  std::optional<Match> find(std::string_view text, std::size_t from) const;

 private:
  struct Entry {
    std::string content;
    std::int32_t id;
  };
  // Bucketed by first byte, longest first, so a scan touches only plausible candidates.
  std::array<std::vector<Entry>, 256> by_first_byte_;
  std::size_t count_ = 0;
};

}  // namespace ferry::text::detail
