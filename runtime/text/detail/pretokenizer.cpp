#include "runtime/text/detail/pretokenizer.hpp"

#include "runtime/text/detail/char_class.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

struct Char {
  std::size_t len;
  CharClass cls;
};

// Ill-formed bytes become single "other" characters: a stray byte must neither be skipped
// nor glue itself to a following letter.
Char char_at(std::string_view text, std::size_t pos) {
  const auto byte = static_cast<unsigned char>(text[pos]);
  if (byte < 0x80) return {1, kAsciiClasses[byte]};
  const Utf8Char ch = decode_utf8(text, pos);
  if (ch.status != Utf8Status::kOk) return {1, CharClass::kOther};
  return {ch.len, char_class(ch.cp)};
}

// The end of the run of characters of class cls that starts at pos.
std::size_t run_end(std::string_view text, std::size_t pos, CharClass cls) {
  while (pos < text.size()) {
    const Char ch = char_at(text, pos);
    if (ch.cls != cls) break;
    pos += ch.len;
  }
  return pos;
}

// 's 't 'm 'd 're 've 'll (lower case only, as in the regex); the length matched or 0.
std::size_t contraction_length(std::string_view text, std::size_t pos) {
  if (text[pos] != '\'' || pos + 1 >= text.size()) return 0;
  const char c1 = text[pos + 1];
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (pos + 2 >= text.size()) return 0;
  const char c2 = text[pos + 2];
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

}  // namespace

std::optional<std::string_view> Gpt2PreTokenizer::next() {
  const std::size_t start = pos_;
  if (start >= text_.size()) return std::nullopt;

  std::size_t end = start;
  if (const std::size_t n = contraction_length(text_, start); n != 0) {
    end = start + n;
  } else {
    const Char first = char_at(text_, start);
    // " ?\p{L}+", " ?\p{N}+" and " ?[^\s\p{L}\p{N}]+": an ASCII space joins the run after it.
    std::size_t run_start = start;
    CharClass run_class = first.cls;
    if (text_[start] == ' ' && start + 1 < text_.size()) {
      const Char second = char_at(text_, start + 1);
      if (second.cls != CharClass::kSpace) {
        run_start = start + 1;
        run_class = second.cls;
      }
    }
    if (run_class != CharClass::kSpace) {
      end = run_end(text_, run_start, run_class);
    } else {
      // "\s+(?!\S)|\s+": a run of white space ending the text is one piece. Before anything
      // else the run gives up its last character, which then leads the next piece (so
      // "  word" is " " + " word"), unless the run is a single character.
      end = run_end(text_, start, CharClass::kSpace);
      if (end < text_.size()) {
        std::size_t last = start;
        for (std::size_t p = start; p < end; p += char_at(text_, p).len) last = p;
        if (last > start) end = last;
      }
    }
  }
  pos_ = end;
  return text_.substr(start, end - start);
}

std::vector<std::string_view> split_gpt2_pieces(std::string_view text) {
  std::vector<std::string_view> pieces;
  Gpt2PreTokenizer scanner(text);
  while (const auto piece = scanner.next()) pieces.push_back(*piece);
  return pieces;
}

}  // namespace ferry::text::detail
