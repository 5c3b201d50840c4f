#include "runtime/text/detail/llama_vocab.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <initializer_list>
#include <queue>
#include <span>
#include <tuple>
#include <unordered_set>
#include <utility>

#include "runtime/core/error.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"
#include "runtime/text/detail/json_fields.hpp"
#include "runtime/text/detail/pretokenizer.hpp"
#include "runtime/text/detail/regex.hpp"
#include "runtime/text/detail/unicode_props.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

constexpr std::string_view kSpmSpace = "\xe2\x96\x81";  // U+2581, SentencePiece's space

// ---- llama.cpp's code points ----
//
// unicode_cpts_from_utf8: a lead byte says how many bytes follow and only their 10xxxxxx form
// is checked (so overlong forms and surrogates decode); a byte that starts nothing valid
// becomes U+FFFD. The pre-tokenizer and BPE then see the text re-encoded from these.
std::vector<char32_t> llama_cpts(std::string_view s) {
  std::vector<char32_t> out;
  out.reserve(s.size());
  const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(s[i]); };
  const auto cont = [&](std::size_t i) { return i < s.size() && (byte(i) & 0xC0) == 0x80; };
  for (std::size_t i = 0; i < s.size();) {
    const unsigned char b = byte(i);
    if ((b & 0x80) == 0) {
      out.push_back(b);
      i += 1;
    } else if ((b & 0xE0) == 0xC0 && cont(i + 1)) {
      out.push_back((char32_t{b & 0x1Fu} << 6) | (byte(i + 1) & 0x3Fu));
      i += 2;
    } else if ((b & 0xF0) == 0xE0 && cont(i + 1) && cont(i + 2)) {
      out.push_back((char32_t{b & 0x0Fu} << 12) | (char32_t{byte(i + 1) & 0x3Fu} << 6) |
                    (byte(i + 2) & 0x3Fu));
      i += 3;
    } else if ((b & 0xF8) == 0xF0 && cont(i + 1) && cont(i + 2) && cont(i + 3)) {
      out.push_back((char32_t{b & 0x07u} << 18) | (char32_t{byte(i + 1) & 0x3Fu} << 12) |
                    (char32_t{byte(i + 2) & 0x3Fu} << 6) | (byte(i + 3) & 0x3Fu));
      i += 4;
    } else {  // a stray continuation byte, F8..FF, or a lead byte without its continuations
      out.push_back(kReplacementChar);
      i += 1;
    }
  }
  return out;
}

// unicode_cpt_to_utf8, which encodes surrogates like any other code point. (llama.cpp throws
// past U+10FFFF; ferry writes U+FFFD.)
void append_llama_utf8(std::string& out, char32_t cp) {
  append_utf8(out, cp > 0x10FFFF ? kReplacementChar : cp);
}

// ---- the pre-tokenizers of llama-vocab.cpp (llm_tokenizer_bpe) ----

// The regexes llama.cpp matches with its own scanners (unicode_regex_split_custom); the
// others go to std::regex, which for these patterns agrees with ferry's engine (leftmost
// alternative, greedy, \p{..} as general categories) once non-ASCII white space is seen as
// \v in patterns without categories, as llama.cpp arranges.
constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr std::string_view kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|)"
    R"(\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kPoroRegex = R"( ?[^(\s|.,!?…。，、।۔،)]+)";
// deepseek-llm's "\s+$": its spans hold no newline by then (the first pattern isolates each),
// so "$" is the end of the span, which ferry's engine says as a lookahead.
// clang-format off
constexpr std::string_view kDeepseekLlmLetters =
    R"(\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ)"
    R"(-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕ)"
    R"(ἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂ)"
    R"(ℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛ)"
    R"(Ꜣ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃)"
    R"(]+)";
// clang-format on

struct PreSpec {
  std::vector<std::string_view> names;
  std::vector<std::string_view> regexes;
  bool ignore_merges = false;
  bool add_bos = false;
  bool clean_spaces = true;
  bool no_bos = false;  // chatglm-bpe: no BOS id unless the file names one
};

