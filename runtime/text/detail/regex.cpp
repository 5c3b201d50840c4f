#include "runtime/text/detail/regex.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <optional>
#include <utility>

#include "runtime/core/error.hpp"
#include "runtime/text/detail/json_fields.hpp"
#include "runtime/text/detail/unicode_props.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

// A character class: a set of code points given by ranges and Unicode properties.
struct CharSet {
  bool negated = false;
  std::uint32_t props = 0;       // category bits and kWhiteSpaceBit that belong to the set
  bool not_white_space = false;  // \S inside a class: everything that is not White_Space
  std::vector<std::pair<char32_t, char32_t>> ranges;
  std::array<std::uint64_t, 2> ascii{};  // the answer for code points below 128, precomputed

  bool matches_uncached(char32_t cp, std::uint32_t cp_props) const {
    bool in = (props & cp_props) != 0 || (not_white_space && (cp_props & kWhiteSpaceBit) == 0);
    for (std::size_t i = 0; !in && i < ranges.size(); ++i) {
      in = cp >= ranges[i].first && cp <= ranges[i].second;
    }
    return in != negated;
  }
  void finish() {
    for (char32_t c = 0; c < 128; ++c) {
      if (matches_uncached(c, kAsciiProps[c])) ascii[c >> 6] |= std::uint64_t{1} << (c & 63);
    }
  }
  bool matches(char32_t cp, std::uint32_t cp_props) const {
    if (cp < 128) return (ascii[cp >> 6] >> (cp & 63)) & 1;
    return matches_uncached(cp, cp_props);
  }
};

struct Node {
  enum class Kind : std::uint8_t { kEmpty, kChar, kSet, kAny, kConcat, kAlt, kRepeat, kLook };
  Kind kind = Kind::kEmpty;
  char32_t c = 0;      // kChar
  char32_t c_alt = 0;  // kChar: the other ASCII case inside (?i:...), else c
  std::int32_t set = -1;
  std::vector<Node> children;
  std::int32_t min = 0;
  std::int32_t max = -1;  // -1: unbounded
  bool greedy = true;
  bool negate = false;  // kLook: (?!...) rather than (?=...)

  bool single_char() const {
    return kind == Kind::kChar || kind == Kind::kSet || kind == Kind::kAny;
  }
  bool nullable() const {
    switch (kind) {
      case Kind::kEmpty:
      case Kind::kLook:
        return true;
      case Kind::kChar:
      case Kind::kSet:
      case Kind::kAny:
        return false;
      case Kind::kConcat:
        return std::all_of(children.begin(), children.end(),
                           [](const Node& n) { return n.nullable(); });
      case Kind::kAlt:
        return std::any_of(children.begin(), children.end(),
                           [](const Node& n) { return n.nullable(); });
      case Kind::kRepeat:
        return min == 0 || children[0].nullable();
    }
    return true;
  }
};

enum class Op : std::uint8_t { kChar, kSet, kAny, kSplit, kJmp, kRepeat, kLook, kMatch };

struct Inst {
  Op op;
  Op atom = Op::kChar;  // kRepeat: what one repetition matches
  bool negate = false;  // kLook
  char32_t c = 0;
  char32_t c_alt = 0;
  std::int32_t set = -1;
  std::int32_t x = 0;  // kSplit: preferred branch; kJmp: target; kLook: sub-program
  std::int32_t y = 0;  // kSplit: other branch; kLook: continuation
  std::int32_t min = 0;
  std::int32_t max = -1;
};

constexpr char32_t kRawByte = 0x110000;  // an ill-formed byte, as a code point no class names

std::string lowered_name(std::string_view name) {
  std::string out;
  for (const char ch : name) {
    if (ch == '_' || ch == ' ' || ch == '-') continue;
    out += static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch);
  }
  return out;
}

