// The regular expressions of tokenizer.json files (pre-tokenizer Split patterns, Replace
// patterns), matched as Oniguruma, the engine Hugging Face uses, matches them: backtracking,
// leftmost alternative first, greedy quantifiers, \s as Unicode White_Space, \p{..} as
// general categories. Only the subset those files use is understood; anything else is
// refused when the pattern is compiled, with a FormatError naming the construct.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::text::detail {

class Regex {
 public:
  struct Span {
    std::size_t begin;  // byte offsets into the text
    std::size_t end;
  };

  // Throws FormatError("regex <pattern>: <what is not supported> at offset N").
  explicit Regex(std::string_view pattern);

  // Every non-empty match, leftmost first, each search starting where the last match ended.
  // Bytes that are not valid UTF-8 are single characters of category Cn.
  std::vector<Span> find_all(std::string_view text) const;

  const std::string& pattern() const;

  struct Program;

 private:
  std::shared_ptr<const Program> program_;
};

}  // namespace ferry::text::detail