const std::vector<PreSpec>& pre_specs() {
  static const std::vector<PreSpec> specs = {
      {{"", "default"}, {R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Regex, R"(\p{N}+)", "[0-9][0-9][0-9]"}},
      {{"llama3", "llama-v3", "llama-bpe", "falcon3"}, {kLlama3Regex}, true, true},
      {{"dbrx", "smaug-bpe"}, {kLlama3Regex}},
      {{"deepseek-llm"},
       {"[\r\n]", kDeepseekLlmLetters, R"(\s?[!-/:-~！-／：-～‘-‟　-。]+)", R"(\s+(?![\s\S]))",
        "[一-龥ࠀ-一가-퟿]+", R"(\p{N}+)"},
       false,
       false,
       false},
      {{"deepseek-coder"},
       {"[\r\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", "[一-龥ࠀ-一가-퟿]+", R"(\p{N})"},
       false,
       false,
       false},
      {{"falcon"}, {R"([\p{P}\$\+<=>\^~\|`]+)", kGpt2Regex, "[0-9][0-9][0-9]"}},
      {{"starcoder", "refact", "codeshell", "exaone"}, {R"(\p{N})", kGpt2Regex}},
      {{"command-r", "smollm"}, {R"(\p{N})", kGpt2Regex}, false, false, false},
      {{"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v1-en", "jina-v2-es",
        "jina-v2-de", "jina-v2-code", "roberta-bpe", "mpt", "olmo", "jais"},
       {kGpt2Regex}},
      {{"minerva-7b"}, {R"(\p{N})", kGpt2Regex}},
      {{"stablelm2"}, {kQwen2Regex}},
      {{"qwen2", "megrez"}, {kQwen2Regex}, false, false, false},
      {{"chatglm-bpe"}, {kLlama3Regex}, false, false, true, true},
      {{"poro-chat"}, {kPoroRegex}, false, false, false},
      {{"bloom", "gpt3-finnish"}, {kPoroRegex}},
      {{"viking"}, {kPoroRegex, R"(\p{N})"}, false, false, false},
  };
  return specs;
}

bool has_category(std::string_view pattern) {
  return pattern.find("\\p{") != std::string_view::npos;
}

}  // namespace

// Splits text into the words BPE encodes, one regex after another, each cutting every piece
// the previous ones left into its matches and the stretches between them.
class LlamaPreTokenizer {
 public:
  explicit LlamaPreTokenizer(const PreSpec& spec) {
    for (const std::string_view pattern : spec.regexes) {
      Step step;
      if (pattern != kGpt2Regex) step.regex = std::make_unique<Regex>(pattern);
      // std::wregex does not see non-ASCII white space as \s, so llama.cpp turns it into \v
      // first; with \p{..} in the pattern its collapsed text does the same.
      step.wide = !has_category(pattern);
      needs_view_[step.wide] = true;
      steps_.push_back(std::move(step));
    }
  }

  std::vector<std::string> split(std::string_view text) const {
    const std::vector<char32_t> cpts = llama_cpts(text);
    // The text each step matches on, and where each code point starts in it (surrogates and
    // values past U+10FFFF, which no pattern names, read as U+FFFD).
    std::array<std::string, 2> views;
    std::array<std::vector<std::size_t>, 2> starts;
    for (int wide = 0; wide < 2; ++wide) {
      if (!needs_view_[wide]) continue;
      starts[wide].reserve(cpts.size() + 1);
      for (const char32_t cp : cpts) {
        starts[wide].push_back(views[wide].size());
        char32_t shown_cp = cp;
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) shown_cp = kReplacementChar;
        if (wide && cp > 0x7F && is_white_space(cp)) shown_cp = U'\v';
        append_utf8(views[wide], shown_cp);
      }
      starts[wide].push_back(views[wide].size());
    }

