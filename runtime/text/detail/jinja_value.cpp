// Values of the chat-template engine with Python's semantics: truth, equality, str(), repr(),
// float formatting and json.dumps.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include "runtime/text/detail/jinja.hpp"
#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail::jinja {

const Value* DictData::find(const Value& key) const {
  if (key.is_string()) return find(std::string_view(key.str()));
  for (const auto& [k, v] : items)
    if (equal(k, key)) return &v;
  return nullptr;
}

const Value* DictData::find(std::string_view key) const {
  for (const auto& [k, v] : items)
    if (k.is_string() && k.str() == key) return &v;
  return nullptr;
}

void DictData::set(Value key, Value value) {
  for (auto& [k, v] : items) {
    if (equal(k, key)) {
      v = std::move(value);
      return;
    }
  }
  items.emplace_back(std::move(key), std::move(value));
}

int value_depth(const Value& v) {
  if (v.is_list()) return v.list().depth;
  if (v.is_dict()) return v.dict().depth;
  return 0;  // a namespace is opaque: printing and JSON never look inside it
}

Value make_list(std::vector<Value> items, bool tuple) {
  auto l = std::make_shared<ListData>();
  int depth = 0;
  for (const auto& item : items) depth = std::max(depth, value_depth(item));
  if (depth + 1 > kMaxValueDepth)
    throw std::length_error(fmt::format("lists and dicts nest more than {} deep", kMaxValueDepth));
  l->items = std::move(items);
  l->tuple = tuple;
  l->depth = depth + 1;
  return Value(List(std::move(l)));
}

Value make_dict(DictData d) {
  int depth = 0;
  for (const auto& [k, v] : d.items) depth = std::max({depth, value_depth(k), value_depth(v)});
  if (depth + 1 > kMaxValueDepth)
    throw std::length_error(fmt::format("lists and dicts nest more than {} deep", kMaxValueDepth));
  d.depth = depth + 1;
  return Value(Dict(std::make_shared<DictData>(std::move(d))));
}

bool truthy(const Value& v) {
  return std::visit(
      [](const auto& x) -> bool {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined> || std::is_same_v<T, None>) return false;
        else if constexpr (std::is_same_v<T, bool>) return x;
        else if constexpr (std::is_same_v<T, int64_t>) return x != 0;
        else if constexpr (std::is_same_v<T, double>) return x != 0.0;
        else if constexpr (std::is_same_v<T, std::string>) return !x.empty();
        else if constexpr (std::is_same_v<T, List>) return !x->items.empty();
        else if constexpr (std::is_same_v<T, Dict>) return !x->items.empty();
        else return true;
      },
      v.v);
}

namespace {

bool numeric(const Value& v, double& d, int64_t& i, bool& is_int) {
  if (v.is_bool()) {
    i = std::get<bool>(v.v) ? 1 : 0;
    is_int = true;
  } else if (v.is_int()) {
    i = std::get<int64_t>(v.v);
    is_int = true;
  } else if (v.is_float()) {
    d = std::get<double>(v.v);
    is_int = false;
  } else {
    return false;
  }
  if (is_int) d = static_cast<double>(i);
  return true;
}

bool equal_depth(const Value& a, const Value& b, int depth) {
  if (depth > kMaxValueDepth) return false;
  double da = 0, db = 0;
  int64_t ia = 0, ib = 0;
  bool inta = false, intb = false;
  if (numeric(a, da, ia, inta) && numeric(b, db, ib, intb))
    return inta && intb ? ia == ib : da == db;
  if (a.v.index() != b.v.index()) return false;
  if (a.is_undefined() || a.is_none()) return true;
  if (a.is_string()) return a.str() == b.str();
  if (a.is_list()) {
    const auto& x = a.list().items;
    const auto& y = b.list().items;
    if (x.size() != y.size() || a.list().tuple != b.list().tuple) return false;
    for (std::size_t k = 0; k < x.size(); ++k)
      if (!equal_depth(x[k], y[k], depth + 1)) return false;
    return true;
  }
  if (a.is_dict()) {
    const auto& x = a.dict().items;
    const auto& y = b.dict();
    if (x.size() != y.items.size()) return false;
    for (const auto& [k, v] : x) {
      const Value* other = y.find(k);
      if (other == nullptr || !equal_depth(v, *other, depth + 1)) return false;
    }
    return true;
  }
  if (a.is_namespace()) return std::get<Namespace>(a.v) == std::get<Namespace>(b.v);
  if (a.is_function()) return std::get<FunctionPtr>(a.v) == std::get<FunctionPtr>(b.v);
  return false;
}

void repr_string(std::string& out, const std::string& s) {
  const bool has_single = s.find('\'') != std::string::npos;
  const bool has_double = s.find('"') != std::string::npos;
  const char quote = has_single && !has_double ? '"' : '\'';
  out += quote;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == quote || c == '\\') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (u < 0x20 || u == 0x7f) {
      out += fmt::format("\\x{:02x}", u);
    } else {
      out += c;
    }
  }
  out += quote;
}