// \p{name}: the property bits, or nullopt for a name this engine does not know.
std::optional<std::uint32_t> property_bits(std::string_view name) {
  using G = GeneralCategory;
  struct Entry {
    const char* short_name;
    const char* long_name;
    std::uint32_t bits;
  };
  static const std::array<Entry, 41> kProperties{{
      {"l", "letter", kLetterMask},
      {"lu", "uppercaseletter", category_bit(G::kLu)},
      {"ll", "lowercaseletter", category_bit(G::kLl)},
      {"lt", "titlecaseletter", category_bit(G::kLt)},
      {"lm", "modifierletter", category_bit(G::kLm)},
      {"lo", "otherletter", category_bit(G::kLo)},
      {"lc", "casedletter", category_mask({G::kLu, G::kLl, G::kLt})},
      {"m", "mark", kMarkMask},
      {"mn", "nonspacingmark", category_bit(G::kMn)},
      {"mc", "spacingmark", category_bit(G::kMc)},
      {"me", "enclosingmark", category_bit(G::kMe)},
      {"n", "number", kNumberMask},
      {"nd", "decimalnumber", category_bit(G::kNd)},
      {"nl", "letternumber", category_bit(G::kNl)},
      {"no", "othernumber", category_bit(G::kNo)},
      {"p", "punctuation", kPunctuationMask},
      {"pc", "connectorpunctuation", category_bit(G::kPc)},
      {"pd", "dashpunctuation", category_bit(G::kPd)},
      {"ps", "openpunctuation", category_bit(G::kPs)},
      {"pe", "closepunctuation", category_bit(G::kPe)},
      {"pi", "initialpunctuation", category_bit(G::kPi)},
      {"pf", "finalpunctuation", category_bit(G::kPf)},
      {"po", "otherpunctuation", category_bit(G::kPo)},
      {"s", "symbol", kSymbolMask},
      {"sm", "mathsymbol", category_bit(G::kSm)},
      {"sc", "currencysymbol", category_bit(G::kSc)},
      {"sk", "modifiersymbol", category_bit(G::kSk)},
      {"so", "othersymbol", category_bit(G::kSo)},
      {"z", "separator", kSeparatorMask},
      {"zs", "spaceseparator", category_bit(G::kZs)},
      {"zl", "lineseparator", category_bit(G::kZl)},
      {"zp", "paragraphseparator", category_bit(G::kZp)},
      {"c", "other", kOtherMask},
      {"cc", "control", category_bit(G::kCc)},
      {"cf", "format", category_bit(G::kCf)},
      {"cs", "surrogate", category_bit(G::kCs)},
      {"co", "privateuse", category_bit(G::kCo)},
      {"cn", "unassigned", category_bit(G::kCn)},
      {"whitespace", "space", kWhiteSpaceBit},
      {"any", "any", kAllCategoriesMask},
      {"combiningmark", "combiningmark", kMarkMask},
  }};
  const std::string key = lowered_name(name);
  for (const Entry& e : kProperties) {
    if (key == e.short_name || key == e.long_name) return e.bits;
  }
  return std::nullopt;
}

// \w as Oniguruma has it for Unicode: letters, marks, decimal digits, connector punctuation
// (and letter numbers, which Alphabetic includes).
constexpr std::uint32_t kWordBits =
    kLetterMask | kMarkMask |
    category_mask({GeneralCategory::kNd, GeneralCategory::kNl, GeneralCategory::kPc});

class Parser {
 public:
  Parser(std::string_view pattern, std::vector<CharSet>& sets) : pattern_(pattern), sets_(sets) {
    for (std::size_t pos = 0; pos < pattern.size();) {
      const Utf8Char ch = decode_utf8(pattern, pos);
      if (ch.status != Utf8Status::kOk) fail(pos, "the pattern is not valid UTF-8");
      cps_.push_back(ch.cp);
      offsets_.push_back(pos);
      pos += ch.len;
    }
    offsets_.push_back(pattern.size());
  }

  Node parse() {
    Node root = parse_alternation();
    if (i_ < cps_.size()) fail(i_, "unbalanced ')'");
    return root;
  }

 private:
  [[noreturn]] void fail(std::size_t index, std::string_view what) const {
    const std::size_t offset = index < offsets_.size() ? offsets_[index] : pattern_.size();
    throw FormatError(
        fmt::format("regex {}: {} at offset {}; ferry understands the subset of "
                    "Oniguruma that Hugging Face pre-tokenizer patterns use",
                    shown(pattern_, 300), what, offset));
  }
  bool at_end() const { return i_ >= cps_.size(); }
  char32_t peek(std::size_t ahead = 0) const {
    return i_ + ahead < cps_.size() ? cps_[i_ + ahead] : char32_t{0};
  }
  bool lookahead(std::u32string_view s) const {
    for (std::size_t k = 0; k < s.size(); ++k) {
      if (i_ + k >= cps_.size() || cps_[i_ + k] != s[k]) return false;
    }
    return true;
  }