    std::vector<std::pair<std::size_t, std::size_t>> spans;  // [begin, end) in code points
    if (!cpts.empty()) spans.emplace_back(0, cpts.size());
    for (const Step& step : steps_) {
      const std::string& view = views[step.wide];
      const std::vector<std::size_t>& at = starts[step.wide];
      const auto cpt_index = [&](std::size_t byte) {
        return static_cast<std::size_t>(std::lower_bound(at.begin(), at.end(), byte) - at.begin());
      };
      std::vector<std::pair<std::size_t, std::size_t>> next;
      for (const auto& [begin, end] : spans) {
        const std::size_t base = at[begin];
        const std::string_view sub(view.data() + base, at[end] - base);
        std::size_t prev = begin;
        const auto cut = [&](std::size_t from_byte, std::size_t to_byte) {
          const std::size_t from = cpt_index(base + from_byte);
          const std::size_t to = cpt_index(base + to_byte);
          if (from > prev) next.emplace_back(prev, from);
          if (to > from) next.emplace_back(from, to);
          prev = std::max(prev, to);
        };
        if (step.regex) {
          for (const Regex::Span& m : step.regex->find_all(sub)) cut(m.begin, m.end);
        } else {
          Gpt2PreTokenizer scanner(sub);
          while (const std::optional<std::string_view> piece = scanner.next()) {
            const auto from = static_cast<std::size_t>(piece->data() - sub.data());
            cut(from, from + piece->size());
          }
        }
        if (end > prev) next.emplace_back(prev, end);
      }
      spans = std::move(next);
    }

    std::vector<std::string> words;
    words.reserve(spans.size());
    for (const auto& [begin, end] : spans) {
      std::string word;
      for (std::size_t i = begin; i < end; ++i) append_llama_utf8(word, cpts[i]);
      words.push_back(std::move(word));
    }
    return words;
  }

 private:
  struct Step {
    std::unique_ptr<Regex> regex;  // null: GPT-2's pattern, run by ferry's scanner
    bool wide = true;
  };
  std::vector<Step> steps_;
  std::array<bool, 2> needs_view_{};
};

namespace {

// llama_decode_text: a byte-level token's text → its bytes; a character outside GPT-2's
// alphabet becomes "[UNK_BYTE_0x<its UTF-8 in hex><the whole token>]", as llama.cpp writes it.
std::string decode_byte_level(std::string_view text) {
  std::string out;
  for (const char32_t cp : llama_cpts(text)) {
    if (const std::optional<std::uint8_t> b = char_to_byte(cp)) {
      out += static_cast<char>(*b);
      continue;
    }
    std::string utf8;
    append_llama_utf8(utf8, cp);
    out += "[UNK_BYTE_0x";
    for (const char c : utf8) out += fmt::format("{:02x}", static_cast<unsigned char>(c));
    out += text;
    out += "]";
  }
  return out;
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  std::size_t prev = 0;
  for (std::size_t pos = s.find(from); pos != std::string_view::npos; pos = s.find(from, prev)) {
    out.append(s.substr(prev, pos - prev));
    out.append(to);
    prev = pos + from.size();
  }
  out.append(s.substr(prev));
  return out;
}

bool is_ascii_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

// The tail of llama_detokenize when the vocabulary asks for clean_spaces: three in-place
// passes, copied as llama.cpp writes them (the second leaves a NUL behind, which the third
// then reads, so " ' ' " cleans differently from what one would design).
void clean_spaces(std::string& text) {
  auto total = static_cast<std::int64_t>(text.size());
  char* t = text.data();
  // " ?", " !", " .", " ," lose their space.
  std::int64_t total1 = total;
  total = total ? 1 : 0;
  for (std::int64_t i = 1; i < total1; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) --total;
    t[total++] = x;
  }
  // " ' " becomes "'".
  const std::int64_t total2 = total;
  total = total ? 1 : 0;
  for (std::int64_t i = 1; i < total2; ++i) {
    const char x = t[i];
    if (x == '\'' && i + 1 < total2 && t[i - 1] == ' ' && t[i + 1] == ' ') {
      --total;
      t[++i] = '\0';
    }
    t[total++] = x;
  }
  // " 's", " 'm", " 're", " 've" lose their space.
  const std::int64_t total3 = total;
  total = total ? 1 : 0;
  for (std::int64_t i = 1; i < total3; ++i) {
    const char x = t[i];
    if (t[i - 1] == ' ' && x == '\'' && i + 1 < total3) {
      const char x1 = t[i + 1];
      if (x1 == 's' || x1 == 'm') {
        --total;
      } else if (i + 2 < total3) {
        const char x2 = t[i + 2];
        if ((x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) --total;
      }
    }
    t[total++] = x;
  }
  text.resize(static_cast<std::size_t>(total));
}

// The texts llama.cpp recognises special tokens by (llama_vocab::impl::load, b4747).
constexpr std::array<std::string_view, 8> kEotTexts = {
    "<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
    "<|endoftext|>", "<EOT>",      "_<EOT>",  "<｜end▁of▁sentence｜>"};
constexpr std::array<std::string_view, 1> kEomTexts = {"<|eom_id|>"};
constexpr std::array<std::string_view, 8> kEogTexts = {
    "<|eot_id|>",    "<|im_end|>", "<|end|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>",   "_<EOT>"};
constexpr std::array<std::string_view, 4> kFimPreTexts = {"<|fim_prefix|>", "<fim-prefix>",
                                                          "<｜fim▁begin｜>", "<PRE>"};
constexpr std::array<std::string_view, 4> kFimSufTexts = {"<|fim_suffix|>", "<fim-suffix>",
                                                          "<｜fim▁hole｜>", "<SUF>"};
constexpr std::array<std::string_view, 4> kFimMidTexts = {"<|fim_middle|>", "<fim-middle>",
                                                          "<｜fim▁end｜>", "<MID>"};
constexpr std::array<std::string_view, 3> kFimPadTexts = {"<|fim_pad|>", "<fim-pad>", "<PAD>"};
constexpr std::array<std::string_view, 4> kFimRepTexts = {"<|fim_repo|>", "<|repo_name|>",
                                                          "<fim-repo>", "<REPO>"};
constexpr std::array<std::string_view, 1> kFimSepTexts = {"<|file_sep|>"};

}  // namespace

