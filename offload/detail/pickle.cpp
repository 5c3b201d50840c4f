#include "offload/detail/pickle.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <cstdlib>
#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "offload/detail/source.hpp"
#include "runtime/core/error.hpp"

namespace ferry::offload::detail {

namespace {

constexpr const char* kCorrupt = "the checkpoint is truncated or corrupt — download it again";
constexpr const char* kUnsupported =
    "ferry reads only the plain tensor state dicts torch.save writes — re-save it with "
    "torch.save(model.state_dict()) or convert it to safetensors";

enum class Kind : uint8_t {
  none,
  boolean,
  integer,
  floating,
  string,
  tuple,
  list,
  dict,
  global,
  storage,
  tensor
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::none:
      return "None";
    case Kind::boolean:
      return "bool";
    case Kind::integer:
      return "int";
    case Kind::floating:
      return "float";
    case Kind::string:
      return "str";
    case Kind::tuple:
      return "tuple";
    case Kind::list:
      return "list";
    case Kind::dict:
      return "dict";
    case Kind::global:
      return "global";
    case Kind::storage:
      return "storage";
    case Kind::tensor:
      return "tensor";
  }
  return "?";
}

// A value on the stack or in a container. Containers, strings and the like live in the
// interpreter's arenas and are referred to by index, so sharing (memo) and cycles cost nothing
// and everything is freed flat when the interpreter goes away.
struct Value {
  Kind kind = Kind::none;
  uint32_t ref = 0;  // index into the arena of `kind`
  int64_t i = 0;     // integer / boolean payload
};

enum class Callable : uint8_t { ordered_dict, rebuild_tensor_v2, rebuild_parameter, storage_type };

struct Global {
  Callable callable = Callable::ordered_dict;
  std::string name;            // "module.name", for errors
  std::optional<DType> dtype;  // storage types only
  std::string storage_type;    // storage types only, e.g. "HalfStorage"
};

struct Storage {
  std::string key;
  uint32_t type = 0;  // index into globals_
  uint64_t numel = 0;
};

struct Tensor {
  uint32_t storage = 0;
  uint64_t offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

struct StorageKind {
  const char* name;
  std::optional<DType> dtype;
};

// The storages torch pickles by name. Those without a ferry dtype are still recognised so the
// error can say which tensor has the unsupported dtype instead of refusing a "global".
constexpr StorageKind kStorages[] = {
    {"FloatStorage", DType::f32},
    {"HalfStorage", DType::f16},
    {"BFloat16Storage", DType::bf16},
    {"BoolStorage", DType::boolean},
    {"ByteStorage", DType::u8},
    {"CharStorage", DType::i8},
    {"IntStorage", DType::i32},
    {"LongStorage", DType::i64},
    {"DoubleStorage", std::nullopt},
    {"ShortStorage", std::nullopt},
    {"ComplexFloatStorage", std::nullopt},
    {"ComplexDoubleStorage", std::nullopt},
};

class Interpreter {
 public:
  Interpreter(std::string_view bytes, std::string_view source)
      : in_(bytes),
        source_(source),
        budget_bytes_(kPickleCopyBudgetFloor + kPickleCopyBytesPerByte * bytes.size()),
        budget_left_(budget_bytes_) {}

  std::vector<PickledTensor> run() {
    for (;;) {
      FERRY_FORMAT_EXPECT(++ops_ <= kMaxPickleOps,
                          "{} byte {}: pickle runs more than {} opcodes; this is not a state "
                          "dict ferry can read — {}",
                          source_, pos_, kMaxPickleOps, kUnsupported);
      op_pos_ = pos_;
      const uint8_t op = u8();
      if (step(op)) break;
    }
    return extract(result_);
  }