  Node parse_alternation() {
    Node first = parse_concat();
    if (at_end() || peek() != U'|') return first;
    Node alt;
    alt.kind = Node::Kind::kAlt;
    alt.children.push_back(std::move(first));
    while (!at_end() && peek() == U'|') {
      ++i_;
      alt.children.push_back(parse_concat());
    }
    return alt;
  }

  Node parse_concat() {
    Node seq;
    seq.kind = Node::Kind::kConcat;
    while (!at_end() && peek() != U'|' && peek() != U')')
      seq.children.push_back(parse_quantified());
    if (seq.children.size() == 1) return std::move(seq.children[0]);
    if (seq.children.empty()) seq.kind = Node::Kind::kEmpty;
    return seq;
  }

  // {n}, {n,}, {n,m}, {,m} at i_; false (nothing consumed) when it is not one, as then '{'
  // is a literal.
  bool parse_braces(std::int32_t& min, std::int32_t& max) {
    std::size_t k = i_ + 1;
    const auto number = [&](std::int32_t& out) {
      const std::size_t start = k;
      std::int64_t v = 0;
      while (k < cps_.size() && cps_[k] >= U'0' && cps_[k] <= U'9' && v < 100000) {
        v = v * 10 + (cps_[k++] - U'0');
      }
      out = static_cast<std::int32_t>(v);
      return k > start;
    };
    std::int32_t lo = 0, hi = -1;
    const bool has_lo = number(lo);
    if (k < cps_.size() && cps_[k] == U',') {
      ++k;
      if (!number(hi)) hi = -1;
      if (!has_lo && hi < 0) return false;
    } else {
      if (!has_lo) return false;
      hi = lo;
    }
    if (k >= cps_.size() || cps_[k] != U'}') return false;
    if (hi >= 0 && hi < lo) fail(i_, "a repetition {n,m} with m < n");
    if (lo > 1000 || hi > 1000) fail(i_, "a repetition count over 1000");
    i_ = k + 1;
    min = lo;
    max = hi;
    return true;
  }

  Node parse_quantified() {
    Node atom = parse_atom();
    for (;;) {
      std::int32_t min = 0, max = -1;
      const std::size_t at = i_;
      if (at_end()) break;
      if (peek() == U'*') {
        ++i_;
      } else if (peek() == U'+') {
        min = 1;
        ++i_;
      } else if (peek() == U'?') {
        max = 1;
        ++i_;
      } else if (peek() == U'{' && parse_braces(min, max)) {
      } else {
        break;
      }
      if (atom.kind == Node::Kind::kLook || atom.kind == Node::Kind::kEmpty) {
        fail(at, "a quantifier after an assertion or nothing");
      }
      Node rep;
      rep.kind = Node::Kind::kRepeat;
      rep.min = min;
      rep.max = max;
      if (!at_end() && peek() == U'?') {
        rep.greedy = false;
        ++i_;
      } else if (!at_end() && peek() == U'+') {
        // Possessive: matched greedily, as transformers.js (the reference) does.
        ++i_;
      }
      if (max != 0 && atom.nullable() && max < 0) {
        fail(at, "an unbounded repetition of something that can match nothing");
      }
      rep.children.push_back(std::move(atom));
      atom = std::move(rep);
    }
    return atom;
  }

  Node char_node(char32_t c) const {
    Node n;
    n.kind = Node::Kind::kChar;
    n.c = c;
    n.c_alt = c;
    if (fold_) {
      if (c >= U'a' && c <= U'z') n.c_alt = c - U'a' + U'A';
      if (c >= U'A' && c <= U'Z') n.c_alt = c - U'A' + U'a';
    }
    return n;
  }

