#include "runtime/text/tokenizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"
#include "runtime/text/detail/bpe_model.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"
#include "runtime/text/detail/json_fields.hpp"
#include "runtime/text/detail/llama_vocab.hpp"
#include "runtime/text/detail/pipeline.hpp"
#include "runtime/text/detail/pretokenizer.hpp"
#include "runtime/text/detail/special_tokens.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text {
namespace {

namespace fs = std::filesystem;
using detail::JsonPlace;
using detail::shown;
using nlohmann::json;

constexpr std::string_view kEndOfText = "<|endoftext|>";

// Real vocabularies stop near 256k ids; refusing more keeps a corrupt file from making us
// allocate gigabytes for the id → text table.
constexpr std::int64_t kMaxTokenId = (std::int64_t{1} << 24) - 1;

std::string read_file(const fs::path& path) {
  struct Closer {
    void operator()(std::FILE* f) const noexcept { std::fclose(f); }
  };
  std::unique_ptr<std::FILE, Closer> file(std::fopen(path.c_str(), "rb"));
  FERRY_FORMAT_EXPECT(file != nullptr, "cannot open {}: {}", path.string(), std::strerror(errno));
  std::string bytes;
  std::array<char, 1 << 16> buffer;
  std::size_t n = 0;
  while ((n = std::fread(buffer.data(), 1, buffer.size(), file.get())) > 0) {
    bytes.append(buffer.data(), n);
  }
  FERRY_FORMAT_EXPECT(!std::ferror(file.get()), "cannot read {}: {}", path.string(),
                      std::strerror(errno));
  return bytes;
}

// Strict: a token or a merge listed twice under one key is refused, not silently the last.
json parse_json(std::string_view text, std::string_view source) {
  return parse_json_strict(text, source, "fix the file or download the tokenizer again");
}

// A token id from JSON, or nullopt when it is not an integer in [0, kMaxTokenId].
std::optional<std::int32_t> json_token_id(const json& value) {
  if (value.is_number_unsigned()) {
    const auto v = value.get<std::uint64_t>();
    if (v <= static_cast<std::uint64_t>(kMaxTokenId)) return static_cast<std::int32_t>(v);
  } else if (value.is_number_integer()) {
    const auto v = value.get<std::int64_t>();
    if (v >= 0 && v <= kMaxTokenId) return static_cast<std::int32_t>(v);
  }
  return std::nullopt;
}

}  // namespace

struct Tokenizer::Impl {
  enum class Kind : std::uint8_t {
    kUnassigned,
    kRegular,    // text is the model's key: raw bytes (byte-level) or UTF-8 (text alphabet)
    kUnspelled,  // byte-level vocabulary entry outside GPT-2's alphabet: text is its UTF-8
    kAdded,      // text is the added token's content
  };
  struct AddedFlags {
    bool lstrip = false;
    bool rstrip = false;
    bool special = false;  // found in the text only when encoding with parse_special
  };

  std::vector<std::string> id_text;
  std::vector<Kind> id_kind;
  detail::StringMap<std::int32_t> added;  // content → id
  std::unordered_map<std::int32_t, AddedFlags> added_flags;
  detail::SpecialTokenMatcher raw_matcher;         // added tokens found in the raw text
  detail::SpecialTokenMatcher normalized_matcher;  // those found after normalization
  detail::SpecialTokenMatcher raw_plain_matcher;   // the same without the special ones
  detail::SpecialTokenMatcher normalized_plain_matcher;
  bool has_normalized_added = false;
  detail::BpeModel model;
  detail::Normalizer normalizer;
  detail::PreTokenizer pre_tokenizer;
  detail::Decoder decoder;
  std::vector<std::int32_t> prefix;  // put around the ids by encode(..., add_special=true)
  std::vector<std::int32_t> suffix;
  std::optional<std::int32_t> bos;
  std::optional<std::int32_t> eos;
  std::string merge_scratch;  // loading only
  // No normalizer, GPT-2's pre-tokenizer, added tokens without lstrip/rstrip.
  bool gpt2_fast_path = false;
  // A GGUF vocabulary, tokenized as llama.cpp does; the fields above are then unused.
  std::unique_ptr<const detail::LlamaVocab> gguf;

  bool byte_level() const { return model.options().byte_level; }

  // ---- loading ----

  std::string spelled(std::int32_t id) const {
    const auto index = static_cast<std::size_t>(id);
    return id_kind[index] == Kind::kRegular && byte_level()
               ? detail::bytes_to_token_string(id_text[index])
               : id_text[index];
  }

