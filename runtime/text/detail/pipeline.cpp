#include "runtime/text/detail/pipeline.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "runtime/core/error.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"
#include "runtime/text/detail/nfc.hpp"
#include "runtime/text/detail/pretokenizer.hpp"
#include "runtime/text/detail/regex.hpp"
#include "runtime/text/detail/unicode_props.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

using nlohmann::json;

// Calls fn(member, place) for each member of a Sequence stage's array `key`.
template <typename F>
void for_each_member(const json& j, const char* key, const JsonPlace& at, F fn) {
  const auto it = j.find(key);
  FERRY_FORMAT_EXPECT(it != j.end() && it->is_array(), "{}: {}.{} must be an array", at.source,
                      at.path, key);
  for (std::size_t i = 0; i < it->size(); ++i) fn((*it)[i], (at / key)[i]);
}

[[noreturn]] void refuse_type(const JsonPlace& at, std::string_view type,
                              std::string_view supported) {
  throw FormatError(fmt::format("{}: {}.type is {}; ferry supports the {}", at.source, at.path,
                                shown(type), supported));
}

// Metaspace's replacement character (pre-tokenizer and decoder alike).
std::string replacement_field(const json& j, const JsonPlace& at) {
  std::string replacement = string_field(j, "replacement", at, "\u2581");
  FERRY_FORMAT_EXPECT(!replacement.empty(), "{}: {}.replacement is empty", at.source, at.path);
  return replacement;
}

std::string type_of(const json& j, const JsonPlace& at) {
  expect_object(j, at);
  return string_field(j, "type", at, std::nullopt);
}

// The start of the character that ends at `end` (exclusive).
std::size_t char_start_before(std::string_view s, std::size_t end) {
  std::size_t start = end - 1;
  while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80 && end - start < 4) {
    --start;
  }
  return start;
}

// Splits [0, size) at the matches into segments, then joins them as a Split behavior says
// (Hugging Face's SplitDelimiterBehavior); returns the non-empty pieces.
enum class Behavior : std::uint8_t {
  kRemoved,
  kIsolated,
  kMergedWithPrevious,
  kMergedWithNext,
  kContiguous
};

struct Segment {
  std::size_t begin;
  std::size_t end;
  bool match;
};

std::vector<Segment> segments_of(std::size_t size, const std::vector<Pattern::Span>& matches,
                                 bool invert) {
  std::vector<Segment> out;
  std::size_t prev = 0;
  for (const Pattern::Span& m : matches) {
    if (m.begin > prev) out.push_back({prev, m.begin, invert});
    out.push_back({m.begin, m.end, !invert});
    prev = m.end;
  }
  if (prev < size) out.push_back({prev, size, invert});
  return out;
}

std::vector<Segment> apply_behavior(std::vector<Segment> segs, Behavior behavior) {
  std::vector<Segment> out;
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const Segment& s : segs) {
        if (!s.match) out.push_back(s);
      }
      return out;
    case Behavior::kIsolated:
      return segs;
    case Behavior::kMergedWithPrevious:
      for (const Segment& s : segs) {
        if (s.match && !previous_match && !out.empty()) {
          out.back().end = s.end;
        } else {
          out.push_back(s);
        }
        previous_match = s.match;
      }
      return out;
    case Behavior::kMergedWithNext:
      for (auto it = segs.rbegin(); it != segs.rend(); ++it) {
        if (it->match && !previous_match && !out.empty()) {
          out.back().begin = it->begin;
        } else {
          out.push_back(*it);
        }
        previous_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      return out;
    case Behavior::kContiguous:
      for (std::size_t i = 0; i < segs.size(); ++i) {
        if (i > 0 && segs[i].match == previous_match) {
          out.back().end = segs[i].end;
        } else {
          out.push_back(segs[i]);
        }
        previous_match = segs[i].match;
      }
      return out;
  }
  return out;
}

// The spans of the characters for which `pred` holds, one span each.
template <typename Pred>
std::vector<Pattern::Span> char_matches(std::string_view text, Pred pred) {
  std::vector<Pattern::Span> out;
  for (std::size_t pos = 0; pos < text.size();) {
    const Utf8Char ch = decode_utf8(text, pos);
    const std::size_t len = ch.status == Utf8Status::kOk ? ch.len : 1;
    if (ch.status == Utf8Status::kOk && pred(ch.cp)) out.push_back({pos, pos + len});
    pos += len;
  }
  return out;
}

}  // namespace

