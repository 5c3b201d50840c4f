// The stages of a tokenizer.json around its model: the normalizer, the pre-tokenizer and the
// decoder, each read from the file's JSON the way Hugging Face's tokenizers (and
// transformers.js, the reference for ferry's tests) apply them. A stage ferry cannot
// reproduce is refused when the file is read, with the field and the type named.
#pragma once

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/text/detail/json_fields.hpp"

namespace ferry::text::detail {

class Regex;

// `s` without JavaScript white space at its start (left) and end (right): transformers.js's
// trimStart/trimEnd, which its Strip normalizer and added tokens' lstrip/rstrip use.
std::string_view trim_js_spaces(std::string_view s, bool left, bool right);

// A "pattern" object: {"String": "..."} or {"Regex": "..."}; finds where it occurs.
class Pattern {
 public:
  static Pattern from_json(const nlohmann::json& j, const JsonPlace& at);
  static Pattern literal(std::string text);
  struct Span {
    std::size_t begin;
    std::size_t end;
  };
  std::vector<Span> find_all(std::string_view text) const;
  // Every occurrence replaced by `content`.
  std::string replace_all(std::string_view text, std::string_view content) const;

 private:
  std::string literal_;
  std::shared_ptr<const Regex> regex_;
};

class Normalizer {
 public:
  // `j` may be null (no normalizer).
  static Normalizer from_json(const nlohmann::json& j, const JsonPlace& at);
  bool empty() const { return steps_.empty(); }
  std::string apply(std::string_view text) const;

  struct Step;

 private:
  std::vector<std::shared_ptr<const Step>> steps_;
};

class PreTokenizer {
 public:
  // `j` may be null: the whole text is one pre-token.
  static PreTokenizer from_json(const nlohmann::json& j, const JsonPlace& at);
  // GPT-2's: ByteLevel with its regex and no prefix space.
  static PreTokenizer gpt2();

  // Whether it ends in ByteLevel: then the pieces it emits are raw bytes, for a vocabulary
  // spelled in GPT-2's byte alphabet.
  bool byte_level() const { return byte_level_; }
  // Whether it is exactly GPT-2's (ByteLevel with its regex, no prefix space), which callers
  // may run as Gpt2PreTokenizer directly.
  bool is_gpt2() const;

  using Emit = std::function<void(std::string_view)>;
  // Calls emit for each pre-token of `text`, in order. `first_section` says whether `text`
  // is at the very start of the input (Metaspace's prepend_scheme "first").
  void split(std::string_view text, bool first_section, const Emit& emit) const;

  struct Step;

 private:
  void run(std::size_t step, std::string_view piece, bool at_start, const Emit& emit) const;
  std::vector<std::shared_ptr<const Step>> steps_;
  bool byte_level_ = false;
};

// One token on its way through the decoder: its text, and whether it is an added token
// (ByteLevel keeps those as they are).
struct DecodePiece {
  std::string text;
  bool added = false;
};

class Decoder {
 public:
  // `j` may be null: tokens are joined with spaces, as Hugging Face does without a decoder.
  static Decoder from_json(const nlohmann::json& j, const JsonPlace& at);
  static Decoder byte_level();

  // Whether the first step is ByteLevel: then the tokenizer may hand over raw bytes instead
  // of alphabet spellings (`bytes_in` below), skipping a conversion.
  bool starts_with_byte_level() const;

  // The whole text of a sequence of tokens.
  std::string decode(std::vector<DecodePiece> pieces, bool bytes_in) const;
  // The bytes one token adds to a stream of them: byte-fallback tokens give their raw byte
  // (the stream assembles characters), leading-space stripping applies only `at_start`.
  std::string decode_one(DecodePiece piece, bool bytes_in, bool at_start) const;

  struct Step;

 private:
  std::vector<DecodePiece> run(std::vector<DecodePiece> pieces, bool bytes_in, bool streaming,
                               bool at_start) const;
  std::vector<std::shared_ptr<const Step>> steps_;
  bool null_ = false;
};

}  // namespace ferry::text::detail