  // Gives `id` to a token; false (nothing changed) when an added token already holds it, as
  // the vocabulary of a tokenizer.json repeats its added tokens.
  bool assign(std::int32_t id, std::string text, Kind kind, std::string_view spelling,
              std::string_view source) {
    const auto index = static_cast<std::size_t>(id);
    if (index >= id_text.size()) {
      id_text.resize(index + 1);
      id_kind.resize(index + 1, Kind::kUnassigned);
    }
    if (id_kind[index] == Kind::kAdded && kind != Kind::kAdded) return false;
    FERRY_FORMAT_EXPECT(id_kind[index] == Kind::kUnassigned,
                        "{}: id {} is given to two tokens ({} and {})", source, id,
                        shown(spelled(id)), shown(spelling));
    id_text[index] = std::move(text);
    id_kind[index] = kind;
    return true;
  }

  void add_added_token(std::int32_t id, const std::string& content, bool normalized,
                       AddedFlags flags, std::string_view source, std::string_view where) {
    FERRY_FORMAT_EXPECT(!content.empty(), "{}: {} (id {}) is empty", source, where, id);
    assign(id, content, Kind::kAdded, content, source);
    const auto [it, inserted] = added.emplace(content, id);
    FERRY_FORMAT_EXPECT(inserted, "{}: added token {} appears twice (ids {} and {})", source,
                        shown(content), it->second, id);
    added_flags[id] = flags;
    // Hugging Face cuts every added token, special or not, out of the text before the model
    // sees it: "normalized" ones in the normalized text, where their content is normalized too.
    if (normalized && !normalizer.empty()) {
      const std::string normalized_content = normalizer.apply(content);
      if (!normalized_content.empty()) {
        normalized_matcher.add(normalized_content, id);
        if (!flags.special) normalized_plain_matcher.add(normalized_content, id);
      }
      has_normalized_added = true;
    } else {
      raw_matcher.add(content, id);
      if (!flags.special) raw_plain_matcher.add(content, id);
    }
  }

  // A vocabulary object (vocab.json, or tokenizer.json's model.vocab). Spellings in
  // `as_added` become added tokens.
  void add_vocab(const json& vocab, std::string_view source, std::string_view field,
                 const std::vector<std::string_view>& as_added, bool strict_alphabet) {
    FERRY_FORMAT_EXPECT(vocab.is_object(), "{}: {} must be an object of token → id, not {}", source,
                        field, vocab.type_name());
    for (const auto& [spelling, value] : vocab.items()) {
      const std::optional<std::int32_t> id = json_token_id(value);
      FERRY_FORMAT_EXPECT(id.has_value(),
                          "{}: token {} has id {}, which is not an integer in [0, {}]", source,
                          shown(spelling), value.dump(), kMaxTokenId);
      if (std::find(as_added.begin(), as_added.end(), spelling) != as_added.end()) {
        add_added_token(*id, spelling, false, {.special = true}, source, "token");
        continue;
      }
      std::string key = spelling;
      Kind kind = Kind::kRegular;
      if (byte_level()) {
        std::optional<std::string> bytes = detail::token_string_to_bytes(spelling);
        // Hugging Face keeps such a token (BPE never produces it from bytes) and decodes it as
        // its UTF-8; GPT-2's own files never have one.
        FERRY_FORMAT_EXPECT(!strict_alphabet || (bytes.has_value() && !bytes->empty()),
                            "{}: token {} (id {}) is not spelled in GPT-2's byte alphabet; only "
                            "byte-level BPE vocabularies are supported",
                            source, shown(spelling), *id);
        if (bytes && !bytes->empty()) {
          key = std::move(*bytes);
        } else {
          kind = Kind::kUnspelled;
        }
      }
      if (kind == Kind::kRegular && !model.insert(key, *id)) {
        throw FormatError(fmt::format("{}: token {} appears twice (ids {} and {})", source,
                                      shown(spelling), model.find(key).value_or(-1), *id));
      }
      assign(*id, std::move(key), kind, spelling, source);
    }
  }

  std::int32_t model_id(std::string_view spelling, std::string_view source,
                        std::string_view where) const {
    std::optional<std::int32_t> id;
    if (byte_level()) {
      if (const std::optional<std::string> bytes = detail::token_string_to_bytes(spelling)) {
        id = model.find(*bytes);
      }
    } else {
      id = model.find(spelling);
    }
    FERRY_FORMAT_EXPECT(id.has_value(), "{}: {} names {}, which is not in the vocabulary", source,
                        where, shown(spelling));
    return *id;
  }