 private:
  // ---- input ----------------------------------------------------------------------------
  void need(uint64_t n) {
    FERRY_FORMAT_EXPECT(n <= in_.size() - pos_,
                        "{} ends at byte {} inside the opcode at byte {} (which needs bytes up "
                        "to {}); {}",
                        source_, in_.size(), op_pos_, static_cast<uint64_t>(pos_) + n, kCorrupt);
  }
  uint8_t u8() {
    need(1);
    return static_cast<uint8_t>(in_[pos_++]);
  }
  uint64_t le(int n) {
    need(static_cast<uint64_t>(n));
    uint64_t v = 0;
    for (int k = n - 1; k >= 0; --k) v = (v << 8) | static_cast<uint8_t>(in_[pos_ + k]);
    pos_ += static_cast<std::size_t>(n);
    return v;
  }
  std::string_view take(uint64_t n) {
    need(n);
    const std::string_view s = in_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // GLOBAL's newline-terminated module and name.
  std::string_view line() {
    const std::size_t nl = in_.find('\n', pos_);
    FERRY_FORMAT_EXPECT(nl != std::string_view::npos && nl - pos_ <= 256,
                        "{} byte {}: GLOBAL opcode without a newline-terminated name; {}", source_,
                        op_pos_, kCorrupt);
    const std::string_view s = in_.substr(pos_, nl - pos_);
    pos_ = nl + 1;
    return s;
  }

  // ---- errors ---------------------------------------------------------------------------
  template <class... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
    FERRY_FORMAT_EXPECT(false, "{} byte {}: {}", source_, op_pos_,
                        fmt::format(f, std::forward<Args>(args)...));
    std::abort();  // unreachable: the macro throws
  }

  // Copies of objects the pickle references (a tensor's size tuple, a storage key, a state
  // dict's names) are charged here: a few bytes of REDUCE or BINGET can reference one large
  // memoised object again and again, so without a bound a small file builds terabytes.
  // Everything else the interpreter keeps is bounded by the opcodes run.
  void charge(uint64_t nbytes) {
    if (nbytes > budget_left_) {
      fail("pickle of {} bytes copies more than {} bytes of objects, far more than a state dict "
           "needs; it is malformed or hostile — {}",
           in_.size(), budget_bytes_, kUnsupported);
    }
    budget_left_ -= nbytes;
  }

