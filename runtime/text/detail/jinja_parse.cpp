// Lexer and parser for the chat-template subset of Jinja2. The lexer applies whitespace control
// as Jinja does with trim_blocks and lstrip_blocks ({%- -%} strip all whitespace, a block's
// newline is eaten, a block alone on its line loses its indentation), so the parser sees the
// text exactly as it will be printed. Every error names the template's line.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <string_view>

#include "runtime/text/chat_template.hpp"
#include "runtime/text/detail/jinja.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail::jinja {
namespace {

enum class Tok : uint8_t {
  kData,
  kVarBegin,
  kVarEnd,
  kBlockBegin,
  kBlockEnd,
  kName,
  kString,
  kInt,
  kFloat,
  kOp,
  kEof
};

struct Token {
  Tok type;
  int line;
  std::string text;  // data, name, decoded string, operator
  int64_t int_value = 0;
  double float_value = 0;
};

[[noreturn]] void fail(int line, const std::string& message) {
  throw ChatTemplateError(fmt::format("chat template line {}: {}", line, message));
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool is_name_start(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A \u or \U escape's code point as UTF-8; a surrogate or a value past U+10FFFF (no scalar
// value) becomes U+FFFD, as Python's decoder replaces it.
void append_escape(std::string& out, uint32_t cp) {
  if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD;
  append_utf8(out, static_cast<char32_t>(cp));
}

class Lexer {
 public:
  explicit Lexer(std::string_view src) : src_(src) {
    // Jinja's keep_trailing_newline=False: one newline at the very end is dropped.
    if (!src_.empty() && src_.back() == '\n') src_.remove_suffix(1);
  }

  std::vector<Token> run() {
    bool line_starting = true;
    while (pos_ < src_.size()) {
      std::size_t start = find_tag(pos_);
      std::string_view text = src_.substr(pos_, start - pos_);
      const int text_line = line_;
      if (start == src_.size()) {
        emit_data(text, text_line);
        count_lines(pos_, start);
        pos_ = start;
        break;
      }
      const char opener = src_[start + 1];
      const char modifier = start + 2 < src_.size() ? src_[start + 2] : '\0';
      const bool is_var = opener == '{';
      if (modifier == '-') {
        while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
      } else if (!is_var && modifier != '+') {
        // lstrip_blocks: a block or comment alone on its line loses the line's indentation.
        const std::size_t nl = text.rfind('\n');
        const std::size_t l_pos = nl == std::string_view::npos ? 0 : nl + 1;
        if (l_pos > 0 || line_starting) {
          const std::string_view tail = text.substr(l_pos);
          if (std::all_of(tail.begin(), tail.end(), [](char c) { return c == ' ' || c == '\t'; }))
            text = text.substr(0, l_pos);
        }
      }
      emit_data(text, text_line);
      count_lines(pos_, start);
      pos_ = start + 2;
      if (modifier == '-' || (!is_var && modifier == '+')) ++pos_;
      if (opener == '#') {
        line_starting = lex_comment(start);
      } else if (is_var) {
        tokens_.push_back({Tok::kVarBegin, line_, "{{"});
        line_starting = lex_tag(false, line_);
      } else {
        const int open_line = line_;
        if (lex_raw(open_line, line_starting)) continue;
        tokens_.push_back({Tok::kBlockBegin, line_, "{%"});
        line_starting = lex_tag(true, open_line);
      }
    }
    tokens_.push_back({Tok::kEof, line_, ""});
    return std::move(tokens_);
  }

 private:
  std::size_t find_tag(std::size_t from) const {
    for (std::size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
        return i;
    }
    return src_.size();
  }

  void emit_data(std::string_view text, int line) {
    if (!text.empty()) tokens_.push_back({Tok::kData, line, std::string(text)});
  }

  void count_lines(std::size_t from, std::size_t to) {
    line_ += static_cast<int>(std::count(src_.begin() + static_cast<std::ptrdiff_t>(from),
                                         src_.begin() + static_cast<std::ptrdiff_t>(to), '\n'));
  }

  // After a tag's end: `-` strips all whitespace, otherwise trim_blocks eats one newline after
  // a block or comment. Returns whether what was consumed ends a line (lstrip_blocks then
  // applies to the next tag even with no newline in the text between).
  bool after_tag_end(bool strip, bool trim) {
    bool ends_line = false;
    if (strip) {
      while (pos_ < src_.size() && is_space(src_[pos_])) {
        ends_line = src_[pos_] == '\n';
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
    } else if (trim && pos_ < src_.size() && src_[pos_] == '\n') {
      ++pos_;
      ++line_;
      ends_line = true;
    }
    return ends_line;
  }

  bool lex_comment(std::size_t start) {
    const int open_line = line_;
    const std::size_t end = src_.find("#}", pos_);
    if (end == std::string_view::npos)
      fail(open_line, "the comment '{#' opened here is never closed (expected '#}')");
    const bool strip = end > pos_ && src_[end - 1] == '-' && end - 1 >= start + 2;
    const bool keep = end > pos_ && src_[end - 1] == '+';
    count_lines(pos_, end + 2);
    pos_ = end + 2;
    return after_tag_end(strip, !keep);
  }

  // {% raw %}...{% endraw %}: the text between is printed as it stands.
  bool lex_raw(int open_line, bool& line_starting) {
    std::size_t p = pos_;
    while (p < src_.size() && is_space(src_[p])) ++p;
    if (src_.compare(p, 3, "raw") != 0 || (p + 3 < src_.size() && is_name_char(src_[p + 3])))
      return false;
    p += 3;
    while (p < src_.size() && is_space(src_[p])) ++p;
    bool strip_after_begin = false;
    if (src_.compare(p, 3, "-%}") == 0) {
      strip_after_begin = true;
      ++p;
    }
    if (src_.compare(p, 2, "%}") != 0) fail(open_line, "expected '%}' after 'raw'");
    p += 2;
    count_lines(pos_, p);
    pos_ = p;
    if (strip_after_begin) after_tag_end(true, false);
    // Find {%[-+]? endraw [-+]?%}.
    std::size_t search = pos_;
    while (true) {
      const std::size_t tag = src_.find("{%", search);
      if (tag == std::string_view::npos)
        fail(open_line, "the 'raw' block opened here is never closed (expected '{% endraw %}')");
      std::size_t q = tag + 2;
      const bool strip_before = q < src_.size() && src_[q] == '-';
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
      while (q < src_.size() && is_space(src_[q])) ++q;
      if (src_.compare(q, 6, "endraw") != 0) {
        search = tag + 2;
        continue;
      }
      q += 6;
      while (q < src_.size() && is_space(src_[q])) ++q;
      bool strip_after = false, keep = false;
      if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) {
        strip_after = src_[q] == '-';
        keep = src_[q] == '+';
        ++q;
      }
      if (src_.compare(q, 2, "%}") != 0) {
        search = tag + 2;
        continue;
      }
      std::string_view body = src_.substr(pos_, tag - pos_);
      if (strip_before)
        while (!body.empty() && is_space(body.back())) body.remove_suffix(1);
      emit_data(body, line_);
      count_lines(pos_, q + 2);
      pos_ = q + 2;
      line_starting = after_tag_end(strip_after, !keep);
      return true;
    }
  }

  // The tokens of one {{ }} or {% %}, through its end. Returns line_starting (see
  // after_tag_end).
  bool lex_tag(bool block, int open_line) {
    int depth = 0;
    while (true) {
      while (pos_ < src_.size() && is_space(src_[pos_])) {
        if (src_[pos_] == '\n') ++line_;
        ++pos_;
      }
      if (pos_ >= src_.size())
        fail(open_line, block ? "the '{%' tag opened here is never closed (expected '%}')"
                              : "the '{{' tag opened here is never closed (expected '}}')");
      const std::string_view rest = src_.substr(pos_);
      if (depth == 0) {
        if (block) {
          if (rest.starts_with("-%}") || rest.starts_with("+%}") || rest.starts_with("%}")) {
            const bool strip = rest[0] == '-';
            const bool keep = rest[0] == '+';
            tokens_.push_back({Tok::kBlockEnd, line_, "%}"});
            pos_ += rest[0] == '%' ? 2 : 3;
            return after_tag_end(strip, !keep);
          }
        } else if (rest.starts_with("-}}") || rest.starts_with("}}")) {
          const bool strip = rest[0] == '-';
          tokens_.push_back({Tok::kVarEnd, line_, "}}"});
          pos_ += strip ? 3 : 2;
          return after_tag_end(strip, false);
        }
      }
      const char c = rest[0];
      if (is_name_start(c)) {
        std::size_t n = 1;
        while (n < rest.size() && is_name_char(rest[n])) ++n;
        tokens_.push_back({Tok::kName, line_, std::string(rest.substr(0, n))});
        pos_ += n;
      } else if (is_digit(c)) {
        lex_number(rest);
      } else if (c == '\'' || c == '"') {
        lex_string(c);
      } else {
        static constexpr std::array<std::string_view, 6> kTwo = {"//", "**", "==", "!=", ">=",
                                                                 "<="};
        std::string_view op;
        for (const auto two : kTwo)
          if (rest.starts_with(two)) op = two;
        if (op.empty()) {
          if (std::strchr("+-*/%~[](){}<>=.:|,", c) == nullptr || c == '\0') {
            const auto ch = decode_utf8(rest, 0);
            fail(line_, fmt::format("unexpected character '{}' inside '{}'",
                                    rest.substr(0, ch.len), block ? "{% %}" : "{{ }}"));
          }
          op = rest.substr(0, 1);
        }
        if (op == "(" || op == "[" || op == "{") {
          if (++depth > kMaxNesting) fail(line_, "brackets nest too deeply");
        } else if (op == ")" || op == "]" || op == "}") {
          if (depth > 0) --depth;
        }
        tokens_.push_back({Tok::kOp, line_, std::string(op)});
        pos_ += op.size();
      }
    }
  }

  void lex_number(std::string_view rest) {
    std::size_t n = 0;
    auto digits = [&] {
      const std::size_t begin = n;
      while (n < rest.size() && (is_digit(rest[n]) || (rest[n] == '_' && n > begin && n + 1 < rest.size() &&
                                                       is_digit(rest[n + 1]))))
        ++n;
    };
    digits();
    bool is_float = false;
    // `items.0.1` is two subscripts, not a float (Jinja's lexer looks behind for the dot).
    const bool after_dot = !tokens_.empty() && tokens_.back().type == Tok::kOp &&
                           tokens_.back().text == ".";
    if (!after_dot && n + 1 < rest.size() && rest[n] == '.' && is_digit(rest[n + 1])) {
      ++n;
      digits();
      is_float = true;
    }
    if (!after_dot && n < rest.size() && (rest[n] == 'e' || rest[n] == 'E')) {
      std::size_t m = n + 1;
      if (m < rest.size() && (rest[m] == '+' || rest[m] == '-')) ++m;
      if (m < rest.size() && is_digit(rest[m])) {
        n = m;
        digits();
        is_float = true;
      }
    }
    std::string text;
    for (const char ch : rest.substr(0, n))
      if (ch != '_') text += ch;
    Token t{is_float ? Tok::kFloat : Tok::kInt, line_, text};
    if (is_float) {
      t.float_value = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      const unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
      if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX))
        fail(line_, fmt::format("the number {} is too large (at most 2^63 - 1)", text));
      t.int_value = static_cast<int64_t>(v);
    }
    tokens_.push_back(std::move(t));
    pos_ += n;
  }

  // A string literal with Python's escapes (Jinja decodes them as unicode-escape).
  void lex_string(char quote) {
    const int start_line = line_;
    std::string out;
    std::size_t p = pos_ + 1;
    auto hex = [&](std::size_t digits) -> uint32_t {
      if (p + digits > src_.size()) fail(line_, "a \\x, \\u or \\U escape is cut short");
      uint32_t v = 0;
      for (std::size_t k = 0; k < digits; ++k) {
        const char h = src_[p + k];
        v <<= 4;
        if (h >= '0' && h <= '9') v |= static_cast<uint32_t>(h - '0');
        else if (h >= 'a' && h <= 'f') v |= static_cast<uint32_t>(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') v |= static_cast<uint32_t>(h - 'A' + 10);
        else fail(line_, "a \\x, \\u or \\U escape needs hexadecimal digits");
      }
      p += digits;
      return v;
    };
    while (true) {
      if (p >= src_.size()) fail(start_line, "a string opened here is never closed");
      const char c = src_[p];
      if (c == quote) break;
      if (c == '\n') ++line_;
      if (c != '\\') {
        out += c;
        ++p;
        continue;
      }
      if (++p >= src_.size()) fail(start_line, "a string opened here is never closed");
      const char e = src_[p++];
      switch (e) {
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'n': out += '\n'; break;
        case 't': out += '\t'; break;
        case 'r': out += '\r'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'v': out += '\v'; break;
        case 'a': out += '\a'; break;
        case '\n': ++line_; break;  // a backslash before a newline continues the line
        case 'x': append_escape(out, hex(2)); break;
        case 'u':
        case 'U': {
          uint32_t cp = hex(e == 'u' ? 4 : 8);
          // A surrogate pair written as two \u escapes is one character.
          if (cp >= 0xD800 && cp <= 0xDBFF && src_.compare(p, 2, "\\u") == 0) {
            p += 2;
            const uint32_t lo = hex(4);
            if (lo >= 0xDC00 && lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            } else {
              append_escape(out, cp);
              cp = lo;
            }
          }
          append_escape(out, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = static_cast<uint32_t>(e - '0');
            for (int k = 0; k < 2 && p < src_.size() && src_[p] >= '0' && src_[p] <= '7'; ++k)
              v = v * 8 + static_cast<uint32_t>(src_[p++] - '0');
            append_escape(out, v);
          } else {
            out += '\\';  // Python keeps an unknown escape as it stands
            out += e;
          }
      }
    }
    tokens_.push_back({Tok::kString, start_line, std::move(out)});
    pos_ = p + 1;
  }

  std::string_view src_;
  std::size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> tokens_;
};

std::string describe(const Token& t) {
  switch (t.type) {
    case Tok::kData: return "text";
    case Tok::kVarBegin: return "'{{'";
    case Tok::kVarEnd: return "'}}'";
    case Tok::kBlockBegin: return "'{%'";
    case Tok::kBlockEnd: return "'%}'";
    case Tok::kName: return fmt::format("'{}'", t.text);
    case Tok::kString: return "a string";
    case Tok::kInt:
    case Tok::kFloat: return fmt::format("the number {}", t.text);
    case Tok::kOp: return fmt::format("'{}'", t.text);
    case Tok::kEof: return "the end of the template";
  }
  return "?";
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : toks_(std::move(tokens)) {}

  Program run() {
    Program p;
    std::string end;
    p.body = parse_body({}, end, "", 0);
    return p;
  }

 private:
  const Token& cur() const { return toks_[i_]; }
  const Token& peek(std::size_t k = 1) const { return toks_[std::min(i_ + k, toks_.size() - 1)]; }
  const Token& next() {
    const Token& t = toks_[i_];
    if (i_ + 1 < toks_.size()) ++i_;
    return t;
  }
  bool at_op(std::string_view op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool at_name(std::string_view name) const {
    return cur().type == Tok::kName && cur().text == name;
  }
  void expect_op(std::string_view op, std::string_view where) {
    if (!at_op(op)) fail(cur().line, fmt::format("expected '{}' {}, found {}", op, where, describe(cur())));
    next();
  }
  void expect_block_end(std::string_view after) {
    if (cur().type != Tok::kBlockEnd)
      fail(cur().line, fmt::format("expected '%}}' to end '{}', found {}", after, describe(cur())));
    next();
  }
  std::string expect_name(std::string_view what) {
    if (cur().type != Tok::kName)
      fail(cur().line, fmt::format("expected {}, found {}", what, describe(cur())));
    return next().text;
  }

  struct DepthGuard {
    explicit DepthGuard(Parser& p, int line) : p_(p) {
      if (++p_.depth_ > kMaxNesting)
        fail(line, fmt::format("expressions and blocks nest more than {} deep", kMaxNesting));
    }
    ~DepthGuard() { --p_.depth_; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;
    Parser& p_;
  };

  static ExprPtr make(ExprKind kind, int line, std::string name = {}) {
    auto e = std::make_unique<Expr>();
    e->kind = kind;
    e->line = line;
    e->name = std::move(name);
    return e;
  }
  static NodePtr make_node(NodeKind kind, int line) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = line;
    return n;
  }

  // Statements until one of `ends` opens a block; the end's name is left in `found` and the
  // parser stands after it (before its arguments or '%}').
  std::vector<NodePtr> parse_body(std::initializer_list<std::string_view> ends, std::string& found,
                                  std::string_view opener, int open_line) {
    DepthGuard guard(*this, cur().line);
    std::vector<NodePtr> body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (ends.size() == 0) return body;
        fail(open_line, fmt::format("the '{}' block opened here is never closed (expected "
                                    "'{{% {} %}}')",
                                    opener, *(ends.end() - 1)));
      }
      if (t.type == Tok::kData) {
        auto n = make_node(NodeKind::kText, t.line);
        n->text = t.text;
        body.push_back(std::move(n));
        next();
        continue;
      }
      if (t.type == Tok::kVarBegin) {
        next();
        auto n = make_node(NodeKind::kOutput, t.line);
        n->expr = parse_tuple(true);
        if (cur().type != Tok::kVarEnd)
          fail(cur().line, fmt::format("expected '}}}}' to end the expression, found {}",
                                       describe(cur())));
        next();
        body.push_back(std::move(n));
        continue;
      }
      if (t.type != Tok::kBlockBegin)
        fail(t.line, fmt::format("unexpected {}", describe(t)));
      next();
      const Token& kw = cur();
      if (kw.type != Tok::kName)
        fail(kw.line, fmt::format("expected a statement name after '{{%', found {}", describe(kw)));
      for (const auto end : ends) {
        if (kw.text == end) {
          found = kw.text;
          next();
          return body;
        }
      }
      body.push_back(parse_statement());
    }
  }

  NodePtr parse_statement() {
    const Token kw = next();
    const std::string& k = kw.text;
    if (k == "for") return parse_for(kw.line);
    if (k == "if") return parse_if(kw.line);
    if (k == "set") return parse_set(kw.line);
    if (k == "macro") return parse_macro(kw.line);
    if (k == "call") return parse_call_block(kw.line);
    if (k == "filter") return parse_filter_block(kw.line);
    if (k == "generation") {
      expect_block_end("generation");
      auto n = make_node(NodeKind::kBlock, kw.line);
      std::string found;
      n->body = parse_body({"endgeneration"}, found, "generation", kw.line);
      expect_block_end("endgeneration");
      return n;
    }
    if (k == "break" || k == "continue") {
      if (loop_depth_ == 0) fail(kw.line, fmt::format("'{}' outside a for loop", k));
      expect_block_end(k);
      return make_node(k == "break" ? NodeKind::kBreak : NodeKind::kContinue, kw.line);
    }
    static constexpr std::array<std::string_view, 11> kJinjaOnly = {
        "include", "import", "from",  "extends", "block",    "with",
        "do",      "autoescape", "trans", "pluralize", "print"};
    for (const auto j : kJinjaOnly)
      if (k == j) fail(kw.line, fmt::format("statement '{}' is not supported", k));
    if (k.starts_with("end") || k == "elif" || k == "else")
      fail(kw.line, fmt::format("unexpected '{}' (no block is open that it would close or "
                                "continue)",
                                k));
    fail(kw.line, fmt::format("unknown statement '{}'", k));
  }

  std::vector<std::string> parse_target_names(std::string_view what) {
    std::vector<std::string> names;
    const bool paren = at_op("(");
    if (paren) next();
    names.push_back(expect_name(what));
    while (at_op(",")) {
      next();
      if (cur().type != Tok::kName) break;  // a trailing comma
      names.push_back(next().text);
    }
    if (paren) expect_op(")", "after the loop variables");
    return names;
  }

  NodePtr parse_for(int line) {
    auto n = make_node(NodeKind::kFor, line);
    n->targets = parse_target_names("a loop variable after 'for'");
    if (!at_name("in")) fail(cur().line, fmt::format("expected 'in' in the for loop, found {}", describe(cur())));
    next();
    n->expr = parse_tuple(false);
    if (at_name("if")) {
      next();
      n->cond = parse_expression(true);
    }
    if (at_name("recursive")) fail(cur().line, "recursive for loops are not supported");
    expect_block_end("for");
    ++loop_depth_;
    std::string found;
    n->body = parse_body({"else", "endfor"}, found, "for", line);
    --loop_depth_;
    if (found == "else") {
      expect_block_end("else");
      n->else_body = parse_body({"endfor"}, found, "for", line);
    }
    expect_block_end("endfor");
    return n;
  }

  NodePtr parse_if(int line) {
    auto n = make_node(NodeKind::kIf, line);
    n->expr = parse_tuple(false);
    expect_block_end("if");
    std::string found;
    n->body = parse_body({"elif", "else", "endif"}, found, "if", line);
    Node* tail = n.get();
    while (found == "elif") {
      auto e = make_node(NodeKind::kIf, cur().line);
      e->expr = parse_tuple(false);
      expect_block_end("elif");
      e->body = parse_body({"elif", "else", "endif"}, found, "if", line);
      Node* raw = e.get();
      tail->else_body.push_back(std::move(e));
      tail = raw;
    }
    if (found == "else") {
      expect_block_end("else");
      tail->else_body = parse_body({"endif"}, found, "if", line);
    }
    expect_block_end("endif");
    return n;
  }

  NodePtr parse_set(int line) {
    auto n = make_node(NodeKind::kSet, line);
    n->targets.push_back(expect_name("a variable name after 'set'"));
    if (at_op(".")) {
      next();
      n->text = expect_name("an attribute name after '.'");
    } else {
      while (at_op(",")) {
        next();
        if (cur().type != Tok::kName) break;
        n->targets.push_back(next().text);
      }
    }
    if (at_op("=")) {
      next();
      n->expr = parse_tuple(true);
      expect_block_end("set");
      return n;
    }
    if (n->targets.size() != 1 || !n->text.empty())
      fail(cur().line, fmt::format("expected '=' in the set statement, found {}", describe(cur())));
    n->kind = NodeKind::kSetBlock;
    while (at_op("|")) {
      next();
      n->filters.push_back(parse_filter(nullptr));
    }
    expect_block_end("set");
    std::string found;
    n->body = parse_body({"endset"}, found, "set", line);
    expect_block_end("endset");
    return n;
  }

  std::vector<Param> parse_params() {
    std::vector<Param> params;
    expect_op("(", "before the parameters");
    while (!at_op(")")) {
      Param p;
      p.name = expect_name("a parameter name");
      if (at_op("=")) {
        next();
        p.default_value = parse_expression(true);
      }
      params.push_back(std::move(p));
      if (!at_op(",")) break;
      next();
    }
    expect_op(")", "after the parameters");
    return params;
  }

  NodePtr parse_macro(int line) {
    auto n = make_node(NodeKind::kMacro, line);
    n->text = expect_name("a macro name");
    n->params = parse_params();
    expect_block_end("macro");
    std::string found;
    const int saved = loop_depth_;
    loop_depth_ = 0;
    n->body = parse_body({"endmacro"}, found, "macro", line);
    loop_depth_ = saved;
    if (cur().type == Tok::kName) next();  // {% endmacro name %}
    expect_block_end("endmacro");
    return n;
  }

  NodePtr parse_call_block(int line) {
    auto n = make_node(NodeKind::kCallBlock, line);
    if (at_op("(")) n->params = parse_params();
    n->expr = parse_expression(true);
    if (n->expr->kind != ExprKind::kCall) fail(line, "expected a macro call after 'call'");
    expect_block_end("call");
    std::string found;
    n->body = parse_body({"endcall"}, found, "call", line);
    expect_block_end("endcall");
    return n;
  }

  NodePtr parse_filter_block(int line) {
    auto n = make_node(NodeKind::kFilterBlock, line);
    n->filters.push_back(parse_filter(nullptr));
    while (at_op("|")) {
      next();
      n->filters.push_back(parse_filter(nullptr));
    }
    expect_block_end("filter");
    std::string found;
    n->body = parse_body({"endfilter"}, found, "filter", line);
    expect_block_end("endfilter");
    return n;
  }

  // ---- expressions, with Jinja's precedence ----

  bool at_tuple_end() const {
    const Token& t = cur();
    return t.type == Tok::kBlockEnd || t.type == Tok::kVarEnd || t.type == Tok::kEof ||
           (t.type == Tok::kOp && (t.text == ")" || t.text == "]" || t.text == "}")) ||
           (t.type == Tok::kName && (t.text == "if" || t.text == "recursive"));
  }

  ExprPtr parse_tuple(bool with_condexpr) {
    const int line = cur().line;
    ExprPtr first = parse_expression(with_condexpr);
    if (!at_op(",")) return first;
    auto t = make(ExprKind::kTuple, line);
    t->args.push_back(std::move(first));
    while (at_op(",")) {
      next();
      if (at_tuple_end()) break;
      t->args.push_back(parse_expression(with_condexpr));
    }
    return t;
  }

  ExprPtr parse_expression(bool with_condexpr) {
    DepthGuard guard(*this, cur().line);
    return with_condexpr ? parse_condexpr() : parse_or();
  }

  ExprPtr parse_condexpr() {
    ExprPtr expr = parse_or();
    while (at_name("if")) {
      const int line = next().line;
      auto c = make(ExprKind::kCond, line);
      ExprPtr cond = parse_or();
      ExprPtr other;
      if (at_name("else")) {
        next();
        other = parse_condexpr();
      }
      c->args.push_back(std::move(expr));
      c->args.push_back(std::move(cond));
      c->args.push_back(std::move(other));
      expr = std::move(c);
    }
    return expr;
  }

  ExprPtr binary(std::string op, int line, ExprPtr a, ExprPtr b) {
    auto e = make(ExprKind::kBinary, line, std::move(op));
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (at_name("or")) {
      const int line = next().line;
      e = binary("or", line, std::move(e), parse_and());
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (at_name("and")) {
      const int line = next().line;
      e = binary("and", line, std::move(e), parse_not());
    }
    return e;
  }

  ExprPtr parse_not() {
    if (at_name("not")) {
      DepthGuard guard(*this, cur().line);
      const int line = next().line;
      auto e = make(ExprKind::kUnary, line, "not");
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  bool at_compare_op(std::string& op) const {
    const Token& t = cur();
    if (t.type == Tok::kOp && (t.text == "==" || t.text == "!=" || t.text == "<" ||
                               t.text == ">" || t.text == "<=" || t.text == ">=")) {
      op = t.text;
      return true;
    }
    if (t.type == Tok::kName && t.text == "in") {
      op = "in";
      return true;
    }
    if (t.type == Tok::kName && t.text == "not" && peek().type == Tok::kName &&
        peek().text == "in") {
      op = "not in";
      return true;
    }
    return false;
  }

  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    std::string op;
    if (!at_compare_op(op)) return e;
    const int line = cur().line;
    next();
    if (op == "not in") next();
    e = binary(op, line, std::move(e), parse_math1());
    if (at_compare_op(op)) fail(cur().line, "chained comparisons (a < b < c) are not supported");
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (at_op("+") || at_op("-")) {
      const Token& t = next();
      e = binary(t.text, t.line, std::move(e), parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (at_op("~")) {
      const int line = next().line;
      e = binary("~", line, std::move(e), parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (at_op("*") || at_op("/") || at_op("//") || at_op("%")) {
      const Token& t = next();
      e = binary(t.text, t.line, std::move(e), parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (at_op("**")) {
      const int line = next().line;
      e = binary("**", line, std::move(e), parse_unary(true));
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this, cur().line);
    ExprPtr e;
    if (at_op("-") || at_op("+")) {
      const Token& t = next();
      e = make(ExprKind::kUnary, t.line, t.text);
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    switch (t.type) {
      case Tok::kName: {
        next();
        auto e = make(ExprKind::kLiteral, t.line);
        if (t.text == "true" || t.text == "True") {
          e->literal = Value(true);
        } else if (t.text == "false" || t.text == "False") {
          e->literal = Value(false);
        } else if (t.text == "none" || t.text == "None") {
          e->literal = Value(None{});
        } else {
          e->kind = ExprKind::kName;
          e->name = t.text;
        }
        return e;
      }
      case Tok::kString: {
        auto e = make(ExprKind::kLiteral, t.line);
        std::string s;
        while (cur().type == Tok::kString) s += next().text;  // 'a' 'b' is 'ab'
        e->literal = Value(std::move(s));
        return e;
      }
      case Tok::kInt:
      case Tok::kFloat: {
        next();
        auto e = make(ExprKind::kLiteral, t.line);
        e->literal = t.type == Tok::kInt ? Value(t.int_value) : Value(t.float_value);
        return e;
      }
      case Tok::kOp:
        if (t.text == "(") {
          next();
          if (at_op(")")) {
            next();
            auto e = make(ExprKind::kTuple, t.line);
            return e;
          }
          ExprPtr inner = parse_tuple(true);
          expect_op(")", "to close '('");
          return inner;
        }
        if (t.text == "[") {
          next();
          auto e = make(ExprKind::kList, t.line);
          while (!at_op("]")) {
            e->args.push_back(parse_expression(true));
            if (!at_op(",")) break;
            next();
          }
          expect_op("]", "to close the list");
          return e;
        }
        if (t.text == "{") {
          next();
          auto e = make(ExprKind::kDict, t.line);
          while (!at_op("}")) {
            e->args.push_back(parse_expression(true));
            expect_op(":", "after a dict key");
            e->args.push_back(parse_expression(true));
            if (!at_op(",")) break;
            next();
          }
          expect_op("}", "to close the dict");
          return e;
        }
        break;
      default:
        break;
    }
    fail(t.line, fmt::format("expected an expression, found {}", describe(t)));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (at_op(".")) {
        const int line = next().line;
        if (cur().type == Tok::kInt) {
          auto item = make(ExprKind::kItem, line);
          auto idx = make(ExprKind::kLiteral, line);
          idx->literal = Value(next().int_value);
          item->args.push_back(std::move(e));
          item->args.push_back(std::move(idx));
          e = std::move(item);
          continue;
        }
        auto a = make(ExprKind::kAttr, line, expect_name("an attribute name after '.'"));
        a->args.push_back(std::move(e));
        e = std::move(a);
      } else if (at_op("[")) {
        e = parse_subscript(std::move(e));
      } else if (at_op("(")) {
        e = parse_call(std::move(e), ExprKind::kCall, "");
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object) {
    DepthGuard guard(*this, cur().line);
    const int line = next().line;  // '['
    ExprPtr parts[3];
    bool is_slice = false;
    if (!at_op(":")) parts[0] = parse_expression(true);
    if (at_op(":")) {
      is_slice = true;
      next();
      if (!at_op("]") && !at_op(":")) parts[1] = parse_expression(true);
      if (at_op(":")) {
        next();
        if (!at_op("]")) parts[2] = parse_expression(true);
      }
    }
    if (at_op(",")) fail(cur().line, "subscripts with a comma (a[1, 2]) are not supported");
    expect_op("]", "to close the subscript");
    auto e = make(is_slice ? ExprKind::kSlice : ExprKind::kItem, line);
    e->args.push_back(std::move(object));
    e->args.push_back(std::move(parts[0]));
    if (is_slice) {
      e->args.push_back(std::move(parts[1]));
      e->args.push_back(std::move(parts[2]));
    }
    return e;
  }

  // '(' args ')' after a callee, a filter or a test; the callee (or operand) is args[0].
  ExprPtr parse_call(ExprPtr callee, ExprKind kind, std::string name) {
    DepthGuard guard(*this, cur().line);
    const int line = next().line;  // '('
    auto e = make(kind, line, std::move(name));
    e->args.push_back(std::move(callee));
    while (!at_op(")")) {
      if (at_op("*") || at_op("**")) fail(cur().line, "*args and **kwargs in calls are not supported");
      if (cur().type == Tok::kName && peek().type == Tok::kOp && peek().text == "=") {
        std::string key = next().text;
        next();
        e->kwargs.emplace_back(std::move(key), parse_expression(true));
      } else {
        if (!e->kwargs.empty())
          fail(cur().line, "a positional argument after a keyword argument");
        e->args.push_back(parse_expression(true));
      }
      if (!at_op(",")) break;
      next();
    }
    expect_op(")", "to close the argument list");
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (at_op("|")) {
        next();
        e = parse_filter(std::move(e));
      } else if (at_name("is")) {
        e = parse_test(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filter(ExprPtr operand) {
    const int line = cur().line;
    std::string name = expect_name("a filter name after '|'");
    while (at_op(".")) {  // dotted filter names exist in Jinja; none here does
      next();
      name += "." + expect_name("a filter name");
    }
    if (!is_known_filter(name)) fail(line, fmt::format("filter '{}' is not supported", name));
    if (at_op("(")) return parse_call(std::move(operand), ExprKind::kFilter, name);
    auto e = make(ExprKind::kFilter, line, name);
    e->args.push_back(std::move(operand));
    return e;
  }

  ExprPtr parse_test(ExprPtr operand) {
    const int line = next().line;  // 'is'
    bool negated = false;
    if (at_name("not")) {
      next();
      negated = true;
    }
    const std::string name = expect_name("a test name after 'is'");
    if (!is_known_test(name)) fail(line, fmt::format("test '{}' is not supported", name));
    ExprPtr e;
    if (at_op("(")) {
      e = parse_call(std::move(operand), ExprKind::kTest, name);
    } else {
      e = make(ExprKind::kTest, line, name);
      e->args.push_back(std::move(operand));
      const Token& t = cur();
      const bool arg_follows =
          (t.type == Tok::kName && t.text != "else" && t.text != "or" && t.text != "and" &&
           t.text != "if" && t.text != "is" && t.text != "in" && t.text != "not") ||
          t.type == Tok::kString || t.type == Tok::kInt || t.type == Tok::kFloat ||
          (t.type == Tok::kOp && (t.text == "[" || t.text == "{"));
      if (arg_follows) e->args.push_back(parse_postfix(parse_primary()));
    }
    e->negated = negated;
    return e;
  }

  std::vector<Token> toks_;
  std::size_t i_ = 0;
  int depth_ = 0;
  int loop_depth_ = 0;
};

}  // namespace

Program parse(std::string_view source) {
  // Python holds a template as str: text that is not UTF-8 never reaches Jinja.
  int line = 1;
  for (std::size_t pos = 0; pos < source.size();) {
    const auto ch = decode_utf8(source, pos);
    if (ch.status != Utf8Status::kOk)
      fail(line, fmt::format("byte {} is not UTF-8", pos));
    if (source[pos] == '\n') ++line;
    pos += ch.len;
  }
  return Parser(Lexer(source).run()).run();
}

}  // namespace ferry::text::detail::jinja