std::string_view trim_js_spaces(std::string_view s, bool left, bool right) {
  const auto is_space = [](std::string_view t, std::size_t pos, std::size_t& len) {
    const Utf8Char ch = decode_utf8(t, pos);
    len = ch.len;
    return ch.status == Utf8Status::kOk && is_js_space(ch.cp);
  };
  std::size_t len = 0;
  while (left && !s.empty() && is_space(s, 0, len)) s.remove_prefix(len);
  while (right && !s.empty()) {
    const std::size_t start = char_start_before(s, s.size());
    if (!is_space(s, start, len) || start + len != s.size()) break;
    s.remove_suffix(len);
  }
  return s;
}

// ---- Pattern ----

Pattern Pattern::from_json(const json& j, const JsonPlace& at) {
  expect_object(j, at);
  Pattern p;
  if (const auto it = j.find("String"); it != j.end()) {
    FERRY_FORMAT_EXPECT(it->is_string(), "{}: {}.String must be a string", at.source, at.path);
    p.literal_ = it->get<std::string>();
    return p;
  }
  const auto it = j.find("Regex");
  FERRY_FORMAT_EXPECT(it != j.end() && it->is_string(),
                      "{}: {} must be {{\"String\": ...}} or {{\"Regex\": ...}}, not {}", at.source,
                      at.path, j.dump());
  try {
    p.regex_ = std::make_shared<const Regex>(it->get<std::string>());
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{}: {}.Regex: {}", at.source, at.path, e.what()));
  }
  return p;
}

Pattern Pattern::literal(std::string text) {
  Pattern p;
  p.literal_ = std::move(text);
  return p;
}

std::vector<Pattern::Span> Pattern::find_all(std::string_view text) const {
  std::vector<Span> out;
  if (regex_) {
    for (const Regex::Span& s : regex_->find_all(text)) out.push_back({s.begin, s.end});
    return out;
  }
  if (literal_.empty()) return out;
  for (std::size_t pos = text.find(literal_); pos != std::string_view::npos;
       pos = text.find(literal_, pos + literal_.size())) {
    out.push_back({pos, pos + literal_.size()});
  }
  return out;
}

std::string Pattern::replace_all(std::string_view text, std::string_view content) const {
  std::string out;
  std::size_t prev = 0;
  for (const Span& s : find_all(text)) {
    out.append(text.substr(prev, s.begin - prev));
    out.append(content);
    prev = s.end;
  }
  out.append(text.substr(prev));
  return out;
}

// ---- Normalizer ----

struct Normalizer::Step {
  enum class Kind : std::uint8_t { kNfc, kNfd, kPrepend, kReplace, kStrip };
  Kind kind;
  std::string text;  // kPrepend: what goes in front; kReplace: the replacement
  Pattern pattern;
  bool left = false;
  bool right = false;
};

Normalizer Normalizer::from_json(const json& j, const JsonPlace& at) {
  Normalizer n;
  if (j.is_null()) return n;
  const std::string type = type_of(j, at);
  auto step = std::make_shared<Step>();
  if (type == "Sequence") {
    for_each_member(j, "normalizers", at, [&](const json& member, const JsonPlace& place) {
      const Normalizer inner = from_json(member, place);
      n.steps_.insert(n.steps_.end(), inner.steps_.begin(), inner.steps_.end());
    });
    return n;
  }
  if (type == "NFC") {
    step->kind = Step::Kind::kNfc;
  } else if (type == "NFD") {
    step->kind = Step::Kind::kNfd;
  } else if (type == "Prepend") {
    step->kind = Step::Kind::kPrepend;
    step->text = string_field(j, "prepend", at, std::nullopt);
  } else if (type == "Replace") {
    step->kind = Step::Kind::kReplace;
    FERRY_FORMAT_EXPECT(j.contains("pattern"), "{}: {} has no \"pattern\"", at.source, at.path);
    step->pattern = Pattern::from_json(j["pattern"], at / "pattern");
    step->text = string_field(j, "content", at, std::nullopt);
  } else if (type == "Strip") {
    step->kind = Step::Kind::kStrip;
    step->left = bool_field(j, "strip_left", at, true);
    step->right = bool_field(j, "strip_right", at, true);
  } else {
    refuse_type(at, type,
                "normalizers Sequence, NFC, NFD, Prepend, Replace "
                "and Strip");
  }
  n.steps_.push_back(std::move(step));
  return n;
}