  // ---- stack ----------------------------------------------------------------------------
  void push(Value v) { stack_.push_back(v); }
  Value pop() {
    if (stack_.size() <= floor()) fail("pickle pops an empty stack; {}", kCorrupt);
    const Value v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value& top() {
    if (stack_.size() <= floor()) fail("pickle reads an empty stack; {}", kCorrupt);
    return stack_.back();
  }
  // Items above the innermost MARK may be popped; the MARK itself may not be crossed.
  std::size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<Value> pop_mark() {
    if (marks_.empty()) fail("pickle opcode needs a MARK but none is set; {}", kCorrupt);
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }

  // ---- arena ----------------------------------------------------------------------------
  template <class T>
  Value make(Kind k, std::vector<T>& arena, T obj) {
    if (arena.size() >= std::numeric_limits<uint32_t>::max()) fail("pickle too large");
    arena.push_back(std::move(obj));
    return Value{k, static_cast<uint32_t>(arena.size() - 1), 0};
  }
  Value make_string(std::string_view s) { return make(Kind::string, strings_, std::string(s)); }
  Value make_seq(Kind k, std::vector<Value> items) { return make(k, seqs_, std::move(items)); }
  Value make_dict() { return make(Kind::dict, dicts_, std::vector<std::pair<Value, Value>>{}); }
  Value integer(int64_t v) { return Value{Kind::integer, 0, v}; }

  const std::vector<Value>& tuple_of(const Value& v, const char* what) {
    if (v.kind != Kind::tuple)
      fail("{} must be a tuple, not a {}; {}", what, kind_name(v.kind), kUnsupported);
    return seqs_[v.ref];
  }
  const std::string& string_of(const Value& v, const char* what) {
    if (v.kind != Kind::string)
      fail("{} must be a str, not a {}; {}", what, kind_name(v.kind), kUnsupported);
    return strings_[v.ref];
  }
  int64_t int_of(const Value& v, const char* what) {
    if (v.kind != Kind::integer)
      fail("{} must be an int, not a {}; {}", what, kind_name(v.kind), kUnsupported);
    return v.i;
  }
  std::vector<int64_t> ints_of(const Value& v, const char* what) {
    const std::vector<Value>& items = tuple_of(v, what);
    charge(items.size() * sizeof(int64_t));
    std::vector<int64_t> out;
    out.reserve(items.size());
    for (const Value& x : items) out.push_back(int_of(x, what));
    return out;
  }

  // ---- globals and calls ----------------------------------------------------------------
  Value resolve_global(std::string_view module, std::string_view name) {
    Global g;
    g.name = fmt::format("{}.{}", module, name);
    if (module == "collections" && name == "OrderedDict") {
      g.callable = Callable::ordered_dict;
    } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
      g.callable = Callable::rebuild_tensor_v2;
    } else if (module == "torch._utils" &&
               (name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state")) {
      g.callable = Callable::rebuild_parameter;
    } else {
      bool found = false;
      if (module == "torch") {
        for (const StorageKind& s : kStorages) {
          if (name == s.name) {
            g.callable = Callable::storage_type;
            g.dtype = s.dtype;
            g.storage_type = s.name;
            found = true;
          }
        }
      }
      if (!found) {
        fail(
            "pickle references the global '{}', which ferry refuses to load: a checkpoint may "
            "only reference torch's tensor rebuilders and storages and collections.OrderedDict "
            "(anything else could run code). Do not load this file with torch either unless "
            "you trust it; convert a trusted checkpoint to safetensors",
            printable(g.name));
      }
    }
    return make(Kind::global, globals_, std::move(g));
  }

  // Shows a name from the file safely in a message (control bytes escaped).
  static std::string printable(std::string_view s) {
    std::string out;
    for (const char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if (u >= 0x20 && u < 0x7f) {
        out += c;
      } else {
        out += fmt::format("\\x{:02x}", u);
      }
    }
    return out;
  }

  const Global& global_of(const Value& v, const char* what) {
    if (v.kind != Kind::global)
      fail("{} calls a {}, not an allowed global; {}", what, kind_name(v.kind), kUnsupported);
    return globals_[v.ref];
  }

  Value call(const Value& fn, const Value& args_value, const char* op) {
    const Global& g = global_of(fn, op);
    const std::vector<Value>& tuple = tuple_of(args_value, "the arguments of a call");
    charge(tuple.size() * sizeof(Value));
    // A copy: make() below may grow the arenas the tuple lives in.
    const std::vector<Value> args = tuple;
    switch (g.callable) {
      case Callable::ordered_dict:
        if (!args.empty())
          fail("{} of collections.OrderedDict with arguments; {}", op, kUnsupported);
        return make_dict();
      case Callable::rebuild_tensor_v2: {
        if (args.size() != 6 && args.size() != 7) {
          fail("torch._utils._rebuild_tensor_v2 called with {} arguments instead of 6 or 7; {}",
               args.size(), kUnsupported);
        }
        if (args[0].kind != Kind::storage) {
          fail("torch._utils._rebuild_tensor_v2's storage is a {}, not a persistent storage; {}",
               kind_name(args[0].kind), kUnsupported);
        }
        Tensor t;
        t.storage = args[0].ref;
        const int64_t offset = int_of(args[1], "a tensor's storage offset");
        if (offset < 0) fail("tensor storage offset {} is negative; {}", offset, kCorrupt);
        t.offset = static_cast<uint64_t>(offset);
        t.size = ints_of(args[2], "a tensor's size");
        t.stride = ints_of(args[3], "a tensor's stride");
        return make(Kind::tensor, tensors_, std::move(t));
      }
      case Callable::rebuild_parameter:
        if (args.empty() || args[0].kind != Kind::tensor) {
          fail("torch._utils._rebuild_parameter without a tensor as its first argument; {}",
               kUnsupported);
        }
        return args[0];
      case Callable::storage_type:
        break;
    }
    fail("pickle calls torch.{} directly; {}", g.storage_type, kUnsupported);
  }

  Value persistent_load(const Value& pid) {
    const std::vector<Value>& t = tuple_of(pid, "a persistent id");
    if (t.size() != 5 || t[0].kind != Kind::string || strings_[t[0].ref] != "storage") {
      fail("persistent id is not ('storage', type, key, location, numel); {}", kUnsupported);
    }
    const Global& type = global_of(t[1], "a persistent id's storage type");
    if (type.callable != Callable::storage_type) {
      fail("persistent id names '{}' instead of a torch storage type; {}", type.name, kUnsupported);
    }
    Storage s;
    s.type = t[1].ref;
    charge(string_of(t[2], "a storage key").size());
    s.key = string_of(t[2], "a storage key");
    string_of(t[3], "a storage location");
    const int64_t numel = int_of(t[4], "a storage size");
    if (numel < 0) fail("storage '{}' has negative size {}; {}", printable(s.key), numel, kCorrupt);
    s.numel = static_cast<uint64_t>(numel);
    return make(Kind::storage, storages_, std::move(s));
  }

  void set_items(const Value& target, const std::vector<Value>& kv) {
    if (target.kind != Kind::dict)
      fail("SETITEM(S) on a {}, not a dict; {}", kind_name(target.kind), kUnsupported);
    if (kv.size() % 2 != 0) fail("SETITEMS with an odd number of items; {}", kCorrupt);
    auto& d = dicts_[target.ref];
    for (std::size_t k = 0; k < kv.size(); k += 2) d.emplace_back(kv[k], kv[k + 1]);
  }

  void append_items(const Value& target, const std::vector<Value>& items) {
    if (target.kind != Kind::list)
      fail("APPEND(S) on a {}, not a list; {}", kind_name(target.kind), kUnsupported);
    auto& l = seqs_[target.ref];
    l.insert(l.end(), items.begin(), items.end());
  }

  void memo_put(uint64_t index) { memo_[index] = top(); }
  void memo_get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end())
      fail("pickle reads memo slot {} that was never stored; {}", index, kCorrupt);
    push(it->second);
  }