LlamaVocab::~LlamaVocab() = default;

LlamaVocab::LlamaVocab(const GgufVocabulary& v) : source_(v.source.empty() ? "GGUF" : v.source) {
  const std::string_view src = source_;
  FERRY_FORMAT_EXPECT(!v.tokens.empty(), "{}: tokenizer.ggml.tokens is missing or empty", src);
  const std::size_t n = v.tokens.size();
  FERRY_FORMAT_EXPECT(n <= static_cast<std::size_t>(INT32_MAX),
                      "{}: tokenizer.ggml.tokens has {} entries, more than ids can number", src, n);
  const PreSpec* spec = nullptr;
  if (v.model == "gpt2") {
    type_ = Type::kBpe;
    for (const PreSpec& s : pre_specs()) {
      if (std::find(s.names.begin(), s.names.end(), v.pre) != s.names.end()) spec = &s;
    }
    FERRY_FORMAT_EXPECT(spec != nullptr,
                        "{}: tokenizer.ggml.pre is {}, a pre-tokenizer ferry does not know; "
                        "ferry knows those of llama.cpp b4747 (llama-bpe, qwen2, gpt-2, default, "
                        "deepseek-llm, starcoder, ...) except tekken, chameleon and deepseek-v3",
                        src, shown(v.pre));
    FERRY_FORMAT_EXPECT(!v.merges.empty(),
                        "{}: tokenizer.ggml.merges is missing or empty; a \"gpt2\" (byte-level "
                        "BPE) vocabulary needs its merges",
                        src);
  } else if (v.model == "llama") {
    type_ = Type::kSpm;
  } else {
    throw FormatError(fmt::format(
        "{}: tokenizer.ggml.model is {}; ferry reads \"gpt2\" (byte-level BPE) and \"llama\" "
        "(SentencePiece) vocabularies, not {} ones",
        src, shown(v.model), v.model.empty() ? "unnamed" : v.model));
  }
  FERRY_FORMAT_EXPECT(v.token_types.empty() || v.token_types.size() == n,
                      "{}: tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has "
                      "{}; they must be the same length",
                      src, v.token_types.size(), n);
  FERRY_FORMAT_EXPECT(v.scores.empty() || v.scores.size() == n,
                      "{}: tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}; "
                      "they must be the same length",
                      src, v.scores.size(), n);

  texts_.reserve(n);
  attrs_.reserve(n);
  token_to_id_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto id = static_cast<std::int32_t>(i);
    texts_.push_back(v.tokens[i].empty() ? fmt::format("[EMPTY_{}]", i) : v.tokens[i]);
    token_to_id_[texts_.back()] = id;
    std::uint32_t attr = kNormal;
    if (!v.token_types.empty()) {
      switch (v.token_types[i]) {
        case 1:
          attr = kNormal;
          break;
        case 2:
          attr = kUnknown;
          break;
        case 3:
          attr = kControl;
          break;
        case 4:
          attr = kUserDefined;
          break;
        case 5:
          attr = kUnused;
          break;
        case 6:
          attr = kByte;
          break;
        default:
          attr = kUndefined;
          break;
      }
    }
    attrs_.push_back(attr);
  }
  scores_ = v.scores;
  if (scores_.empty()) scores_.assign(n, 0.0f);

  // The defaults of llama_vocab::impl::load, then the file's keys.
  std::optional<std::int32_t> default_bos, default_eos;
  if (type_ == Type::kSpm) {
    default_bos = 1;
    default_eos = 2;
    unk_ = 0;
    add_space_prefix_ = true;
    add_bos_ = true;
  } else {
    default_bos = default_eos = 11;  // llama.cpp's gpt2 default (Falcon's <|endoftext|>)
    add_space_prefix_ = false;
    clean_spaces_ = spec->clean_spaces;
    add_bos_ = spec->add_bos;
    if (spec->no_bos) default_bos.reset();
  }
  const auto in_range = [&](std::optional<std::int32_t> id) {
    return id && *id >= 0 && static_cast<std::size_t>(*id) < n ? id : std::nullopt;
  };
  bos_ = in_range(default_bos);
  eos_ = in_range(default_eos);
  unk_ = in_range(unk_);
  for (const auto& [key, value, out] :
       {std::tuple{"bos_token_id", v.bos_id, &bos_}, std::tuple{"eos_token_id", v.eos_id, &eos_},
        std::tuple{"eot_token_id", v.eot_id, &eot_}, std::tuple{"eom_token_id", v.eom_id, &eom_},
        std::tuple{"unknown_token_id", v.unk_id, &unk_},
        std::tuple{"padding_token_id", v.pad_id,
                   static_cast<std::optional<std::int32_t>*>(nullptr)}}) {
    if (!value) continue;
    FERRY_FORMAT_EXPECT(*value >= 0 && static_cast<std::size_t>(*value) < n,
                        "{}: tokenizer.ggml.{} is {}, outside the vocabulary of {} tokens", src,
                        key, *value, n);
    if (out != nullptr) *out = value;
  }
  if (v.add_space_prefix) add_space_prefix_ = *v.add_space_prefix;
  if (v.add_bos) add_bos_ = *v.add_bos;
  if (v.add_eos) add_eos_ = *v.add_eos;
  FERRY_FORMAT_EXPECT(!add_bos_ || bos_.has_value(),
                      "{}: tokenizer.ggml.add_bos_token asks for a BOS but there is no "
                      "tokenizer.ggml.bos_token_id",
                      src);
  FERRY_FORMAT_EXPECT(!add_eos_ || eos_.has_value(),
                      "{}: tokenizer.ggml.add_eos_token asks for an EOS but there is no "
                      "tokenizer.ggml.eos_token_id",
                      src);

  // Special tokens llama.cpp recognises by their text, each of which it makes CONTROL. Where
  // several texts could be the EOT (or a FIM token), llama.cpp takes whichever its hash map
  // lists first; ferry takes the lowest id.
  const auto first_of = [&](std::span<const std::string_view> texts) {
    std::optional<std::int32_t> first;
    for (const std::string_view text : texts) {
      if (const auto id = find(text); id && (!first || *id < *first)) first = id;
    }
    return first;
  };
  const auto make_control = [&](std::optional<std::int32_t> id) {
    if (id) attrs_[static_cast<std::size_t>(*id)] = kControl;
    return id;
  };
  if (!eot_) eot_ = make_control(first_of(kEotTexts));
  if (!eom_) eom_ = make_control(first_of(kEomTexts));
  for (const auto& texts : {std::span<const std::string_view>(kFimPreTexts),
                            std::span<const std::string_view>(kFimSufTexts),
                            std::span<const std::string_view>(kFimMidTexts)}) {
    make_control(first_of(texts));
  }
  std::vector<std::int32_t> eog;
  for (const auto& texts : {std::span<const std::string_view>(kFimPadTexts),
                            std::span<const std::string_view>(kFimRepTexts),
                            std::span<const std::string_view>(kFimSepTexts)}) {
    if (const auto id = make_control(first_of(texts))) eog.push_back(*id);
  }
  for (const std::string_view text : kEogTexts) {
    if (const auto id = make_control(find(text))) eog.push_back(*id);
  }
  for (const auto& id : {eos_, eot_, eom_}) {
    if (id) eog.push_back(*id);
  }
  std::sort(eog.begin(), eog.end());
  eog.erase(std::unique(eog.begin(), eog.end()), eog.end());
  eog_ = std::move(eog);

  if (v.pre.find("jina-v2-") != std::string::npos) {
    if (const auto it = token_to_id_.find(std::string_view("<mask>")); it != token_to_id_.end()) {
      attrs_[static_cast<std::size_t>(it->second)] |= kLstrip;
    }
  }

  for (std::size_t i = 0; i < n; ++i) {
    if (attrs_[i] & (kControl | kUserDefined | kUnknown)) {
      special_.push_back(static_cast<std::int32_t>(i));
    }
  }
  // llama.cpp's std::sort leaves equal lengths in no set order; ferry keeps id order.
  std::stable_sort(special_.begin(), special_.end(), [&](std::int32_t a, std::int32_t b) {
    return texts_[static_cast<std::size_t>(a)].size() > texts_[static_cast<std::size_t>(b)].size();
  });

  pieces_.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t attr = attrs_[i];
    const std::string& text = texts_[i];
    std::string piece;
    if (attr & (kUnknown | kControl | kUserDefined)) {
      piece = text;
    } else if (attr & kNormal) {
      piece = type_ == Type::kBpe ? decode_byte_level(text) : replace_all(text, kSpmSpace, " ");
    } else if ((attr & kByte) && type_ == Type::kSpm) {
      const std::string hex = text.size() > 3 ? text.substr(3, 2) : std::string();
      piece.assign(1, static_cast<char>(std::strtol(hex.c_str(), nullptr, 16)));
    }
    pieces_.push_back(std::move(piece));
  }

  if (type_ == Type::kSpm) return;

  // Byte-level BPE: the model keys tokens by the bytes their spelling stands for. Tokens
  // spelled outside GPT-2's alphabet can never equal a pre-token and stay out of it. Inserted
  // last first, so that of equal spellings the last id wins, as in llama.cpp's map.
  bpe_.options().byte_level = true;
  bpe_.options().ignore_merges = spec->ignore_merges;
  bpe_.reserve(n, v.merges.size());
  for (std::size_t i = n; i-- > 0;) {
    if (std::optional<std::string> bytes = token_string_to_bytes(texts_[i]);
        bytes && !bytes->empty()) {
      bpe_.insert(std::move(*bytes), static_cast<std::int32_t>(i));
    }
  }
  const auto model_id = [&](std::string_view spelling, std::size_t index,
                            std::string& bytes) -> std::int32_t {
    std::optional<std::int32_t> id;
    if (std::optional<std::string> b = token_string_to_bytes(spelling)) {
      bytes = std::move(*b);
      id = bpe_.find(bytes);
    }
    FERRY_FORMAT_EXPECT(id.has_value(),
                        "{}: tokenizer.ggml.merges[{}] is {}, which names {}, a token not in "
                        "tokenizer.ggml.tokens",
                        src, index, shown(v.merges[index]), shown(spelling));
    return *id;
  };
  // A pair listed twice keeps its first rank, as llama.cpp's bpe_ranks.emplace does.
  std::unordered_set<std::uint64_t> seen;
  seen.reserve(v.merges.size());
  std::string left_bytes, right_bytes;
  for (std::size_t i = 0; i < v.merges.size(); ++i) {
    const std::string_view merge = v.merges[i];
    const std::size_t space = merge.size() > 1 ? merge.find(' ', 1) : std::string_view::npos;
    FERRY_FORMAT_EXPECT(space != std::string_view::npos,
                        "{}: tokenizer.ggml.merges[{}] is {}; expected two tokens separated by a "
                        "space",
                        src, i, shown(merge));
    const std::int32_t left = model_id(merge.substr(0, space), i, left_bytes);
    const std::int32_t right = model_id(merge.substr(space + 1), i, right_bytes);
    const std::optional<std::int32_t> merged = bpe_.find(left_bytes + right_bytes);
    FERRY_FORMAT_EXPECT(merged.has_value(),
                        "{}: tokenizer.ggml.merges[{}] is {}, which joins into {}, a token not in "
                        "tokenizer.ggml.tokens",
                        src, i, shown(merge),
                        shown(bytes_to_token_string(left_bytes + right_bytes)));
    const std::uint64_t key =
        (std::uint64_t{static_cast<std::uint32_t>(left)} << 32) | static_cast<std::uint32_t>(right);
    if (!seen.insert(key).second) continue;
    bpe_.add_merge(left, right, static_cast<std::int32_t>(i), *merged);
  }
  const std::optional<unsigned> missing = bpe_.finish();
  FERRY_FORMAT_EXPECT(
      !missing.has_value(),
      "{}: tokenizer.ggml.tokens has no token for byte 0x{:02x} (spelled {}); a "
      "\"gpt2\" vocabulary needs all 256",
      src, missing.value_or(0),
      shown(bytes_to_token_string(std::string(1, static_cast<char>(missing.value_or(0))))));
  try {
    pre_ = std::make_unique<const LlamaPreTokenizer>(*spec);
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{}: tokenizer.ggml.pre {}: {}", src, shown(v.pre), e.what()));
  }
}