std::string Normalizer::apply(std::string_view text) const {
  std::string s(text);
  for (const auto& step : steps_) {
    switch (step->kind) {
      case Step::Kind::kNfc:
        s = to_nfc(s);
        break;
      case Step::Kind::kNfd:
        s = to_nfd(s);
        break;
      case Step::Kind::kPrepend:
        if (!s.empty()) s.insert(0, step->text);
        break;
      case Step::Kind::kReplace:
        s = step->pattern.replace_all(s, step->text);
        break;
      case Step::Kind::kStrip:
        s = std::string(trim_js_spaces(s, step->left, step->right));
        break;
    }
  }
  return s;
}

// ---- PreTokenizer ----

struct PreTokenizer::Step {
  enum class Kind : std::uint8_t { kSplit, kByteLevel, kMetaspace, kDigits, kWhitespaceSplit };
  enum class Prepend : std::uint8_t { kAlways, kFirst, kNever };
  Kind kind;
  Pattern pattern;  // kSplit
  Behavior behavior = Behavior::kIsolated;
  bool invert = false;
  bool add_prefix_space = false;  // kByteLevel
  bool use_regex = true;          // kByteLevel
  std::string replacement;        // kMetaspace
  Prepend prepend = Prepend::kAlways;
  bool split = true;               // kMetaspace
  bool individual_digits = false;  // kDigits
};

PreTokenizer PreTokenizer::from_json(const json& j, const JsonPlace& at) {
  PreTokenizer p;
  if (j.is_null()) return p;
  const std::string type = type_of(j, at);
  auto step = std::make_shared<Step>();
  if (type == "Sequence") {
    for_each_member(j, "pretokenizers", at, [&](const json& member, const JsonPlace& place) {
      const PreTokenizer inner = from_json(member, place);
      FERRY_FORMAT_EXPECT(!p.byte_level_,
                          "{}: {} comes after ByteLevel; ferry needs ByteLevel to be the last "
                          "pre-tokenizer",
                          at.source, place.path);
      p.steps_.insert(p.steps_.end(), inner.steps_.begin(), inner.steps_.end());
      p.byte_level_ = inner.byte_level_;
    });
    return p;
  }
  if (type == "Split") {
    step->kind = Step::Kind::kSplit;
    FERRY_FORMAT_EXPECT(j.contains("pattern"), "{}: {} has no \"pattern\"", at.source, at.path);
    step->pattern = Pattern::from_json(j["pattern"], at / "pattern");
    const std::string behavior = string_field(j, "behavior", at, "Isolated");
    const std::pair<const char*, Behavior> kBehaviors[] = {
        {"Removed", Behavior::kRemoved},
        {"Isolated", Behavior::kIsolated},
        {"MergedWithPrevious", Behavior::kMergedWithPrevious},
        {"MergedWithNext", Behavior::kMergedWithNext},
        {"Contiguous", Behavior::kContiguous}};
    const auto* found = std::find_if(std::begin(kBehaviors), std::end(kBehaviors),
                                     [&](const auto& b) { return behavior == b.first; });
    FERRY_FORMAT_EXPECT(found != std::end(kBehaviors),
                        "{}: {}.behavior is {}; expected Removed, Isolated, MergedWithPrevious, "
                        "MergedWithNext or Contiguous",
                        at.source, at.path, shown(behavior));
    step->behavior = found->second;
    step->invert = bool_field(j, "invert", at, false);
  } else if (type == "ByteLevel") {
    step->kind = Step::Kind::kByteLevel;
    step->add_prefix_space = bool_field(j, "add_prefix_space", at, false);
    step->use_regex = bool_field(j, "use_regex", at, true);
    p.byte_level_ = true;
  } else if (type == "Metaspace") {
    step->kind = Step::Kind::kMetaspace;
    step->replacement = replacement_field(j, at);
    if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
      const std::string scheme = string_field(j, "prepend_scheme", at, std::nullopt);
      if (scheme == "always") {
        step->prepend = Step::Prepend::kAlways;
      } else if (scheme == "first") {
        step->prepend = Step::Prepend::kFirst;
      } else if (scheme == "never") {
        step->prepend = Step::Prepend::kNever;
      } else {
        throw FormatError(
            fmt::format("{}: {}.prepend_scheme is {}; expected first, always or never", at.source,
                        at.path, shown(scheme)));
      }
    } else {
      // Files written before prepend_scheme existed say add_prefix_space.
      step->prepend = bool_field(j, "add_prefix_space", at, true) ? Step::Prepend::kAlways
                                                                  : Step::Prepend::kNever;
    }
    step->split = bool_field(j, "split", at, true);
  } else if (type == "Digits") {
    step->kind = Step::Kind::kDigits;
    step->individual_digits = bool_field(j, "individual_digits", at, false);
  } else if (type == "WhitespaceSplit") {
    step->kind = Step::Kind::kWhitespaceSplit;
  } else {
    refuse_type(at, type,
                "pre-tokenizers Sequence, Split, ByteLevel, "
                "Metaspace, Digits and WhitespaceSplit");
  }
  p.steps_.push_back(std::move(step));
  return p;
}