  // Executes one opcode; true at STOP.
  bool step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t v = u8();
        if (v > 5) fail("pickle protocol {} is newer than the 5 ferry knows; {}", v, kUnsupported);
        return false;
      }
      case 0x95:  // FRAME: a length hint only
        le(8);
        return false;
      case '.':  // STOP
        result_ = pop();
        return true;
      case '(':  // MARK
        marks_.push_back(stack_.size());
        return false;
      case '0':  // POP
        pop();
        return false;
      case '1':  // POP_MARK
        pop_mark();
        return false;
      case '2':  // DUP
        push(top());
        return false;
      case 'N':  // NONE
        push(Value{Kind::none, 0, 0});
        return false;
      case 0x88:  // NEWTRUE
        push(Value{Kind::boolean, 0, 1});
        return false;
      case 0x89:  // NEWFALSE
        push(Value{Kind::boolean, 0, 0});
        return false;
      case 'J':  // BININT
        push(integer(static_cast<int32_t>(static_cast<uint32_t>(le(4)))));
        return false;
      case 'K':  // BININT1
        push(integer(static_cast<int64_t>(le(1))));
        return false;
      case 'M':  // BININT2
        push(integer(static_cast<int64_t>(le(2))));
        return false;
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        const uint8_t n = u8();
        if (n > 8) fail("pickle integer of {} bytes does not fit 64 bits; {}", n, kUnsupported);
        uint64_t v = n == 0 ? 0 : le(n);
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) != 0) v |= ~uint64_t{0} << (8 * n);  // sign
        push(integer(static_cast<int64_t>(v)));
        return false;
      }
      case 'G':  // BINFLOAT: only ever an argument torch ignores here
        le(8);
        push(Value{Kind::floating, 0, 0});
        return false;
      case 'X':  // BINUNICODE
        push(make_string(take(le(4))));
        return false;
      case 0x8c:  // SHORT_BINUNICODE
        push(make_string(take(le(1))));
        return false;
      case 0x8d:  // BINUNICODE8
        push(make_string(take(le(8))));
        return false;
      case '}':  // EMPTY_DICT
        push(make_dict());
        return false;
      case ']':  // EMPTY_LIST
        push(make_seq(Kind::list, {}));
        return false;
      case ')':  // EMPTY_TUPLE
        push(make_seq(Kind::tuple, {}));
        return false;
      case 't':  // TUPLE
        push(make_seq(Kind::tuple, pop_mark()));
        return false;
      case 'l':  // LIST
        push(make_seq(Kind::list, pop_mark()));
        return false;
      case 0x85:
      case 0x86:
      case 0x87: {  // TUPLE1..3
        const std::size_t n = op - 0x84u;
        if (stack_.size() < floor() + n)
          fail("TUPLE{} needs {} items on the stack; {}", n, n, kCorrupt);
        std::vector<Value> items(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        push(make_seq(Kind::tuple, std::move(items)));
        return false;
      }
      case 'd': {  // DICT
        const std::vector<Value> kv = pop_mark();
        const Value d = make_dict();
        set_items(d, kv);
        push(d);
        return false;
      }
      case 's': {  // SETITEM
        const Value v = pop();
        const Value k = pop();
        set_items(top(), {k, v});
        return false;
      }
      case 'u': {  // SETITEMS
        const std::vector<Value> kv = pop_mark();
        set_items(top(), kv);
        return false;
      }
      case 'a': {  // APPEND
        const Value v = pop();
        append_items(top(), {v});
        return false;
      }
      case 'e': {  // APPENDS
        const std::vector<Value> items = pop_mark();
        append_items(top(), items);
        return false;
      }
      case 'q':  // BINPUT
        memo_put(le(1));
        return false;
      case 'r':  // LONG_BINPUT
        memo_put(le(4));
        return false;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        return false;
      case 'h':  // BINGET
        memo_get(le(1));
        return false;
      case 'j':  // LONG_BINGET
        memo_get(le(4));
        return false;
      case 'c': {  // GLOBAL
        const std::string_view module = line();
        const std::string_view name = line();
        push(resolve_global(module, name));
        return false;
      }
      case 0x93: {  // STACK_GLOBAL
        const Value name = pop();
        const Value module = pop();
        const std::string& m = string_of(module, "STACK_GLOBAL's module");
        const std::string& n = string_of(name, "STACK_GLOBAL's name");
        push(resolve_global(m, n));
        return false;
      }
      case 'R': {  // REDUCE
        const Value args = pop();
        const Value fn = pop();
        push(call(fn, args, "REDUCE"));
        return false;
      }
      case 0x81: {  // NEWOBJ
        const Value args = pop();
        const Value cls = pop();
        push(call(cls, args, "NEWOBJ"));
        return false;
      }
      case 'b': {  // BUILD: sets attributes (an OrderedDict's _metadata), which carry no weights
        pop();
        const Value& obj = top();
        if (obj.kind != Kind::dict && obj.kind != Kind::tensor) {
          fail("BUILD on a {}; {}", kind_name(obj.kind), kUnsupported);
        }
        return false;
      }
      case 'Q':  // BINPERSID
        push(persistent_load(pop()));
        return false;
      default:
        break;
    }
    const char printable_op = std::isprint(op) ? static_cast<char>(op) : '?';
    fail("pickle opcode 0x{:02x} ('{}') is not supported; {}", op, printable_op, kUnsupported);
  }

  // ---- result ---------------------------------------------------------------------------
  std::vector<PickledTensor> extract(const Value& root) {
    op_pos_ = pos_;
    if (root.kind != Kind::dict) {
      fail("pickle holds a {}, not a state dict of tensors; {}", kind_name(root.kind),
           kUnsupported);
    }
    std::vector<PickledTensor> out;
    std::unordered_set<std::string_view> seen;
    for (const auto& [k, v] : dicts_[root.ref]) {
      const std::string& name = string_of(k, "a state dict key");
      if (v.kind != Kind::tensor) {
        fail("state dict entry '{}' is a {}, not a tensor; {}", printable(name), kind_name(v.kind),
             kUnsupported);
      }
      if (!seen.insert(name).second) {
        fail("state dict holds tensor '{}' twice; {}", printable(name), kCorrupt);
      }
      const Tensor& t = tensors_[v.ref];
      const Storage& s = storages_[t.storage];
      charge(sizeof(PickledTensor) + name.size() + s.key.size() +
             (t.size.size() + t.stride.size()) * sizeof(int64_t));
      const Global& type = globals_[s.type];
      PickledTensor p;
      p.name = name;
      p.storage_key = s.key;
      p.storage_type = type.storage_type;
      p.dtype = type.dtype;
      p.storage_numel = s.numel;
      p.storage_offset = t.offset;
      p.size = t.size;
      p.stride = t.stride;
      out.push_back(std::move(p));
    }
    return out;
  }

  std::string_view in_;
  std::string_view source_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  uint64_t ops_ = 0;
  uint64_t budget_bytes_;
  uint64_t budget_left_;
  std::vector<Value> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  Value result_;

  std::vector<std::string> strings_;
  std::vector<std::vector<Value>> seqs_;
  std::vector<std::vector<std::pair<Value, Value>>> dicts_;
  std::vector<Global> globals_;
  std::vector<Storage> storages_;
  std::vector<Tensor> tensors_;
};

}  // namespace