std::optional<std::int32_t> LlamaVocab::find(std::string_view text) const {
  const auto it = token_to_id_.find(text);
  if (it == token_to_id_.end()) return std::nullopt;
  return it->second;
}

void LlamaVocab::check_id(std::int32_t id) const {
  FERRY_EXPECT(id >= 0 && id < size(), "token id {} is outside the vocabulary (size {})", id,
               size());
}

// tokenizer_st_partition: each special token in turn, longest first, is cut out of every
// stretch of text the earlier ones left, leftmost occurrence first. CONTROL and UNKNOWN
// tokens only when parse_special; USER_DEFINED ones always.
std::vector<LlamaVocab::Fragment> LlamaVocab::partition(std::string_view text,
                                                        bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back({-1, 0, text.size()});
  std::vector<Fragment> next;
  for (const std::int32_t id : special_) {
    const std::uint32_t attr = attrs_[static_cast<std::size_t>(id)];
    if (!parse_special && (attr & (kControl | kUnknown))) continue;
    const std::string_view special = texts_[static_cast<std::size_t>(id)];
    next.clear();
    bool changed = false;
    for (const Fragment& f : fragments) {
      if (f.id >= 0) {
        next.push_back(f);
        continue;
      }
      std::size_t offset = f.offset;
      std::size_t length = f.length;
      while (length > 0) {
        const std::size_t match = text.find(special, offset);
        if (match == std::string_view::npos || match + special.size() > offset + length) break;
        changed = true;
        std::size_t left = match - offset;
        if (attr & kLstrip) {
          while (left > 0 && is_ascii_space(text[offset + left - 1])) --left;
        }
        if (left > 0) next.push_back({-1, offset, left});
        next.push_back({id, match, special.size()});
        std::size_t right_offset = match + special.size();
        std::size_t right_length = offset + length - right_offset;
        if (attr & kRstrip) {
          while (right_length > 0 && is_ascii_space(text[right_offset])) {
            ++right_offset;
            --right_length;
          }
        }
        offset = right_offset;
        length = right_length;
      }
      if (length > 0) next.push_back({-1, offset, length});
    }
    if (changed) fragments.swap(next);
  }
  return fragments;
}

