#include "runtime/text/bpe_tokenizer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <utility>

#include "runtime/core/error.hpp"
#include "runtime/text/detail/bpe_merge.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"
#include "runtime/text/detail/pretokenizer.hpp"
#include "runtime/text/detail/special_tokens.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::string_view kEndOfText = "<|endoftext|>";

// Real vocabularies stop near 256k ids; refusing more keeps a corrupt file from making us
// allocate gigabytes for the id → bytes table.
constexpr std::int64_t kMaxTokenId = (std::int64_t{1} << 24) - 1;

// The piece cache: natural text repeats a small set of words (Zipf), so a cache of short
// pieces removes nearly all merge work. Long pieces are rare and would only evict others.
constexpr std::size_t kMaxCachedPieceBytes = 64;
// At this many entries the cache is emptied and refills with what is hot now; that bounds it
// at a few MiB without LRU bookkeeping on every lookup.
constexpr std::size_t kMaxCacheEntries = std::size_t{1} << 16;

struct StringHash {
  using is_transparent = void;  // lets the maps be searched with a string_view, no copy
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

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

json parse_json(std::string_view text, std::string_view source) {
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    throw FormatError(fmt::format("{}: malformed JSON: {}", source, e.what()));
  }
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

// The text of a token for an error message: short, and with control bytes made visible.
std::string shown(std::string_view token) {
  constexpr std::size_t kMaxShown = 40;
  std::string out = "\"";
  for (std::size_t i = 0; i < token.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(token[i]);
    if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (token.size() > kMaxShown) out += "...";
  return out + "\"";
}

}  // namespace

struct BpeTokenizer::Impl {
  enum class Kind : std::uint8_t { kUnassigned, kRegular, kAdded };

  std::vector<std::string> id_to_bytes;  // raw bytes of every id (added tokens: their text)
  std::vector<Kind> id_kind;
  StringMap<std::int32_t> regular;  // raw bytes → id, for the tokens BPE produces
  StringMap<std::int32_t> added;    // text → id, for tokens cut out of the text before BPE
  std::array<std::int32_t, 256> byte_ids{};
  detail::MergeTable merges;
  detail::SpecialTokenMatcher added_matcher;
  std::optional<std::int32_t> eos;

  // encode() is const and may run on several threads at once; the cache is its only state.
  mutable std::mutex cache_mutex;
  mutable StringMap<std::vector<std::int32_t>> cache;

  // ---- loading ----

  void assign(std::int32_t id, std::string bytes, Kind kind, std::string_view spelling,
              std::string_view source) {
    const auto index = static_cast<std::size_t>(id);
    if (index >= id_to_bytes.size()) {
      id_to_bytes.resize(index + 1);
      id_kind.resize(index + 1, Kind::kUnassigned);
    }
    // Added tokens are stored as text, vocabulary tokens as bytes; show each as spelled.
    FERRY_FORMAT_EXPECT(
        id_kind[index] == Kind::kUnassigned, "{}: id {} is given to two tokens ({} and {})", source,
        id,
        shown(id_kind[index] == Kind::kAdded ? id_to_bytes[index]
                                             : detail::bytes_to_token_string(id_to_bytes[index])),
        shown(spelling));
    if (kind == Kind::kRegular) {
      const auto [it, inserted] = regular.emplace(bytes, id);
      FERRY_FORMAT_EXPECT(inserted, "{}: token {} appears twice (ids {} and {})", source,
                          shown(spelling), it->second, id);
    } else {
      FERRY_FORMAT_EXPECT(!bytes.empty(), "{}: added token {} is empty", source, id);
      const auto [it, inserted] = added.emplace(bytes, id);
      FERRY_FORMAT_EXPECT(inserted, "{}: added token {} appears twice (ids {} and {})", source,
                          shown(spelling), it->second, id);
      added_matcher.add(bytes, id);
    }
    id_to_bytes[index] = std::move(bytes);
    id_kind[index] = kind;
  }