  void add_merge(std::string_view left, std::string_view right, std::int32_t rank,
                 std::string_view source, std::string_view where) {
    const std::int32_t left_id = model_id(left, source, where);
    const std::int32_t right_id = model_id(right, source, where);
    std::string& joined = merge_scratch;  // reused: 150k merges, no allocation each
    joined.assign(id_text[static_cast<std::size_t>(left_id)]);
    joined.append(id_text[static_cast<std::size_t>(right_id)]);
    const std::optional<std::int32_t> merged = model.find(joined);
    FERRY_FORMAT_EXPECT(merged.has_value(),
                        "{}: {} joins {} and {} into {}, which is not in the vocabulary", source,
                        where, shown(left), shown(right),
                        shown(byte_level() ? detail::bytes_to_token_string(joined) : joined));
    model.add_merge(left_id, right_id, rank, *merged);
  }

  // "left right", split at its one space (no byte-level or SentencePiece spelling has one).
  void add_merge_line(std::string_view line, std::int32_t rank, std::string_view source,
                      std::string_view where) {
    const std::size_t space = line.find(' ');
    FERRY_FORMAT_EXPECT(space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                            line.find(' ', space + 1) == std::string_view::npos,
                        "{}: {} is {}; expected two tokens separated by one space", source, where,
                        shown(line));
    add_merge(line.substr(0, space), line.substr(space + 1), rank, source, where);
  }

  void add_merges_txt(std::string_view text, std::string_view source) {
    std::int32_t rank = 0;
    std::size_t line_no = 0;
    for (std::size_t start = 0; start < text.size();) {
      std::size_t end = text.find('\n', start);
      if (end == std::string_view::npos) end = text.size();
      std::string_view line = text.substr(start, end - start);
      start = end + 1;
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      // The header, not a merge: later lines may start with '#' ("# #" is a real merge).
      if (line_no == 1 && line.starts_with("#version")) continue;
      add_merge_line(line, rank++, fmt::format("{}:{}", source, line_no),
                     fmt::format("line {}", line_no));
    }
  }

  // Checks made once everything is loaded.
  void finish(std::string_view source) {
    const std::optional<unsigned> missing = model.finish();
    FERRY_FORMAT_EXPECT(!missing.has_value(),
                        "{}: the vocabulary has no token for byte 0x{:02x} (spelled {}); a "
                        "byte-level BPE vocabulary needs all 256",
                        source, missing.value_or(0),
                        shown(detail::bytes_to_token_string(
                            std::string(1, static_cast<char>(missing.value_or(0))))));
  }

  std::optional<std::int32_t> find_token(std::string_view token) const {
    if (const auto it = added.find(token); it != added.end()) return it->second;
    if (!byte_level()) return model.find(token);
    const std::optional<std::string> bytes = detail::token_string_to_bytes(token);
    if (!bytes) return std::nullopt;
    return model.find(*bytes);
  }

  // ---- encoding ----

  struct Section {
    std::string_view text;
    std::int32_t added_id;  // -1 for text
  };

  // Cuts the added tokens `matcher` knows out of `text`, then strips the white space beside
  // those that ask for it (lstrip/rstrip), as transformers.js does.
  std::vector<Section> cut_added(std::string_view text,
                                 const detail::SpecialTokenMatcher& matcher) const {
    std::vector<Section> sections;
    for (std::size_t pos = 0; pos < text.size();) {
      const auto match = matcher.find(text, pos);
      const std::size_t end = match ? match->pos : text.size();
      if (end > pos) sections.push_back({text.substr(pos, end - pos), -1});
      if (!match) break;
      sections.push_back({text.substr(match->pos, match->len), match->id});
      pos = match->pos + match->len;
    }
    for (std::size_t i = 0; i < sections.size(); ++i) {
      if (sections[i].added_id < 0) continue;
      const AddedFlags flags = added_flags.at(sections[i].added_id);
      if (flags.lstrip && i > 0 && sections[i - 1].added_id < 0) {
        sections[i - 1].text = detail::trim_js_spaces(sections[i - 1].text, false, true);
      }
      if (flags.rstrip && i + 1 < sections.size() && sections[i + 1].added_id < 0) {
        sections[i + 1].text = detail::trim_js_spaces(sections[i + 1].text, true, false);
      }
    }
    return sections;
  }