  Node set_node(CharSet set) {
    if (fold_) {
      // ASCII letters only, as transformers.js folds (?i:...).
      const auto ranges = set.ranges;
      for (const auto& [lo, hi] : ranges) {
        for (const auto& [from, to] : {std::pair{U'a', U'A'}, std::pair{U'A', U'a'}}) {
          const char32_t a = std::max(lo, from), b = std::min(hi, static_cast<char32_t>(from + 25));
          if (a <= b) set.ranges.emplace_back(a - from + to, b - from + to);
        }
      }
    }
    set.finish();
    sets_.push_back(std::move(set));
    Node n;
    n.kind = Node::Kind::kSet;
    n.set = static_cast<std::int32_t>(sets_.size() - 1);
    return n;
  }

  Node parse_group() {
    const std::size_t open = i_;
    ++i_;  // '('
    const bool saved_fold = fold_;
    Node look;
    bool is_look = false;
    if (lookahead(U"?:") || lookahead(U"?>")) {
      i_ += 2;  // atomic groups are plain groups, as in transformers.js
    } else if (lookahead(U"?i:")) {
      i_ += 3;
      fold_ = true;
    } else if (lookahead(U"?=") || lookahead(U"?!")) {
      look.kind = Node::Kind::kLook;
      look.negate = peek(1) == U'!';
      is_look = true;
      i_ += 2;
    } else if (lookahead(U"?<=") || lookahead(U"?<!")) {
      fail(open, "a look-behind assertion");
    } else if (lookahead(U"?<") || lookahead(U"?P<")) {
      while (!at_end() && peek() != U'>') ++i_;  // a named group: its name does not matter
      if (at_end()) fail(open, "an unterminated group name");
      ++i_;
    } else if (peek() == U'?') {
      fail(open, "this group option");
    }
    Node body = parse_alternation();
    if (at_end() || peek() != U')') fail(open, "an unclosed '('");
    ++i_;
    fold_ = saved_fold;
    if (!is_look) return body;
    look.children.push_back(std::move(body));
    return look;
  }

  std::uint32_t hex_value(std::size_t digits, std::size_t at) {
    std::uint32_t v = 0;
    for (std::size_t k = 0; k < digits; ++k) {
      const char32_t h = peek();
      std::uint32_t d = 0;
      if (h >= U'0' && h <= U'9') {
        d = h - U'0';
      } else if (h >= U'a' && h <= U'f') {
        d = h - U'a' + 10;
      } else if (h >= U'A' && h <= U'F') {
        d = h - U'A' + 10;
      } else {
        fail(at, "a bad hexadecimal escape");
      }
      v = v * 16 + d;
      ++i_;
    }
    return v;
  }

  // After a backslash (i_ at the letter): a single code point, or nullopt when the escape
  // stands for a class (then `set` holds it).
  std::optional<char32_t> parse_escape(CharSet& set, bool& set_negated) {
    const std::size_t at = i_ - 1;
    if (at_end()) fail(at, "a trailing backslash");
    const char32_t e = peek();
    ++i_;
    set_negated = false;
    switch (e) {
      case U'n':
        return U'\n';
      case U'r':
        return U'\r';
      case U't':
        return U'\t';
      case U'f':
        return U'\f';
      case U'v':
        return U'\v';
      case U'a':
        return U'\a';
      case U'e':
        return char32_t{0x1B};
      case U'0':
        return char32_t{0};
      case U'x':
        if (peek() == U'{') {
          ++i_;
          std::uint32_t v = 0;
          std::size_t n = 0;
          while (!at_end() && peek() != U'}' && n < 8) {
            v = v * 16 + hex_value(1, at);
            ++n;
          }
          if (at_end() || peek() != U'}' || n == 0 || v > 0x10FFFF) fail(at, "a bad \\x{...}");
          ++i_;
          return v;
        }
        return hex_value(2, at);
      case U'u':
        return hex_value(4, at);
      case U's':
      case U'S':
        set.props = kWhiteSpaceBit;
        set_negated = e == U'S';
        return std::nullopt;
      case U'd':
      case U'D':
        set.props = category_bit(GeneralCategory::kNd);
        set_negated = e == U'D';
        return std::nullopt;
      case U'w':
      case U'W':
        set.props = kWordBits;
        set_negated = e == U'W';
        return std::nullopt;
      case U'h':
      case U'H':
        set.ranges = {{U'0', U'9'}, {U'a', U'f'}, {U'A', U'F'}};
        set_negated = e == U'H';
        return std::nullopt;
      case U'p':
      case U'P': {
        std::string name;
        if (peek() == U'{') {
          ++i_;
          while (!at_end() && peek() != U'}') append_utf8(name, cps_[i_++]);
          if (at_end()) fail(at, "an unterminated \\p{");
          ++i_;
        } else if (!at_end()) {
          append_utf8(name, cps_[i_++]);
        }
        bool negated = e == U'P';
        if (!name.empty() && name[0] == '^') {
          negated = !negated;
          name.erase(0, 1);
        }
        const std::optional<std::uint32_t> bits = property_bits(name);
        if (!bits) fail(at, fmt::format("the property \\p{{{}}}", name));
        set.props = *bits;
        set_negated = negated;
        return std::nullopt;
      }
      default:
        break;
    }
    if ((e >= U'0' && e <= U'9') || (e >= U'a' && e <= U'z') || (e >= U'A' && e <= U'Z')) {
      fail(at, fmt::format("the escape \\{}", static_cast<char>(e)));  // \b \A \z \G \1 ...
    }
    return e;  // an escaped punctuation character stands for itself
  }