  // A vocabulary object (vocab.json, or tokenizer.json's model.vocab). Spellings in
  // `as_added` become added tokens; ids in `skip_ids` already belong to added tokens.
  void add_vocab(const json& vocab, std::string_view source, std::string_view field,
                 const std::vector<std::string_view>& as_added,
                 const std::vector<std::int32_t>& skip_ids) {
    FERRY_FORMAT_EXPECT(vocab.is_object(), "{}: {} must be an object of token → id, not {}", source,
                        field, vocab.type_name());
    for (const auto& [spelling, value] : vocab.items()) {
      const std::optional<std::int32_t> id = json_token_id(value);
      FERRY_FORMAT_EXPECT(id.has_value(),
                          "{}: token {} has id {}, which is not an integer in [0, {}]", source,
                          shown(spelling), value.dump(), kMaxTokenId);
      if (std::find(skip_ids.begin(), skip_ids.end(), *id) != skip_ids.end()) continue;
      if (std::find(as_added.begin(), as_added.end(), spelling) != as_added.end()) {
        assign(*id, spelling, Kind::kAdded, spelling, source);
        continue;
      }
      std::optional<std::string> bytes = detail::token_string_to_bytes(spelling);
      FERRY_FORMAT_EXPECT(bytes.has_value() && !bytes->empty(),
                          "{}: token {} (id {}) is not spelled in GPT-2's byte alphabet; only "
                          "byte-level BPE vocabularies are supported",
                          source, shown(spelling), *id);
      assign(*id, std::move(*bytes), Kind::kRegular, spelling, source);
    }
  }

  std::int32_t regular_id(std::string_view spelling, std::string_view source,
                          std::string_view where) const {
    const std::optional<std::string> bytes = detail::token_string_to_bytes(spelling);
    const auto it = bytes ? regular.find(*bytes) : regular.end();
    FERRY_FORMAT_EXPECT(it != regular.end(), "{}: {} names {}, which is not in the vocabulary",
                        source, where, shown(spelling));
    return it->second;
  }

  void add_merge(std::string_view left, std::string_view right, std::int32_t rank,
                 std::string_view source, std::string_view where) {
    const std::int32_t left_id = regular_id(left, source, where);
    const std::int32_t right_id = regular_id(right, source, where);
    const std::string joined = id_to_bytes[static_cast<std::size_t>(left_id)] +
                               id_to_bytes[static_cast<std::size_t>(right_id)];
    const auto it = regular.find(joined);
    FERRY_FORMAT_EXPECT(
        it != regular.end(), "{}: {} joins {} and {} into {}, which is not in the vocabulary",
        source, where, shown(left), shown(right), shown(detail::bytes_to_token_string(joined)));
    merges.set(left_id, right_id, {rank, it->second});
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
      const std::size_t space = line.find(' ');
      FERRY_FORMAT_EXPECT(space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                              line.find(' ', space + 1) == std::string_view::npos,
                          "{}:{}: expected two tokens separated by one space, got {}", source,
                          line_no, shown(line));
      add_merge(line.substr(0, space), line.substr(space + 1), rank++, source,
                fmt::format("line {}", line_no));
    }
  }

  // Checks made once everything is loaded.
  void finish(std::string_view source) {
    for (unsigned b = 0; b < 256; ++b) {
      const auto it = regular.find(std::string_view(reinterpret_cast<const char*>(&b), 1));
      FERRY_FORMAT_EXPECT(it != regular.end(),
                          "{}: the vocabulary has no token for byte 0x{:02x} (spelled {}); a "
                          "byte-level BPE vocabulary needs all 256",
                          source, b,
                          shown(detail::bytes_to_token_string(
                              std::string_view(reinterpret_cast<const char*>(&b), 1))));
      byte_ids[b] = it->second;
    }
    if (const auto it = added.find(kEndOfText); it != added.end()) eos = it->second;
  }

  // ---- encoding ----