  void encode_text(std::string_view text, bool parse_special,
                   std::vector<std::int32_t>& ids) const {
    const detail::SpecialTokenMatcher& raw = parse_special ? raw_matcher : raw_plain_matcher;
    const detail::SpecialTokenMatcher& normalized_added =
        parse_special ? normalized_matcher : normalized_plain_matcher;
    detail::BpeMerger merger;
    if (gpt2_fast_path) {
      // GPT-2 and GPT-J: the scanner straight into the model, a fifth faster than the general
      // pipeline's callbacks.
      for (std::size_t pos = 0; pos < text.size();) {
        const auto match = raw.find(text, pos);
        const std::size_t end = match ? match->pos : text.size();
        detail::Gpt2PreTokenizer scanner(text.substr(pos, end - pos));
        while (const std::optional<std::string_view> word = scanner.next()) {
          model.encode(*word, merger, ids);
        }
        if (!match) break;
        ids.push_back(match->id);
        pos = match->pos + match->len;
      }
      return;
    }
    const detail::PreTokenizer::Emit to_model = [&](std::string_view word) {
      model.encode(word, merger, ids);
    };
    const std::vector<Section> sections = cut_added(text, raw);
    for (std::size_t index = 0; index < sections.size(); ++index) {
      const Section& section = sections[index];
      if (section.added_id >= 0) {
        ids.push_back(section.added_id);
        continue;
      }
      if (section.text.empty()) continue;
      // Metaspace's prepend_scheme "first" prepends only in the section that starts the input.
      const bool first = index == 0;
      if (normalizer.empty()) {
        pre_tokenizer.split(section.text, first, to_model);
        continue;
      }
      const std::string normalized = normalizer.apply(section.text);
      if (!has_normalized_added) {
        pre_tokenizer.split(normalized, first, to_model);
        continue;
      }
      for (const Section& sub : cut_added(normalized, normalized_added)) {
        if (sub.added_id >= 0) {
          ids.push_back(sub.added_id);
        } else {
          pre_tokenizer.split(sub.text, first && sub.text.data() == normalized.data(), to_model);
        }
      }
    }
  }

  // ---- decoding ----

  void check_id(std::int32_t id) const {
    FERRY_EXPECT(id >= 0 && static_cast<std::size_t>(id) < id_text.size(),
                 "token id {} is outside the vocabulary (size {})", id, id_text.size());
    FERRY_EXPECT(id_kind[static_cast<std::size_t>(id)] != Kind::kUnassigned,
                 "token id {} is not assigned to any token (vocabulary size {})", id,
                 id_text.size());
  }

  // Byte-level tokens go to a decoder that starts with ByteLevel as the bytes they stand for
  // (no round trip through the alphabet); every other token as the file spells it.
  bool bytes_in() const { return byte_level() && decoder.starts_with_byte_level(); }

  detail::DecodePiece piece(std::int32_t id) const {
    check_id(id);
    const auto index = static_cast<std::size_t>(id);
    const Kind kind = id_kind[index];
    if (kind == Kind::kAdded) return {id_text[index], true};
    if (kind == Kind::kRegular && byte_level() && !bytes_in()) return {spelled(id), false};
    return {id_text[index], false};
  }
};

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