  // A negated escape used inside a class, made an item of `into`.
  void add_class_escape(CharSet& into, const CharSet& escape, bool negated, std::size_t at) {
    if (!negated) {
      into.props |= escape.props;
      into.ranges.insert(into.ranges.end(), escape.ranges.begin(), escape.ranges.end());
      return;
    }
    if (escape.props == kWhiteSpaceBit) {
      into.not_white_space = true;
    } else if ((escape.props & kWhiteSpaceBit) == 0 && escape.ranges.empty()) {
      into.props |= kAllCategoriesMask & ~escape.props;  // one category per code point
    } else {
      fail(at, "this negated escape inside a character class");
    }
  }

  Node parse_class() {
    const std::size_t open = i_;
    ++i_;  // '['
    CharSet set;
    if (peek() == U'^') {
      set.negated = true;
      ++i_;
    }
    bool first = true;
    for (;;) {
      if (at_end()) fail(open, "an unclosed '['");
      const char32_t ch = peek();
      if (ch == U']' && !first) {
        ++i_;
        break;
      }
      first = false;
      if (ch == U'[') fail(i_, "a nested or POSIX character class");
      if (ch == U'&' && peek(1) == U'&') fail(i_, "a class intersection (&&)");
      char32_t lo = 0;
      if (ch == U'\\') {
        const std::size_t at = i_;
        ++i_;
        CharSet escape;
        bool negated = false;
        const std::optional<char32_t> c = parse_escape(escape, negated);
        if (!c) {
          add_class_escape(set, escape, negated, at);
          continue;
        }
        lo = *c;
      } else {
        lo = ch;
        ++i_;
      }
      char32_t hi = lo;
      if (peek() == U'-' && peek(1) != U']' && i_ + 1 < cps_.size()) {
        const std::size_t at = i_;
        ++i_;
        if (peek() == U'\\') {
          ++i_;
          CharSet escape;
          bool negated = false;
          const std::optional<char32_t> c = parse_escape(escape, negated);
          if (!c) fail(at, "a range ending in a class escape");
          hi = *c;
        } else {
          hi = peek();
          ++i_;
        }
        if (hi < lo) fail(at, "a range out of order");
      }
      set.ranges.emplace_back(lo, hi);
    }
    return set_node(std::move(set));
  }

  Node parse_atom() {
    const char32_t ch = peek();
    switch (ch) {
      case U'(':
        return parse_group();
      case U'[':
        return parse_class();
      case U'.': {
        ++i_;
        Node n;
        n.kind = Node::Kind::kAny;
        return n;
      }
      case U'^':
      case U'$':
        fail(i_, "an anchor ('^' or '$')");
      case U'*':
      case U'+':
      case U'?':
        fail(i_, "a quantifier with nothing before it");
      case U'\\': {
        ++i_;
        CharSet set;
        bool negated = false;
        const std::optional<char32_t> c = parse_escape(set, negated);
        if (c) return char_node(*c);
        set.negated = negated;
        return set_node(std::move(set));
      }
      default:
        ++i_;
        return char_node(ch);
    }
  }