PreTokenizer PreTokenizer::gpt2() {
  PreTokenizer p;
  auto step = std::make_shared<Step>();
  step->kind = Step::Kind::kByteLevel;
  p.steps_.push_back(std::move(step));
  p.byte_level_ = true;
  return p;
}

bool PreTokenizer::is_gpt2() const {
  return steps_.size() == 1 && steps_[0]->kind == Step::Kind::kByteLevel && steps_[0]->use_regex &&
         !steps_[0]->add_prefix_space;
}

void PreTokenizer::split(std::string_view text, bool first_section, const Emit& emit) const {
  run(0, text, first_section, emit);
}

void PreTokenizer::run(std::size_t index, std::string_view piece, bool at_start,
                       const Emit& emit) const {
  if (piece.empty()) return;
  if (index == steps_.size()) {
    emit(piece);
    return;
  }
  const Step& step = *steps_[index];
  const auto each_segment = [&](const std::vector<Segment>& segs) {
    for (const Segment& s : segs) {
      if (s.end > s.begin) {
        run(index + 1, piece.substr(s.begin, s.end - s.begin), at_start && s.begin == 0, emit);
      }
    }
  };
  switch (step.kind) {
    case Step::Kind::kSplit:
      each_segment(apply_behavior(
          segments_of(piece.size(), step.pattern.find_all(piece), step.invert), step.behavior));
      return;
    case Step::Kind::kDigits: {
      const auto matches =
          char_matches(piece, [](char32_t cp) { return (unicode_props(cp) & kNumberMask) != 0; });
      each_segment(
          apply_behavior(segments_of(piece.size(), matches, false),
                         step.individual_digits ? Behavior::kIsolated : Behavior::kContiguous));
      return;
    }
    case Step::Kind::kWhitespaceSplit: {
      const auto matches = char_matches(
          piece, [](char32_t cp) { return (unicode_props(cp) & kWhiteSpaceBit) != 0; });
      each_segment(apply_behavior(segments_of(piece.size(), matches, false), Behavior::kRemoved));
      return;
    }
    case Step::Kind::kByteLevel: {
      std::string prefixed;
      std::string_view text = piece;
      if (step.add_prefix_space && piece.front() != ' ') {
        prefixed = " " + std::string(piece);
        text = prefixed;
      }
      if (!step.use_regex) {
        run(index + 1, text, at_start, emit);
        return;
      }
      Gpt2PreTokenizer scanner(text);
      while (const std::optional<std::string_view> word = scanner.next()) {
        run(index + 1, *word, at_start && word->data() == text.data(), emit);
      }
      return;
    }
    case Step::Kind::kMetaspace: {
      std::string replaced = Pattern::literal(" ").replace_all(piece, step.replacement);
      const bool prepend = step.prepend == Step::Prepend::kAlways ||
                           (step.prepend == Step::Prepend::kFirst && at_start);
      if (prepend && !replaced.starts_with(step.replacement)) replaced.insert(0, step.replacement);
      if (!step.split) {
        run(index + 1, replaced, at_start, emit);
        return;
      }
      const std::string_view view = replaced;
      const auto matches = Pattern::literal(step.replacement).find_all(view);
      const auto segs =
          apply_behavior(segments_of(view.size(), matches, false), Behavior::kMergedWithNext);
      for (const Segment& s : segs) {
        run(index + 1, view.substr(s.begin, s.end - s.begin), at_start && s.begin == 0, emit);
      }
      return;
    }
  }
}