namespace {

using Impl = Tokenizer::Impl;

std::unique_ptr<Impl> load_vocab_and_merges(std::string_view vocab_json,
                                            std::string_view merges_txt,
                                            std::string_view vocab_source,
                                            std::string_view merges_source) {
  auto impl = std::make_unique<Impl>();
  impl->pre_tokenizer = detail::PreTokenizer::gpt2();
  impl->decoder = detail::Decoder::byte_level();
  // GPT-2's vocab.json lists <|endoftext|> among the ordinary tokens; it is the one special
  // token of the format, so it is set apart here.
  impl->add_vocab(parse_json(vocab_json, vocab_source), vocab_source, "the top level", {kEndOfText},
                  /*strict_alphabet=*/true);
  impl->add_merges_txt(merges_txt, merges_source);
  impl->finish(vocab_source);
  if (const auto it = impl->added.find(kEndOfText); it != impl->added.end()) impl->eos = it->second;
  impl->gpt2_fast_path = true;
  return impl;
}

void read_model_options(const json& model, const JsonPlace& at, Impl& impl) {
  detail::BpeModel::Options& o = impl.model.options();
  o.ignore_merges = detail::bool_field(model, "ignore_merges", at, false);
  o.byte_fallback = detail::bool_field(model, "byte_fallback", at, false);
  o.fuse_unk = detail::bool_field(model, "fuse_unk", at, false);
  for (const char* field : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const std::string affix = detail::string_field(model, field, at, "");
    FERRY_FORMAT_EXPECT(affix.empty(),
                        "{}: {}.{} is {}; ferry supports BPE models without word affixes",
                        at.source, at.path, field, shown(affix));
  }
  if (const auto it = model.find("dropout"); it != model.end() && !it->is_null()) {
    FERRY_FORMAT_EXPECT(it->is_number() && it->get<double>() == 0.0,
                        "{}: {}.dropout is {}; ferry encodes deterministically (dropout null or 0)",
                        at.source, at.path, it->dump());
  }
}

void read_added_tokens(const json& root, const JsonPlace& at, Impl& impl) {
  const auto added = root.find("added_tokens");
  if (added == root.end() || added->is_null()) return;
  FERRY_FORMAT_EXPECT(added->is_array(), "{}: added_tokens must be an array, not {}", at.source,
                      added->type_name());
  for (std::size_t i = 0; i < added->size(); ++i) {
    const json& entry = (*added)[i];
    const JsonPlace place = (at / "added_tokens")[i];
    const auto id = entry.is_object() ? json_token_id(entry.value("id", json())) : std::nullopt;
    const auto content = entry.is_object() ? entry.find("content") : entry.end();
    FERRY_FORMAT_EXPECT(
        id.has_value() && content != entry.end() && content->is_string(),
        "{}: {} needs an integer \"id\" in [0, {}] and a string \"content\", got {}", at.source,
        place.path, kMaxTokenId, entry.dump());
    const bool special = detail::bool_field(entry, "special", place, false);
    const Impl::AddedFlags flags{detail::bool_field(entry, "lstrip", place, false),
                                 detail::bool_field(entry, "rstrip", place, false), special};
    impl.add_added_token(*id, content->get<std::string>(),
                         detail::bool_field(entry, "normalized", place, !special), flags, at.source,
                         place.path);
  }
}

void read_merges(const json& model, const JsonPlace& at, Impl& impl) {
  const auto merges = model.find("merges");
  FERRY_FORMAT_EXPECT(merges != model.end() && merges->is_array(), "{}: {}.merges must be an array",
                      at.source, at.path);
  for (std::size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    const std::string where = fmt::format("{}.merges[{}]", at.path, i);
    const auto rank = static_cast<std::int32_t>(i);
    if (m.is_string()) {
      impl.add_merge_line(m.get_ref<const std::string&>(), rank, at.source, where);
    } else {
      FERRY_FORMAT_EXPECT(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                          "{}: {} is {}; expected \"left right\" or [\"left\", \"right\"]",
                          at.source, where, m.dump());
      impl.add_merge(m[0].get_ref<const std::string&>(), m[1].get_ref<const std::string&>(), rank,
                     at.source, where);
    }
  }
}

// A token named by the post-processor or tokenizer_config.json → its id.
std::int32_t named_token_id(const Impl& impl, std::string_view token, std::string_view source,
                            std::string_view where) {
  const std::optional<std::int32_t> id = impl.find_token(token);
  FERRY_FORMAT_EXPECT(id.has_value(), "{}: {} names {}, which is not a token", source, where,
                      shown(token));
  return *id;
}

// The ids a post-processor puts before and after the text's (only "single" matters: ferry
// encodes one sequence at a time).
void read_post_processor(const json& j, const JsonPlace& at, Impl& impl,
                         std::vector<std::int32_t>& prefix, std::vector<std::int32_t>& suffix) {
  if (j.is_null()) return;
  detail::expect_object(j, at);
  const std::string type = detail::string_field(j, "type", at, std::nullopt);
  if (type == "Sequence") {
    const auto it = j.find("processors");
    FERRY_FORMAT_EXPECT(it != j.end() && it->is_array(), "{}: {}.processors must be an array",
                        at.source, at.path);
    for (std::size_t i = 0; i < it->size(); ++i) {
      std::vector<std::int32_t> p, s;
      read_post_processor((*it)[i], (at / "processors")[i], impl, p, s);
      prefix.insert(prefix.begin(), p.begin(), p.end());
      suffix.insert(suffix.end(), s.begin(), s.end());
    }
    return;
  }
  if (type == "ByteLevel") return;  // offsets only
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    for (const auto& [field, out] : {std::pair{"cls", &prefix}, std::pair{"sep", &suffix}}) {
      const auto it = j.find(field);
      FERRY_FORMAT_EXPECT(
          it != j.end() && it->is_array() && it->size() == 2 && json_token_id((*it)[1]).has_value(),
          "{}: {}.{} must be [\"token\", id]", at.source, at.path, field);
      out->push_back(*json_token_id((*it)[1]));
    }
    return;
  }
  FERRY_FORMAT_EXPECT(type == "TemplateProcessing",
                      "{}: {}.type is {}; ferry supports the post-processors TemplateProcessing, "
                      "ByteLevel, Sequence, BertProcessing and RobertaProcessing",
                      at.source, at.path, shown(type));
  const auto single = j.find("single");
  FERRY_FORMAT_EXPECT(single != j.end() && single->is_array(), "{}: {}.single must be an array",
                      at.source, at.path);
  const json specials = j.value("special_tokens", json::object());
  bool seen_sequence = false;
  for (std::size_t i = 0; i < single->size(); ++i) {
    const json& item = (*single)[i];
    const std::string where = fmt::format("{}.single[{}]", at.path, i);
    if (item.is_object() && item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    const json* token = nullptr;
    if (item.is_object() && item.contains("SpecialToken") && item["SpecialToken"].is_object()) {
      const json& st = item["SpecialToken"];
      if (const auto id = st.find("id"); id != st.end() && id->is_string()) token = &*id;
    }
    FERRY_FORMAT_EXPECT(token != nullptr,
                        "{}: {} is {}; expected {{\"SpecialToken\": {{\"id\": ...}}}} or "
                        "{{\"Sequence\": ...}}",
                        at.source, where, item.dump());
    const auto& name = token->get_ref<const std::string&>();
    std::vector<std::int32_t> ids;
    if (const auto st = specials.find(name);
        st != specials.end() && st->is_object() && st->contains("ids") && (*st)["ids"].is_array()) {
      for (const json& v : (*st)["ids"]) {
        const auto id = json_token_id(v);
        FERRY_FORMAT_EXPECT(id.has_value(), "{}: {}.special_tokens[{}].ids has {}", at.source,
                            at.path, shown(name), v.dump());
        ids.push_back(*id);
      }
    } else {
      ids.push_back(named_token_id(impl, name, at.source, where));
    }
    auto& out = seen_sequence ? suffix : prefix;
    out.insert(out.end(), ids.begin(), ids.end());
  }
}

// tokenizer_config.json's bos_token/eos_token: a string, {"content": ...}, or null.
std::optional<std::string> config_token(const json& config, std::string_view key,
                                        std::string_view source) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  FERRY_FORMAT_EXPECT(it->is_object() && it->contains("content") && (*it)["content"].is_string(),
                      "{}: {} must be a string or {{\"content\": ...}}, not {}", source, key,
                      it->dump());
  return (*it)["content"].get<std::string>();
}