void LlamaVocab::tokenize_bpe(std::string_view text, std::vector<std::int32_t>& out) const {
  BpeMerger merger;
  for (const std::string& word : pre_->split(text)) bpe_.encode(word, merger, out);
}

std::int32_t LlamaVocab::spm_byte_token(unsigned char byte) const {
  if (const auto id = find(fmt::format("<0x{:02X}>", byte))) return *id;
  if (const auto id = find(std::string(1, static_cast<char>(byte)))) return *id;
  FERRY_EXPECT(unk_.has_value(),
               "{}: the vocabulary has neither <0x{:02X}> nor an unknown token for byte 0x{:02x}",
               source_, byte, byte);
  return *unk_;
}

// llm_tokenizer_spm_session::tokenize: the text's UTF-8 characters, then repeatedly the
// adjacent pair whose join is the token of highest score (the leftmost of equal scores) is
// joined; what is left and is not a token becomes byte tokens.
void LlamaVocab::tokenize_spm(const std::string& text, std::vector<std::int32_t>& out) const {
  struct Symbol {
    std::size_t offset;
    std::size_t n;
    std::int32_t prev;
    std::int32_t next;
  };
  struct Bigram {
    std::int32_t left;
    std::int32_t right;
    float score;
    std::size_t size;
  };
  const auto lower = [](const Bigram& l, const Bigram& r) {
    return l.score < r.score || (l.score == r.score && l.left > r.left);
  };
  std::vector<Symbol> symbols;
  std::priority_queue<Bigram, std::vector<Bigram>, decltype(lower)> queue(lower);
  static constexpr std::array<std::size_t, 16> kUtf8Len = {1, 1, 1, 1, 1, 1, 1, 1,
                                                           1, 1, 1, 1, 2, 2, 3, 4};
  for (std::size_t offset = 0; offset < text.size();) {
    const std::size_t len =
        std::min(kUtf8Len[static_cast<unsigned char>(text[offset]) >> 4], text.size() - offset);
    const auto index = static_cast<std::int32_t>(symbols.size());
    symbols.push_back({offset, len, index - 1, offset + len == text.size() ? -1 : index + 1});
    offset += len;
  }
  const auto try_add = [&](std::int32_t left, std::int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<std::size_t>(left)];
    const Symbol& r = symbols[static_cast<std::size_t>(right)];
    const auto id = find(std::string_view(text).substr(l.offset, l.n + r.n));
    if (!id) return;
    queue.push({left, right, scores_[static_cast<std::size_t>(*id)], l.n + r.n});
  };
  for (std::size_t i = 1; i < symbols.size(); ++i) {
    try_add(static_cast<std::int32_t>(i - 1), static_cast<std::int32_t>(i));
  }
  while (!queue.empty()) {
    const Bigram bigram = queue.top();
    queue.pop();
    Symbol& left = symbols[static_cast<std::size_t>(bigram.left)];
    Symbol& right = symbols[static_cast<std::size_t>(bigram.right)];
    if (left.n == 0 || right.n == 0 || left.n + right.n != bigram.size) continue;  // stale
    left.n += right.n;
    right.n = 0;
    left.next = right.next;
    if (right.next >= 0) symbols[static_cast<std::size_t>(right.next)].prev = bigram.left;
    try_add(left.prev, bigram.left);
    try_add(bigram.left, left.next);
  }
  if (symbols.empty()) return;
  for (std::int32_t i = 0; i >= 0; i = symbols[static_cast<std::size_t>(i)].next) {
    const Symbol& s = symbols[static_cast<std::size_t>(i)];
    const std::string_view piece = std::string_view(text).substr(s.offset, s.n);
    if (const auto id = find(piece)) {
      out.push_back(*id);
      continue;
    }
    for (const char c : piece) out.push_back(spm_byte_token(static_cast<unsigned char>(c)));
  }
}