// ---- Decoder ----

struct Decoder::Step {
  enum class Kind : std::uint8_t { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind;
  Pattern pattern;          // kReplace
  std::string content;      // kReplace: the replacement; kStrip: the character stripped
  std::string replacement;  // kMetaspace
  std::int64_t start = 0;   // kStrip
  std::int64_t stop = 0;
};

Decoder Decoder::from_json(const json& j, const JsonPlace& at) {
  Decoder d;
  if (j.is_null()) {
    d.null_ = true;
    return d;
  }
  const std::string type = type_of(j, at);
  auto step = std::make_shared<Step>();
  if (type == "Sequence") {
    for_each_member(j, "decoders", at, [&](const json& member, const JsonPlace& place) {
      const Decoder inner = from_json(member, place);
      FERRY_FORMAT_EXPECT(!inner.null_, "{}: {} is null", at.source, place.path);
      d.steps_.insert(d.steps_.end(), inner.steps_.begin(), inner.steps_.end());
    });
    return d;
  }
  if (type == "ByteLevel") {
    step->kind = Step::Kind::kByteLevel;
  } else if (type == "Replace") {
    step->kind = Step::Kind::kReplace;
    FERRY_FORMAT_EXPECT(j.contains("pattern"), "{}: {} has no \"pattern\"", at.source, at.path);
    step->pattern = Pattern::from_json(j["pattern"], at / "pattern");
    step->content = string_field(j, "content", at, std::nullopt);
  } else if (type == "ByteFallback") {
    step->kind = Step::Kind::kByteFallback;
  } else if (type == "Fuse") {
    step->kind = Step::Kind::kFuse;
  } else if (type == "Strip") {
    step->kind = Step::Kind::kStrip;
    step->content = string_field(j, "content", at, " ");
    step->start = int_field(j, "start", at, 0);
    step->stop = int_field(j, "stop", at, 0);
    FERRY_FORMAT_EXPECT(step->start >= 0 && step->stop >= 0,
                        "{}: {}: start and stop must not be negative", at.source, at.path);
  } else if (type == "Metaspace") {
    step->kind = Step::Kind::kMetaspace;
    step->replacement = replacement_field(j, at);
  } else {
    refuse_type(at, type,
                "decoders Sequence, ByteLevel, Replace, "
                "ByteFallback, Fuse, Strip and Metaspace");
  }
  d.steps_.push_back(std::move(step));
  return d;
}

Decoder Decoder::byte_level() {
  Decoder d;
  auto step = std::make_shared<Step>();
  step->kind = Step::Kind::kByteLevel;
  d.steps_.push_back(std::move(step));
  return d;
}

bool Decoder::starts_with_byte_level() const {
  return !steps_.empty() && steps_.front()->kind == Step::Kind::kByteLevel;
}

namespace {

// "<0xNN>" → the byte.
std::optional<unsigned char> byte_fallback_value(std::string_view token) {
  if (token.size() != 6 || !token.starts_with("<0x") || token.back() != '>') return std::nullopt;
  unsigned value = 0;
  for (const char h : token.substr(3, 2)) {
    value <<= 4;
    if (h >= '0' && h <= '9') {
      value |= static_cast<unsigned>(h - '0');
    } else if (h >= 'a' && h <= 'f') {
      value |= static_cast<unsigned>(h - 'a' + 10);
    } else if (h >= 'A' && h <= 'F') {
      value |= static_cast<unsigned>(h - 'A' + 10);
    } else {
      return std::nullopt;
    }
  }
  return static_cast<unsigned char>(value);
}

bool is_valid_utf8(std::string_view s) {
  for (std::size_t pos = 0; pos < s.size();) {
    const Utf8Char ch = decode_utf8(s, pos);
    if (ch.status != Utf8Status::kOk) return false;
    pos += ch.len;
  }
  return true;
}

// A token spelled in GPT-2's alphabet → its bytes; a token with a character outside the
// alphabet is kept as its UTF-8, as Hugging Face's ByteLevel decoder does.
std::string alphabet_bytes(const std::string& token) {
  std::optional<std::string> bytes = token_string_to_bytes(token);
  return bytes ? std::move(*bytes) : token;
}

// Removes up to `count` copies of `c` from the front (or the back) of s.
void strip_repeated(std::string& s, std::string_view c, std::int64_t count, bool front) {
  if (c.empty()) return;
  for (std::int64_t i = 0; i < count; ++i) {
    if (front ? !s.starts_with(c) : !s.ends_with(c)) break;
    if (front) {
      s.erase(0, c.size());
    } else {
      s.erase(s.size() - c.size());
    }
  }
}

}  // namespace

std::vector<DecodePiece> Decoder::run(std::vector<DecodePiece> pieces, bool bytes_in,
                                      bool streaming, bool at_start) const {
  if (null_) {
    std::string joined;
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      if (i > 0 || (streaming && !at_start)) joined += ' ';
      joined += pieces[i].text;
    }
    return {{std::move(joined), false}};
  }
  // After Fuse (or ByteLevel, which joins runs of tokens) the first piece is the start of the
  // text; before it, every piece is a token, and a stream's token is never the first piece
  // of a decode unless it starts the stream.
  bool fused = false;
  for (const auto& step_ptr : steps_) {
    const Step& step = *step_ptr;
    switch (step.kind) {
      case Step::Kind::kByteLevel: {
        std::vector<DecodePiece> out;
        std::string run_bytes;
        bool in_run = false;
        for (DecodePiece& p : pieces) {
          if (p.added) {
            if (in_run) out.push_back({std::move(run_bytes), false});
            run_bytes.clear();
            in_run = false;
            out.push_back(std::move(p));
          } else {
            run_bytes += bytes_in ? p.text : alphabet_bytes(p.text);
            in_run = true;
          }
        }
        if (in_run) out.push_back({std::move(run_bytes), false});
        pieces = std::move(out);
        fused = true;
        break;
      }
      case Step::Kind::kReplace:
        for (DecodePiece& p : pieces) p.text = step.pattern.replace_all(p.text, step.content);
        break;
      case Step::Kind::kByteFallback: {
        std::vector<DecodePiece> out;
        std::string bytes;
        std::size_t count = 0;
        const auto flush = [&] {
          if (count == 0) return;
          if (streaming || is_valid_utf8(bytes)) {
            out.push_back({bytes, false});
          } else {
            std::string replacement;
            for (std::size_t i = 0; i < count; ++i) append_utf8(replacement, kReplacementChar);
            out.push_back({std::move(replacement), false});
          }
          bytes.clear();
          count = 0;
        };
        for (DecodePiece& p : pieces) {
          if (const auto b = byte_fallback_value(p.text)) {
            bytes += static_cast<char>(*b);
            ++count;
          } else {
            flush();
            out.push_back(std::move(p));
          }
        }
        flush();
        pieces = std::move(out);
        break;
      }
      case Step::Kind::kFuse: {
        std::string joined;
        for (const DecodePiece& p : pieces) joined += p.text;
        pieces = {{std::move(joined), false}};
        fused = true;
        break;
      }
      case Step::Kind::kStrip:
        for (std::size_t i = 0; i < pieces.size(); ++i) {
          const bool starts_text = streaming ? at_start || !fused : true;
          if (starts_text) strip_repeated(pieces[i].text, step.content, step.start, true);
          if (!streaming || !fused) strip_repeated(pieces[i].text, step.content, step.stop, false);
        }
        break;
      case Step::Kind::kMetaspace:
        for (std::size_t i = 0; i < pieces.size(); ++i) {
          pieces[i].text = Pattern::literal(step.replacement).replace_all(pieces[i].text, " ");
          const bool first = streaming ? at_start : i == 0;
          if (first && pieces[i].text.starts_with(' ')) pieces[i].text.erase(0, 1);
        }
        break;
    }
  }
  return pieces;
}

std::string Decoder::decode(std::vector<DecodePiece> pieces, bool bytes_in) const {
  std::string out;
  for (const DecodePiece& p : run(std::move(pieces), bytes_in, false, true)) out += p.text;
  return out;
}

std::string Decoder::decode_one(DecodePiece piece, bool bytes_in, bool at_start) const {
  std::vector<DecodePiece> pieces;
  pieces.push_back(std::move(piece));
  std::string out;
  for (const DecodePiece& p : run(std::move(pieces), bytes_in, true, at_start)) out += p.text;
  return out;
}

}  // namespace ferry::text::detail