void read_tokenizer_config(std::string_view text, std::string_view source, Impl& impl) {
  const json config = parse_json(text, source);
  FERRY_FORMAT_EXPECT(config.is_object(), "{}: expected a JSON object at the top level, got {}",
                      source, config.type_name());
  const JsonPlace at{source, ""};
  const std::optional<std::string> bos = config_token(config, "bos_token", source);
  const std::optional<std::string> eos = config_token(config, "eos_token", source);
  if (bos) impl.bos = named_token_id(impl, *bos, source, "bos_token");
  if (eos) impl.eos = named_token_id(impl, *eos, source, "eos_token");
  // transformers' LlamaTokenizerFast rebuilds the post-processor from add_bos_token (default
  // true) and add_eos_token (default false) whatever tokenizer.json says.
  const std::string cls = detail::string_field(config, "tokenizer_class", at, "");
  if (cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast" || cls == "CodeLlamaTokenizer" ||
      cls == "CodeLlamaTokenizerFast") {
    impl.prefix.clear();
    impl.suffix.clear();
    if (detail::bool_field(config, "add_bos_token", at, true)) {
      FERRY_FORMAT_EXPECT(impl.bos.has_value(),
                          "{}: add_bos_token is true but bos_token is not set", source);
      impl.prefix.push_back(*impl.bos);
    }
    if (detail::bool_field(config, "add_eos_token", at, false)) {
      FERRY_FORMAT_EXPECT(impl.eos.has_value(),
                          "{}: add_eos_token is true but eos_token is not set", source);
      impl.suffix.push_back(*impl.eos);
    }
  }
}