  std::string_view pattern_;
  std::vector<CharSet>& sets_;
  std::vector<char32_t> cps_;
  std::vector<std::size_t> offsets_;
  std::size_t i_ = 0;
  bool fold_ = false;
};

}  // namespace

struct Regex::Program {
  std::string pattern;
  std::vector<CharSet> sets;
  std::vector<Inst> code;

  void emit_single(const Node& n, Inst& inst) const {
    switch (n.kind) {
      case Node::Kind::kChar:
        inst.atom = Op::kChar;
        inst.c = n.c;
        inst.c_alt = n.c_alt;
        break;
      case Node::Kind::kSet:
        inst.atom = Op::kSet;
        inst.set = n.set;
        break;
      default:
        inst.atom = Op::kAny;
        break;
    }
  }

  std::int32_t here() const { return static_cast<std::int32_t>(code.size()); }

  void compile(const Node& n) {
    switch (n.kind) {
      case Node::Kind::kEmpty:
        return;
      case Node::Kind::kChar:
      case Node::Kind::kSet:
      case Node::Kind::kAny: {
        Inst inst{};
        emit_single(n, inst);
        inst.op = inst.atom;
        code.push_back(inst);
        return;
      }
      case Node::Kind::kConcat:
        for (const Node& child : n.children) compile(child);
        return;
      case Node::Kind::kAlt: {
        // split L1, next; L1: a; jmp end; next: split L2, next2; ...
        std::vector<std::size_t> jumps;
        for (std::size_t k = 0; k < n.children.size(); ++k) {
          if (k + 1 == n.children.size()) {
            compile(n.children[k]);
            break;
          }
          const std::size_t split = code.size();
          code.push_back({Op::kSplit});
          code[split].x = here();
          compile(n.children[k]);
          jumps.push_back(code.size());
          code.push_back({Op::kJmp});
          code[split].y = here();
        }
        for (const std::size_t j : jumps) code[j].x = here();
        return;
      }
      case Node::Kind::kRepeat: {
        const Node& body = n.children[0];
        if (body.single_char() && n.greedy) {
          Inst inst{};
          inst.op = Op::kRepeat;
          emit_single(body, inst);
          inst.min = n.min;
          inst.max = n.max;
          code.push_back(inst);
          return;
        }
        for (std::int32_t k = 0; k < n.min; ++k) compile(body);
        if (n.max < 0) {
          const std::size_t split = code.size();
          code.push_back({Op::kSplit});
          const std::int32_t body_start = here();
          compile(body);
          code.push_back({Op::kJmp});
          code.back().x = static_cast<std::int32_t>(split);
          code[split].x = n.greedy ? body_start : here();
          code[split].y = n.greedy ? here() : body_start;
          return;
        }
        std::vector<std::size_t> splits;
        for (std::int32_t k = n.min; k < n.max; ++k) {
          splits.push_back(code.size());
          code.push_back({Op::kSplit});
          const std::int32_t body_start = here();
          compile(body);
          code[splits.back()].x = body_start;
        }
        for (const std::size_t s : splits) {
          code[s].y = here();
          if (!n.greedy) std::swap(code[s].x, code[s].y);
        }
        return;
      }
      case Node::Kind::kLook: {
        const std::size_t look = code.size();
        code.push_back({Op::kLook});
        code[look].negate = n.negate;
        code[look].x = here();
        compile(n.children[0]);
        code.push_back({Op::kMatch});
        code[look].y = here();
        return;
      }
    }
  }
};

namespace {

struct Text {
  std::vector<char32_t> cps;
  std::vector<std::uint32_t> props;
  std::vector<std::size_t> offsets;  // byte offset of each character, then the text's size
};

Text decode_text(std::string_view s) {
  Text t;
  t.cps.reserve(s.size());
  t.props.reserve(s.size());
  t.offsets.reserve(s.size() + 1);
  for (std::size_t pos = 0; pos < s.size();) {
    const auto byte = static_cast<unsigned char>(s[pos]);
    t.offsets.push_back(pos);
    if (byte < 0x80) {
      t.cps.push_back(byte);
      t.props.push_back(kAsciiProps[byte]);
      ++pos;
      continue;
    }
    const Utf8Char ch = decode_utf8(s, pos);
    if (ch.status == Utf8Status::kOk) {
      t.cps.push_back(ch.cp);
      t.props.push_back(unicode_props(ch.cp));
      pos += ch.len;
    } else {
      t.cps.push_back(kRawByte + byte);
      t.props.push_back(category_bit(GeneralCategory::kCn));
      ++pos;
    }
  }
  t.offsets.push_back(s.size());
  return t;
}

class Matcher {
 public:
  Matcher(const Regex::Program& p, const Text& t) : p_(p), t_(t) {}