std::vector<std::int32_t> LlamaVocab::tokenize(std::string_view text, bool add_special,
                                               bool parse_special) const {
  std::vector<std::int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && add_bos_) out.push_back(*bos_);
  bool prev_special = true;  // SentencePiece prefixes a space to text that starts or follows one
  for (const Fragment& f : partition(text, parse_special)) {
    if (f.id >= 0) {
      out.push_back(f.id);
      prev_special = true;
      continue;
    }
    const std::string_view piece = text.substr(f.offset, f.length);
    if (type_ == Type::kBpe) {
      tokenize_bpe(piece, out);
    } else {
      std::string spaced = add_space_prefix_ && prev_special ? " " : "";
      spaced.append(piece);
      tokenize_spm(replace_all(spaced, " ", kSpmSpace), out);
    }
    prev_special = false;
  }
  if (add_special && add_eos_) out.push_back(*eos_);
  return out;
}

std::string LlamaVocab::piece(std::int32_t id, bool strip_leading_space) const {
  check_id(id);
  const std::string& p = pieces_[static_cast<std::size_t>(id)];
  if (strip_leading_space && !p.empty() && p.front() == ' ') return p.substr(1);
  return p;
}

std::string LlamaVocab::detokenize(std::span<const std::int32_t> ids) const {
  std::string out;
  bool remove_space = add_space_prefix_;
  for (const std::int32_t id : ids) {
    out += piece(id, remove_space);
    remove_space = false;
  }
  if (clean_spaces_) clean_spaces(out);
  return out;
}

}  // namespace ferry::text::detail