std::unique_ptr<Impl> load_tokenizer_json(std::string_view text, std::string_view source,
                                          std::string_view config_text,
                                          std::string_view config_source) {
  const json root = parse_json(text, source);
  FERRY_FORMAT_EXPECT(root.is_object(), "{}: expected a JSON object at the top level, got {}",
                      source, root.type_name());
  const JsonPlace top{source, ""};
  const auto model = root.find("model");
  FERRY_FORMAT_EXPECT(model != root.end() && model->is_object(), "{}: has no \"model\" object",
                      source);
  const JsonPlace at_model = top / "model";
  if (const auto type = model->find("type"); type != model->end()) {
    FERRY_FORMAT_EXPECT(type->is_string() && type->get<std::string>() == "BPE",
                        "{}: model.type is {}; only \"BPE\" is supported", source, type->dump());
  }
  const auto stage = [&](const char* key) { return root.contains(key) ? root[key] : json(); };

  auto impl = std::make_unique<Impl>();
  impl->normalizer = detail::Normalizer::from_json(stage("normalizer"), top / "normalizer");
  impl->pre_tokenizer =
      detail::PreTokenizer::from_json(stage("pre_tokenizer"), top / "pre_tokenizer");
  impl->decoder = detail::Decoder::from_json(stage("decoder"), top / "decoder");
  impl->model.options().byte_level = impl->pre_tokenizer.byte_level();
  read_model_options(*model, at_model, *impl);
  read_added_tokens(root, top, *impl);

  const auto vocab = model->find("vocab");
  FERRY_FORMAT_EXPECT(vocab != model->end(), "{}: model has no \"vocab\"", source);
  if (const auto merges = model->find("merges"); vocab->is_object() && merges != model->end()) {
    impl->model.reserve(vocab->size(), merges->size());
    impl->id_text.reserve(vocab->size() + impl->added.size());
  }
  impl->add_vocab(*vocab, source, "model.vocab", {}, /*strict_alphabet=*/false);
  read_merges(*model, at_model, *impl);
  impl->finish(source);

  const std::string unk = detail::string_field(*model, "unk_token", at_model, "");
  if (!unk.empty())
    impl->model.options().unk_id = named_token_id(*impl, unk, source, "model.unk_token");
  read_post_processor(stage("post_processor"), top / "post_processor", *impl, impl->prefix,
                      impl->suffix);
  if (!config_text.empty()) {
    read_tokenizer_config(config_text, config_source, *impl);
  } else if (const auto it = impl->added.find(kEndOfText); it != impl->added.end()) {
    impl->eos = it->second;  // GPT-2's convention, for a tokenizer.json alone
  }
  impl->gpt2_fast_path =
      impl->normalizer.empty() && impl->pre_tokenizer.is_gpt2() &&
      std::none_of(impl->added_flags.begin(), impl->added_flags.end(),
                   [](const auto& entry) { return entry.second.lstrip || entry.second.rstrip; });
  return impl;
}

}  // namespace

Tokenizer Tokenizer::from_files(const fs::path& vocab_json, const fs::path& merges_txt) {
  const std::string vocab = read_file(vocab_json);
  const std::string merges = read_file(merges_txt);
  return Tokenizer(load_vocab_and_merges(vocab, merges, vocab_json.string(), merges_txt.string()));
}

Tokenizer Tokenizer::from_tokenizer_json(const fs::path& tokenizer_json) {
  const std::string text = read_file(tokenizer_json);
  const fs::path config_path = tokenizer_json.parent_path() / "tokenizer_config.json";
  std::error_code ec;
  const std::string config = fs::exists(config_path, ec) ? read_file(config_path) : std::string();
  return Tokenizer(
      load_tokenizer_json(text, tokenizer_json.string(), config, config_path.string()));
}

Tokenizer Tokenizer::from_strings(std::string_view vocab_json, std::string_view merges_txt) {
  return Tokenizer(load_vocab_and_merges(vocab_json, merges_txt, "vocab.json (in memory)",
                                         "merges.txt (in memory)"));
}

Tokenizer Tokenizer::from_json_strings(std::string_view tokenizer_json,
                                       std::string_view tokenizer_config_json,
                                       std::string_view source) {
  return Tokenizer(load_tokenizer_json(tokenizer_json, source, tokenizer_config_json,
                                       fmt::format("{} (tokenizer_config.json)", source)));
}