std::vector<PickledTensor> parse_torch_pickle(std::string_view bytes, std::string_view source) {
  FERRY_FORMAT_EXPECT(bytes.size() <= kMaxPickleBytes,
                      "{} is {} bytes, more than the {} byte limit; {}", source, bytes.size(),
                      kMaxPickleBytes, kUnsupported);
  return Interpreter(bytes, source).run();
}

TorchTensorLayout torch_tensor_layout(const PickledTensor& t, std::string_view source) {
  TorchTensorLayout l;
  FERRY_FORMAT_EXPECT(t.dtype.has_value(),
                      "{}: tensor '{}' is stored as torch.{}, a dtype ferry does not read; "
                      "convert the checkpoint to float16 or float32",
                      source, t.name, t.storage_type);
  l.dtype = *t.dtype;
  FERRY_FORMAT_EXPECT(t.size.size() <= static_cast<std::size_t>(kMaxRank),
                      "{}: tensor '{}' has rank {}, but ferry handles tensors of rank at most {}",
                      source, t.name, t.size.size(), kMaxRank);
  FERRY_FORMAT_EXPECT(t.stride.size() == t.size.size(),
                      "{}: tensor '{}' has {} sizes but {} strides; {}", source, t.name,
                      t.size.size(), t.stride.size(), kCorrupt);
  uint64_t numel = 1;
  for (const int64_t d : t.size) {
    FERRY_FORMAT_EXPECT(d >= 0, "{}: tensor '{}' has negative size {}; {}", source, t.name,
                        fmt::join(t.size, ", "), kCorrupt);
    FERRY_FORMAT_EXPECT(checked_mul(numel, static_cast<uint64_t>(d), numel),
                        "{}: tensor '{}' size ({}) overflows 64 bits; {}", source, t.name,
                        fmt::join(t.size, ", "), kCorrupt);
    l.shape.dims[static_cast<std::size_t>(l.shape.rank++)] = d;
  }
  // Row-major contiguous, as torch's is_contiguous() judges it: dimensions of size 1 may carry
  // any stride, and an empty tensor has no layout at all.
  if (numel > 1) {
    int64_t expected = 1;
    for (std::size_t k = t.size.size(); k-- > 0;) {
      if (t.size[k] == 1) continue;
      FERRY_FORMAT_EXPECT(t.stride[k] == expected,
                          "{}: tensor '{}' of size ({}) has strides ({}), which are not "
                          "row-major contiguous; ferry reads only contiguous tensors — save "
                          "the state dict after calling .contiguous() on each tensor",
                          source, t.name, fmt::join(t.size, ", "), fmt::join(t.stride, ", "));
      expected *= t.size[k];  // cannot overflow: numel fits 64 bits
    }
  }
  const uint64_t esize = dtype_size(l.dtype);
  uint64_t end_elems = 0;
  FERRY_FORMAT_EXPECT(
      checked_add(t.storage_offset, numel, end_elems) && end_elems <= t.storage_numel,
      "{}: tensor '{}' needs elements [{}, {}) of its storage '{}', which holds "
      "only {}; {}",
      source, t.name, t.storage_offset, t.storage_offset + numel, t.storage_key, t.storage_numel,
      kCorrupt);
  FERRY_FORMAT_EXPECT(checked_mul(t.storage_numel, esize, l.storage_nbytes),
                      "{}: storage '{}' of {} elements overflows 64 bits; {}", source,
                      t.storage_key, t.storage_numel, kCorrupt);
  // Both fit because storage_numel · esize does and offset + numel ≤ storage_numel.
  l.offset_bytes = t.storage_offset * esize;
  l.nbytes = numel * esize;
  return l;
}

}  // namespace ferry::offload::detail
