// The chat-template engine's insides: values, the syntax tree the parser builds and the renderer
// walks, and the tables of filters and tests both consult. Semantics follow Jinja2 as Hugging
// Face configures it (trim_blocks, lstrip_blocks, loopcontrols, an immutable sandbox), with
// @huggingface/jinja's leniency where the two differ on undefined values (see
// docs/chat-templates.md).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace ferry::text::detail::jinja {

struct Value;
class Renderer;

// A missing variable or attribute; `name` says which, for messages.
struct Undefined {
  std::string name;
};
struct None {};

// Lists and tuples: immutable once built (Hugging Face's sandbox forbids append), so they are
// shared between values. `depth` bounds nesting, so printing and destroying never recurse
// without limit.
struct ListData {
  std::vector<Value> items;
  bool tuple = false;
  int depth = 1;
};
// Dicts keep their insertion order, as Python's do: tojson of a tool's schema must print its
// keys in the order given.
struct DictData {
  std::vector<std::pair<Value, Value>> items;
  int depth = 1;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(Value key, Value value);
};
// namespace(): the one mutable object, shared by reference so `set ns.x` inside a loop is seen
// after it.
struct NamespaceData {
  DictData attrs;
};

struct CallArgs;
// A built-in function, a bound method, a macro or a call block's caller().
struct Function {
  std::string name;
  std::function<Value(Renderer&, CallArgs&, int line)> call;
};

using List = std::shared_ptr<const ListData>;
using Dict = std::shared_ptr<const DictData>;
using Namespace = std::shared_ptr<NamespaceData>;
using FunctionPtr = std::shared_ptr<const Function>;

struct Value {
  std::variant<Undefined, None, bool, int64_t, double, std::string, List, Dict, Namespace,
               FunctionPtr>
      v;

  Value() = default;
  Value(Undefined u) : v(std::move(u)) {}
  Value(None n) : v(n) {}
  Value(bool b) : v(b) {}
  Value(int64_t i) : v(i) {}
  Value(int i) : v(static_cast<int64_t>(i)) {}
  Value(double d) : v(d) {}
  Value(std::string s) : v(std::move(s)) {}
  Value(const char* s) : v(std::string(s)) {}
  Value(List l) : v(std::move(l)) {}
  Value(Dict d) : v(std::move(d)) {}
  Value(Namespace n) : v(std::move(n)) {}
  Value(FunctionPtr f) : v(std::move(f)) {}

  bool is_undefined() const { return std::holds_alternative<Undefined>(v); }
  bool is_none() const { return std::holds_alternative<None>(v); }
  bool is_bool() const { return std::holds_alternative<bool>(v); }
  bool is_int() const { return std::holds_alternative<int64_t>(v); }
  bool is_float() const { return std::holds_alternative<double>(v); }
  bool is_number() const { return is_int() || is_float() || is_bool(); }
  bool is_string() const { return std::holds_alternative<std::string>(v); }
  bool is_list() const { return std::holds_alternative<List>(v); }
  bool is_dict() const { return std::holds_alternative<Dict>(v); }
  bool is_namespace() const { return std::holds_alternative<Namespace>(v); }
  bool is_function() const { return std::holds_alternative<FunctionPtr>(v); }

  const std::string& str() const { return std::get<std::string>(v); }
  const ListData& list() const { return *std::get<List>(v); }
  const DictData& dict() const { return *std::get<Dict>(v); }
};

struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
};

inline constexpr int kMaxValueDepth = 256;

// Containers; each throws (via the renderer's caller) when nesting would pass kMaxValueDepth.
int value_depth(const Value& v);
Value make_list(std::vector<Value> items, bool tuple = false);
Value make_dict(DictData d);

// Python's semantics, as Jinja inherits them.
bool truthy(const Value& v);
bool equal(const Value& a, const Value& b);
std::string type_name(const Value& v);  // "a string", "an integer", ... for messages
std::string to_str(const Value& v);      // str(): what {{ v }} prints
std::string repr(const Value& v);        // repr(): how lists and dicts print their items
std::string float_repr(double d);        // Python's shortest round-trip form: 0.1, 1e-05, 2.0

struct JsonOptions {
  int indent = -1;  // -1: none (json.dumps' indent=None)
  std::string indent_text;
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
};
// json.dumps as transformers' tojson calls it. Throws std::invalid_argument naming a value JSON
// cannot hold (a namespace, a function).
std::string to_json(const Value& v, const JsonOptions& options);

// UTF-8 strings indexed by character, as Python's str is.
std::vector<std::size_t> char_offsets(std::string_view s);  // each character's byte offset

// ---- syntax tree ----

enum class ExprKind : uint8_t {
  kLiteral,
  kName,
  kList,
  kTuple,
  kDict,    // args: key, value, key, value, ...
  kAttr,    // args[0].name
  kItem,    // args[0][args[1]]
  kSlice,   // args[0][args[1]:args[2]:args[3]], absent parts null
  kCall,    // args[0](args[1..], kwargs)
  kFilter,  // args[0] | name(args[1..], kwargs)
  kTest,    // args[0] is [not] name(args[1..])
  kUnary,   // name: "-", "+", "not"
  kBinary,  // name: the operator, "and", "or", "in", "not in"
  kCond,    // args[0] if args[1] else args[2] (null: undefined)
};

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  ExprKind kind;
  int line;
  std::string name;
  Value literal;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  bool negated = false;  // kTest: "is not"
};

enum class NodeKind : uint8_t {
  kText,
  kOutput,       // {{ expr }}
  kIf,           // expr; body; else_body (an elif is an If alone in else_body)
  kFor,          // targets in expr [if cond]; body; else_body
  kSet,          // targets (or targets[0].attr) = expr
  kSetBlock,     // {% set x %}body{% endset %}, filtered through `filters`
  kMacro,        // name(params); body
  kCallBlock,    // {% call(params) expr %}body{% endcall %}
  kFilterBlock,  // {% filter f %}body{% endfilter %}
  kBreak,
  kContinue,
  kBlock,        // a body rendered as is: {% generation %}
};

struct Node;
using NodePtr = std::unique_ptr<Node>;

struct Param {
  std::string name;
  ExprPtr default_value;  // null: none
};

struct Node {
  NodeKind kind;
  int line;
  std::string text;                  // kText; kMacro's name; kSet's attribute
  ExprPtr expr;                      // output, condition, iterable, value, call
  ExprPtr cond;                      // kFor: the inline `if`
  std::vector<std::string> targets;  // kFor / kSet names
  std::vector<Param> params;         // kMacro, kCallBlock
  std::vector<ExprPtr> filters;      // kSetBlock / kFilterBlock: kFilter exprs on a null operand
  std::vector<NodePtr> body, else_body;
};

struct Program {
  std::vector<NodePtr> body;
};

// Throws ChatTemplateError naming the line and what was expected or is not supported.
Program parse(std::string_view source);

// Renders `program` with the variables of `context` (a JSON object). Throws
// ChatTemplateRenderError or ChatTemplateError.
std::string render(const Program& program, const nlohmann::ordered_json& context);

// The filters and tests the renderer knows; the parser refuses any other name.
bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);

// The renderer's limits, so that no template (or fuzzer) can exhaust the stack, memory or time.
inline constexpr int kMaxNesting = 200;              // blocks, brackets and operators in the source
inline constexpr uint64_t kMaxSteps = 2'000'000;     // statements, expressions, loop items
inline constexpr std::size_t kMaxOutputBytes = 64u << 20;
inline constexpr int64_t kMaxRange = 100'000;        // Jinja's sandbox MAX_RANGE

}  // namespace ferry::text::detail::jinja