void repr_into(std::string& out, const Value& v, bool top);

void str_into(std::string& out, const Value& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined>) {
        } else if constexpr (std::is_same_v<T, std::string>) {
          out += x;
        } else {
          repr_into(out, v, true);
        }
      },
      v.v);
}

void repr_into(std::string& out, const Value& v, bool top) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined>) {
          if (!top) out += "Undefined";
        } else if constexpr (std::is_same_v<T, None>) {
          out += "None";
        } else if constexpr (std::is_same_v<T, bool>) {
          out += x ? "True" : "False";
        } else if constexpr (std::is_same_v<T, int64_t>) {
          out += std::to_string(x);
        } else if constexpr (std::is_same_v<T, double>) {
          out += float_repr(x);
        } else if constexpr (std::is_same_v<T, std::string>) {
          repr_string(out, x);
        } else if constexpr (std::is_same_v<T, List>) {
          out += x->tuple ? '(' : '[';
          for (std::size_t k = 0; k < x->items.size(); ++k) {
            if (k > 0) out += ", ";
            repr_into(out, x->items[k], false);
          }
          if (x->tuple && x->items.size() == 1) out += ',';
          out += x->tuple ? ')' : ']';
        } else if constexpr (std::is_same_v<T, Dict>) {
          out += '{';
          bool first = true;
          for (const auto& [key, value] : x->items) {
            if (!first) out += ", ";
            first = false;
            repr_into(out, key, false);
            out += ": ";
            repr_into(out, value, false);
          }
          out += '}';
        } else if constexpr (std::is_same_v<T, Namespace>) {
          out += "<Namespace>";
        } else {
          out += fmt::format("<function {}>", x->name);
        }
      },
      v.v);
}

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  out += '"';
  for (std::size_t p = 0; p < s.size();) {
    const char c = s[p];
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x80 && ensure_ascii) {
      const auto ch = decode_utf8(s, p);
      const char32_t cp = ch.cp;
      if (cp >= 0x10000) {
        const char32_t x = cp - 0x10000;
        out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + (x >> 10), 0xDC00 + (x & 0x3FF));
      } else {
        out += fmt::format("\\u{:04x}", static_cast<uint32_t>(cp));
      }
      p += ch.len;
      continue;
    }
    ++p;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (u < 0x20) out += fmt::format("\\u{:04x}", u);
        else out += c;
    }
  }
  out += '"';
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  return float_repr(d);
}