  // The end of the match that starts at `pos` (the preferred one, as a backtracking engine
  // finds it), or -1.
  std::int64_t run(std::int32_t pc, std::int64_t pos) {
    const std::size_t base = stack_.size();
    const auto n = static_cast<std::int64_t>(t_.cps.size());
    for (;;) {
      const Inst& inst = p_.code[static_cast<std::size_t>(pc)];
      bool ok = true;
      switch (inst.op) {
        case Op::kChar:
        case Op::kSet:
        case Op::kAny:
          ok = pos < n && one(inst, inst.op, pos);
          if (ok) {
            ++pos;
            ++pc;
          }
          break;
        case Op::kSplit:
          stack_.push_back({inst.y, pos, -1});
          pc = inst.x;
          break;
        case Op::kJmp:
          pc = inst.x;
          break;
        case Op::kRepeat: {
          std::int64_t k = 0;
          while ((inst.max < 0 || k < inst.max) && pos + k < n && one(inst, inst.atom, pos + k))
            ++k;
          ok = k >= inst.min;
          if (ok) {
            if (k > inst.min) stack_.push_back({pc, pos, k - 1});
            pos += k;
            ++pc;
          }
          break;
        }
        case Op::kLook: {
          const bool found = run(inst.x, pos) >= 0;
          ok = found != inst.negate;
          if (ok) pc = inst.y;
          break;
        }
        case Op::kMatch:
          stack_.resize(base);
          return pos;
      }
      if (ok) continue;
      if (stack_.size() == base) return -1;
      const Frame f = stack_.back();
      stack_.pop_back();
      if (f.count < 0) {
        pc = f.pc;
        pos = f.pos;
      } else {
        // A greedy repetition gives back one more character.
        const Inst& rep = p_.code[static_cast<std::size_t>(f.pc)];
        if (f.count > rep.min) stack_.push_back({f.pc, f.pos, f.count - 1});
        pos = f.pos + f.count;
        pc = f.pc + 1;
      }
    }
  }

 private:
  struct Frame {
    std::int32_t pc;
    std::int64_t pos;
    std::int64_t count;  // >= 0: retry the kRepeat at pc with this many repetitions
  };

  bool one(const Inst& inst, Op atom, std::int64_t pos) const {
    const char32_t cp = t_.cps[static_cast<std::size_t>(pos)];
    switch (atom) {
      case Op::kChar:
        return cp == inst.c || cp == inst.c_alt;
      case Op::kSet:
        return p_.sets[static_cast<std::size_t>(inst.set)].matches(
            cp, t_.props[static_cast<std::size_t>(pos)]);
      default:
        return cp != U'\n';
    }
  }

  const Regex::Program& p_;
  const Text& t_;
  std::vector<Frame> stack_;
};

}  // namespace

Regex::Regex(std::string_view pattern) {
  auto program = std::make_shared<Program>();
  program->pattern = std::string(pattern);
  Parser parser(pattern, program->sets);
  const Node root = parser.parse();
  program->compile(root);
  program->code.push_back({Op::kMatch});
  program_ = std::move(program);
}

std::vector<Regex::Span> Regex::find_all(std::string_view text) const {
  const Text t = decode_text(text);
  Matcher matcher(*program_, t);
  std::vector<Span> spans;
  const auto n = static_cast<std::int64_t>(t.cps.size());
  for (std::int64_t pos = 0; pos < n;) {
    const std::int64_t end = matcher.run(0, pos);
    if (end > pos) {
      spans.push_back(
          {t.offsets[static_cast<std::size_t>(pos)], t.offsets[static_cast<std::size_t>(end)]});
      pos = end;
    } else {
      ++pos;
    }
  }
  return spans;
}

const std::string& Regex::pattern() const { return program_->pattern; }

}  // namespace ferry::text::detail