Tokenizer Tokenizer::from_model_dir(const fs::path& dir) {
  std::error_code ec;
  FERRY_FORMAT_EXPECT(fs::is_directory(dir, ec), "{} is not a directory", dir.string());
  if (fs::exists(dir / "tokenizer.json", ec)) return from_tokenizer_json(dir / "tokenizer.json");
  const bool has_vocab = fs::exists(dir / "vocab.json", ec);
  const bool has_merges = fs::exists(dir / "merges.txt", ec);
  FERRY_FORMAT_EXPECT(has_vocab && has_merges,
                      "{} has no tokenizer: expected tokenizer.json, or vocab.json and "
                      "merges.txt{}",
                      dir.string(),
                      has_vocab    ? " (merges.txt is missing)"
                      : has_merges ? " (vocab.json is missing)"
                                   : "");
  return from_files(dir / "vocab.json", dir / "merges.txt");
}

Tokenizer Tokenizer::from_gguf(const GgufVocabulary& vocabulary) {
  auto impl = std::make_unique<Impl>();
  impl->gguf = std::make_unique<const detail::LlamaVocab>(vocabulary);
  impl->bos = impl->gguf->bos();
  impl->eos = impl->gguf->eos();
  return Tokenizer(std::move(impl));
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special) const {
  return encode(text, add_special, /*parse_special=*/true);
}

std::vector<std::int32_t> Tokenizer::encode(std::string_view text, bool add_special,
                                            bool parse_special) const {
  if (impl_->gguf) return impl_->gguf->tokenize(text, add_special, parse_special);
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() / 4 + 1);  // English averages about four bytes per token
  if (add_special) ids = impl_->prefix;
  impl_->encode_text(text, parse_special, ids);
  if (add_special) ids.insert(ids.end(), impl_->suffix.begin(), impl_->suffix.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const std::int32_t> ids) const {
  if (impl_->gguf) return impl_->gguf->detokenize(ids);
  std::vector<detail::DecodePiece> pieces;
  pieces.reserve(ids.size());
  for (const std::int32_t id : ids) pieces.push_back(impl_->piece(id));
  return impl_->decoder.decode(std::move(pieces), impl_->bytes_in());
}

std::string Tokenizer::token_bytes(std::int32_t id, bool at_start_of_text) const {
  if (impl_->gguf)
    return impl_->gguf->piece(id, at_start_of_text && impl_->gguf->add_space_prefix());
  return impl_->decoder.decode_one(impl_->piece(id), impl_->bytes_in(), at_start_of_text);
}

std::int32_t Tokenizer::vocab_size() const {
  if (impl_->gguf) return impl_->gguf->size();
  return static_cast<std::int32_t>(impl_->id_text.size());
}

std::optional<std::int32_t> Tokenizer::token_id(std::string_view token) const {
  if (impl_->gguf) return impl_->gguf->find(token);
  return impl_->find_token(token);
}

std::optional<std::int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<std::int32_t> Tokenizer::eos_id() const { return impl_->eos; }

std::vector<std::int32_t> Tokenizer::eog_ids() const {
  if (impl_->gguf) return impl_->gguf->eog_ids();
  if (impl_->eos) return {*impl_->eos};
  return {};
}

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool at_start_of_text)
    : tokenizer_(&tokenizer), at_start_(at_start_of_text) {}

namespace {

// Moves the complete characters at the front of `pending` to the result; ill-formed bytes
// become U+FFFD so what is printed is always valid UTF-8. A well-formed but unfinished
// sequence at the end stays in `pending` unless `at_end`, when it too becomes U+FFFD.
std::string take_complete(std::string& pending, bool at_end) {
  std::string out;
  std::size_t pos = 0;
  while (pos < pending.size()) {
    const detail::Utf8Char ch = detail::decode_utf8(pending, pos);
    if (ch.status == detail::Utf8Status::kIncomplete && !at_end) break;
    if (ch.status == detail::Utf8Status::kOk) {
      out.append(pending, pos, ch.len);
    } else {
      detail::append_utf8(out, detail::kReplacementChar);
    }
    pos += ch.len;
  }
  pending.erase(0, pos);
  return out;
}

}  // namespace

std::string StreamDecoder::push(std::int32_t id) {
  pending_ += tokenizer_->token_bytes(id, at_start_);
  at_start_ = false;
  return take_complete(pending_, /*at_end=*/false);
}

std::string StreamDecoder::flush() { return take_complete(pending_, /*at_end=*/true); }

}  // namespace ferry::text