void json_into(std::string& out, const Value& v, const JsonOptions& o, int level) {
  auto newline = [&](int lvl) {
    out += '\n';
    for (int k = 0; k < lvl; ++k) out += o.indent_text;
  };
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, Undefined> || std::is_same_v<T, None>) {
          out += "null";
        } else if constexpr (std::is_same_v<T, bool>) {
          out += x ? "true" : "false";
        } else if constexpr (std::is_same_v<T, int64_t>) {
          out += std::to_string(x);
        } else if constexpr (std::is_same_v<T, double>) {
          out += json_float(x);
        } else if constexpr (std::is_same_v<T, std::string>) {
          json_string(out, x, o.ensure_ascii);
        } else if constexpr (std::is_same_v<T, List>) {
          if (x->items.empty()) {
            out += "[]";
            return;
          }
          out += '[';
          for (std::size_t k = 0; k < x->items.size(); ++k) {
            if (k > 0) out += o.item_separator;
            if (o.indent >= 0) newline(level + 1);
            json_into(out, x->items[k], o, level + 1);
          }
          if (o.indent >= 0) newline(level);
          out += ']';
        } else if constexpr (std::is_same_v<T, Dict>) {
          if (x->items.empty()) {
            out += "{}";
            return;
          }
          std::vector<const std::pair<Value, Value>*> items;
          for (const auto& item : x->items) items.push_back(&item);
          auto key_text = [](const Value& k) -> std::string {
            if (k.is_string()) return k.str();
            if (k.is_bool()) return std::get<bool>(k.v) ? "true" : "false";
            if (k.is_none()) return "null";
            if (k.is_int()) return std::to_string(std::get<int64_t>(k.v));
            if (k.is_float()) return json_float(std::get<double>(k.v));
            throw std::invalid_argument(
                fmt::format("keys must be str, int, float, bool or None, not {}", type_name(k)));
          };
          if (o.sort_keys) {
            std::stable_sort(items.begin(), items.end(), [&](const auto* a, const auto* b) {
              return key_text(a->first) < key_text(b->first);
            });
          }
          out += '{';
          bool first = true;
          for (const auto* item : items) {
            if (!first) out += o.item_separator;
            first = false;
            if (o.indent >= 0) newline(level + 1);
            json_string(out, key_text(item->first), o.ensure_ascii);
            out += o.key_separator;
            json_into(out, item->second, o, level + 1);
          }
          if (o.indent >= 0) newline(level);
          out += '}';
        } else {
          throw std::invalid_argument(
              fmt::format("Object of type {} is not JSON serializable",
                          std::is_same_v<T, Namespace> ? "Namespace" : "function"));
        }
      },
      v.v);
}

}  // namespace

bool equal(const Value& a, const Value& b) { return equal_depth(a, b, 0); }

std::string type_name(const Value& v) {
  static constexpr const char* kNames[] = {"undefined", "none",  "a boolean", "an integer",
                                           "a float",   "a string", "a list",  "a dict",
                                           "a namespace", "a function"};
  if (v.is_list() && v.list().tuple) return "a tuple";
  return kNames[v.v.index()];
}

std::string to_str(const Value& v) {
  std::string out;
  str_into(out, v);
  return out;
}

std::string repr(const Value& v) {
  std::string out;
  repr_into(out, v, false);
  return out;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: fixed for exponents -4..15, else
  // d.ddde+XX.
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  const std::size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exp = std::stoi(sci.substr(e + 1));
  std::string out = sign;
  if (exp < -4 || exp >= 16) {
    out += digits[0];
    if (digits.size() > 1) {
      out += '.';
      out += digits.substr(1);
    }
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
    return out;
  }
  if (exp < 0) {
    out += "0.";
    out.append(static_cast<std::size_t>(-exp - 1), '0');
    out += digits;
    return out;
  }
  const auto int_digits = static_cast<std::size_t>(exp) + 1;
  if (digits.size() <= int_digits) {
    out += digits;
    out.append(int_digits - digits.size(), '0');
    out += ".0";
  } else {
    out += digits.substr(0, int_digits);
    out += '.';
    out += digits.substr(int_digits);
  }
  return out;
}

std::string to_json(const Value& v, const JsonOptions& options) {
  std::string out;
  json_into(out, v, options, 0);
  return out;
}

std::vector<std::size_t> char_offsets(std::string_view s) {
  std::vector<std::size_t> offsets;
  offsets.reserve(s.size());
  for (std::size_t p = 0; p < s.size();) {
    offsets.push_back(p);
    p += decode_utf8(s, p).len;
  }
  return offsets;
}

}  // namespace ferry::text::detail::jinja