  void encode_piece(std::string_view piece, detail::BpeMerger& merger,
                    std::vector<std::int32_t>& out) const {
    if (piece.size() == 1) {
      out.push_back(byte_ids[static_cast<unsigned char>(piece[0])]);
      return;
    }
    if (piece.size() > kMaxCachedPieceBytes) {
      merger.merge(piece, byte_ids, merges, out);
      return;
    }
    {
      const std::lock_guard lock(cache_mutex);
      if (const auto it = cache.find(piece); it != cache.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const std::size_t first = out.size();
    merger.merge(piece, byte_ids, merges, out);
    const auto new_first = out.begin() + static_cast<std::ptrdiff_t>(first);
    const std::lock_guard lock(cache_mutex);
    if (cache.size() >= kMaxCacheEntries) cache.clear();
    cache.emplace(std::string(piece), std::vector<std::int32_t>(new_first, out.end()));
  }

  void encode_ordinary(std::string_view text, detail::BpeMerger& merger,
                       std::vector<std::int32_t>& out) const {
    detail::Gpt2PreTokenizer scanner(text);
    while (const std::optional<std::string_view> piece = scanner.next()) {
      encode_piece(*piece, merger, out);
    }
  }

  const std::string& bytes_of(std::int32_t id) const {
    FERRY_EXPECT(id >= 0 && static_cast<std::size_t>(id) < id_to_bytes.size(),
                 "token id {} is outside the vocabulary (size {})", id, id_to_bytes.size());
    FERRY_EXPECT(id_kind[static_cast<std::size_t>(id)] != Kind::kUnassigned,
                 "token id {} is not assigned to any token (vocabulary size {})", id,
                 id_to_bytes.size());
    return id_to_bytes[static_cast<std::size_t>(id)];
  }
};

BpeTokenizer::BpeTokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BpeTokenizer::BpeTokenizer(BpeTokenizer&&) noexcept = default;
BpeTokenizer& BpeTokenizer::operator=(BpeTokenizer&&) noexcept = default;
BpeTokenizer::~BpeTokenizer() = default;

namespace {

std::unique_ptr<BpeTokenizer::Impl> load_vocab_and_merges(std::string_view vocab_json,
                                                          std::string_view merges_txt,
                                                          std::string_view vocab_source,
                                                          std::string_view merges_source) {
  auto impl = std::make_unique<BpeTokenizer::Impl>();
  // GPT-2's vocab.json lists <|endoftext|> among the ordinary tokens; it is the one special
  // token of the format, so it is set apart here.
  impl->add_vocab(parse_json(vocab_json, vocab_source), vocab_source, "the top level", {kEndOfText},
                  {});
  impl->add_merges_txt(merges_txt, merges_source);
  impl->finish(vocab_source);
  return impl;
}

void check_tokenizer_json_pipeline(const json& root, std::string_view source) {
  if (const auto it = root.find("normalizer"); it != root.end()) {
    FERRY_FORMAT_EXPECT(it->is_null(),
                        "{}: has a normalizer ({}); GPT-2's byte-level BPE uses none, and "
                        "ferry does not apply one",
                        source, it->dump());
  }
  if (const auto it = root.find("pre_tokenizer"); it != root.end() && !it->is_null()) {
    const json& pre = *it;
    FERRY_FORMAT_EXPECT(pre.is_object() && pre.value("type", "") == "ByteLevel",
                        "{}: pre_tokenizer is {}; only GPT-2's ByteLevel pre-tokenizer is "
                        "supported",
                        source, pre.dump());
    FERRY_FORMAT_EXPECT(!pre.value("add_prefix_space", false),
                        "{}: pre_tokenizer.add_prefix_space is true; ferry supports only "
                        "GPT-2's setting (false)",
                        source);
    FERRY_FORMAT_EXPECT(pre.value("use_regex", true),
                        "{}: pre_tokenizer.use_regex is false; ferry supports only GPT-2's "
                        "setting (true)",
                        source);
  }
}

std::unique_ptr<BpeTokenizer::Impl> load_tokenizer_json(std::string_view text,
                                                        std::string_view source) {
  const json root = parse_json(text, source);
  FERRY_FORMAT_EXPECT(root.is_object(), "{}: expected a JSON object at the top level, got {}",
                      source, root.type_name());
  const auto model = root.find("model");
  FERRY_FORMAT_EXPECT(model != root.end() && model->is_object(), "{}: has no \"model\" object",
                      source);
  if (const auto type = model->find("type"); type != model->end()) {
    FERRY_FORMAT_EXPECT(type->is_string() && type->get<std::string>() == "BPE",
                        "{}: model.type is {}; only \"BPE\" is supported", source, type->dump());
  }
  check_tokenizer_json_pipeline(root, source);

  auto impl = std::make_unique<BpeTokenizer::Impl>();
  std::vector<std::int32_t> added_ids;
  if (const auto added = root.find("added_tokens"); added != root.end() && !added->is_null()) {
    FERRY_FORMAT_EXPECT(added->is_array(), "{}: added_tokens must be an array, not {}", source,
                        added->type_name());
    for (std::size_t i = 0; i < added->size(); ++i) {
      const json& entry = (*added)[i];
      const auto id = entry.is_object() ? json_token_id(entry.value("id", json())) : std::nullopt;
      const auto content = entry.is_object() ? entry.find("content") : entry.end();
      FERRY_FORMAT_EXPECT(id.has_value() && content != entry.end() && content->is_string(),
                          "{}: added_tokens[{}] needs an integer \"id\" in [0, {}] and a string "
                          "\"content\", got {}",
                          source, i, kMaxTokenId, entry.dump());
      // Hugging Face cuts every added token, special or not, out of the text before the
      // model sees it, so both kinds go to the matcher.
      const auto& content_text = content->get_ref<const std::string&>();
      impl->assign(*id, content_text, BpeTokenizer::Impl::Kind::kAdded, content_text, source);
      added_ids.push_back(*id);
    }
  }

  const auto vocab = model->find("vocab");
  FERRY_FORMAT_EXPECT(vocab != model->end(), "{}: model has no \"vocab\"", source);
  impl->add_vocab(*vocab, source, "model.vocab", {}, added_ids);

  const auto merges = model->find("merges");
  FERRY_FORMAT_EXPECT(merges != model->end() && merges->is_array(),
                      "{}: model.merges must be an array", source);
  for (std::size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    const std::string where = fmt::format("model.merges[{}]", i);
    const auto rank = static_cast<std::int32_t>(i);
    if (m.is_string()) {
      // The older form, "left right": byte-level spellings never contain a space.
      const auto& s = m.get_ref<const std::string&>();
      const std::size_t space = s.find(' ');
      FERRY_FORMAT_EXPECT(space != std::string::npos && space > 0 && space + 1 < s.size() &&
                              s.find(' ', space + 1) == std::string::npos,
                          "{}: {} is {}; expected two tokens separated by one space", source, where,
                          m.dump());
      impl->add_merge(std::string_view(s).substr(0, space), std::string_view(s).substr(space + 1),
                      rank, source, where);
    } else {
      FERRY_FORMAT_EXPECT(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
                          "{}: {} is {}; expected \"left right\" or [\"left\", \"right\"]", source,
                          where, m.dump());
      impl->add_merge(m[0].get_ref<const std::string&>(), m[1].get_ref<const std::string&>(), rank,
                      source, where);
    }
  }
  impl->finish(source);
  return impl;
}

}  // namespace

BpeTokenizer BpeTokenizer::from_files(const fs::path& vocab_json, const fs::path& merges_txt) {
  const std::string vocab = read_file(vocab_json);
  const std::string merges = read_file(merges_txt);
  return BpeTokenizer(
      load_vocab_and_merges(vocab, merges, vocab_json.string(), merges_txt.string()));
}

BpeTokenizer BpeTokenizer::from_tokenizer_json(const fs::path& tokenizer_json) {
  const std::string text = read_file(tokenizer_json);
  return BpeTokenizer(load_tokenizer_json(text, tokenizer_json.string()));
}

BpeTokenizer BpeTokenizer::from_strings(std::string_view vocab_json, std::string_view merges_txt) {
  return BpeTokenizer(load_vocab_and_merges(vocab_json, merges_txt, "vocab.json (in memory)",
                                            "merges.txt (in memory)"));
}

BpeTokenizer BpeTokenizer::from_model_dir(const fs::path& dir) {
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

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() / 4 + 1);  // English averages about four bytes per token
  detail::BpeMerger merger;
  for (std::size_t pos = 0; pos < text.size();) {
    const auto match = impl_->added_matcher.find(text, pos);
    const std::size_t end = match ? match->pos : text.size();
    impl_->encode_ordinary(text.substr(pos, end - pos), merger, ids);
    if (!match) break;
    ids.push_back(match->id);
    pos = match->pos + match->len;
  }
  return ids;
}

std::string BpeTokenizer::decode(std::span<const std::int32_t> ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (const std::int32_t id : ids) out += impl_->bytes_of(id);
  return out;
}

std::string BpeTokenizer::token_bytes(std::int32_t id) const { return impl_->bytes_of(id); }

std::int32_t BpeTokenizer::vocab_size() const {
  return static_cast<std::int32_t>(impl_->id_to_bytes.size());
}

std::optional<std::int32_t> BpeTokenizer::token_id(std::string_view token) const {
  if (const auto it = impl_->added.find(token); it != impl_->added.end()) return it->second;
  const std::optional<std::string> bytes = detail::token_string_to_bytes(token);
  if (!bytes) return std::nullopt;
  const auto it = impl_->regular.find(*bytes);
  if (it == impl_->regular.end()) return std::nullopt;
  return it->second;
}

std::optional<std::int32_t> BpeTokenizer::eos_id() const { return impl_->eos; }

StreamDecoder::StreamDecoder(const BpeTokenizer& tokenizer) : tokenizer_(&tokenizer) {}

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
  pending_ += tokenizer_->token_bytes(id);
  return take_complete(pending_, /*at_end=*/false);
}

std::string StreamDecoder::flush() { return take_complete(pending_, /*at_end=*/true); }

}  // namespace ferry::text
