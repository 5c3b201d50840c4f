#include "offload/detail/torch_writer_pickle.hpp"

#include <algorithm>
#include <cstdint>
#include <map>
#include <vector>

#include "offload/detail/writer_output.hpp"
#include "runtime/core/error.hpp"

namespace ferry::offload::detail {
namespace {

// A pickle protocol 2 emitter that makes the same choices as CPython's Pickler for the
// objects torch.save meets in a state dict, so the bytes match what torch writes. CPython
// memoizes every str, tuple and class it saves (BINPUT) and refers back (BINGET) when the
// same object is saved again; here the objects that torch shares between tensors (the
// classes, the constants 'storage' and 'cpu') are remembered by a key, everything else is
// saved fresh, as the fresh objects torch builds per tensor are.
class Pickler {
 public:
  Pickler() { out_ += "\x80\x02"; }  // PROTO 2

  void global(std::string_view module, std::string_view name) {
    if (reuse("global:" + std::string(module) + "." + std::string(name))) return;
    out_ += 'c';  // GLOBAL
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
    memo_put();
    remember_last("global:" + std::string(module) + "." + std::string(name));
  }

  void str(std::string_view s) {
    out_ += 'X';  // BINUNICODE
    append_le(out_, static_cast<uint32_t>(s.size()));
    out_ += s;
    memo_put();
  }

  // A str that is one shared object in torch's code (a constant), memoized once.
  void shared_str(std::string_view s) {
    if (reuse("str:" + std::string(s))) return;
    str(s);
    remember_last("str:" + std::string(s));
  }

  void integer(int64_t v) {
    if (v >= 0 && v <= 0xFF) {
      out_ += 'K';  // BININT1
      out_ += static_cast<char>(v);
    } else if (v >= 0 && v <= 0xFFFF) {
      out_ += 'M';  // BININT2
      append_le(out_, static_cast<uint16_t>(v));
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      out_ += 'J';  // BININT
      append_le(out_, static_cast<uint32_t>(static_cast<int32_t>(v)));
    } else {
      // LONG1: little-endian two's complement in (bit_length / 8) + 1 bytes, as
      // pickle.encode_long, then trimmed of a redundant 0xFF sign byte for negatives.
      const auto u = static_cast<uint64_t>(v);
      const uint64_t magnitude = v < 0 ? ~u : u;
      int bits = 0;
      for (uint64_t m = magnitude; m != 0; m >>= 1) ++bits;
      std::size_t n = static_cast<std::size_t>(bits / 8) + 1;
      std::string bytes;
      // n <= 8: an int64 magnitude has at most 63 significant bits.
      for (std::size_t i = 0; i < n; ++i) bytes += static_cast<char>((u >> (8 * i)) & 0xFFU);
      if (v < 0 && n > 1 && static_cast<uint8_t>(bytes[n - 1]) == 0xFF &&
          (static_cast<uint8_t>(bytes[n - 2]) & 0x80U) != 0) {
        bytes.pop_back();
        --n;
      }
      out_ += '\x8a';  // LONG1
      out_ += static_cast<char>(n);
      out_ += bytes;
    }
  }

  // A fresh tuple of ints (torch builds a new one per tensor for size and stride).
  void int_tuple(std::span<const int64_t> values) {
    if (values.empty()) {
      out_ += ')';  // EMPTY_TUPLE: CPython does not memoize the empty tuple
      return;
    }
    if (values.size() > 3) out_ += '(';  // MARK
    for (const int64_t v : values) integer(v);
    static constexpr char kTupleN[] = {'\x85', '\x86', '\x87'};  // TUPLE1, TUPLE2, TUPLE3
    out_ += values.size() > 3 ? 't' : kTupleN[values.size() - 1];
    memo_put();
  }

  void raw(std::string_view opcodes) { out_ += opcodes; }
  void memo_put() {
    const uint32_t index = next_memo_++;
    if (index < 256) {
      out_ += 'q';  // BINPUT
      out_ += static_cast<char>(index);
    } else {
      out_ += 'r';  // LONG_BINPUT
      append_le(out_, index);
    }
  }

  std::string finish() && {
    out_ += '.';  // STOP
    return std::move(out_);
  }

 private:
  bool reuse(const std::string& key) {
    const auto it = shared_.find(key);
    if (it == shared_.end()) return false;
    if (it->second < 256) {
      out_ += 'h';  // BINGET
      out_ += static_cast<char>(it->second);
    } else {
      out_ += 'j';  // LONG_BINGET
      append_le(out_, it->second);
    }
    return true;
  }
  void remember_last(const std::string& key) { shared_[key] = next_memo_ - 1; }

  std::string out_;
  uint32_t next_memo_ = 0;
  std::map<std::string, uint32_t> shared_;
};

// Row-major strides as torch computes them for a contiguous tensor: a dimension of size 0
// counts as 1, so a (3, 0) tensor has strides (1, 1).
std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> strides(static_cast<std::size_t>(shape.rank));
  int64_t stride = 1;
  for (int i = shape.rank - 1; i >= 0; --i) {
    strides[static_cast<std::size_t>(i)] = stride;
    stride *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

// CPython's Pickler._BATCHSIZE: dict items go out in SETITEMS batches of this many.
constexpr std::size_t kPickleBatch = 1000;

}  // namespace

std::optional<std::string_view> torch_storage_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "FloatStorage";
    case DType::f16:
      return "HalfStorage";
    case DType::bf16:
      return "BFloat16Storage";
    case DType::i8:
      return "CharStorage";
    case DType::u8:
      return "ByteStorage";
    case DType::i32:
      return "IntStorage";
    case DType::i64:
      return "LongStorage";
    case DType::boolean:
      return "BoolStorage";
    case DType::q8:
    case DType::q4_g64:
    case DType::q4_g128:
    case DType::q8_0:
    case DType::q4_0:
    case DType::q4_1:
    case DType::q5_0:
    case DType::q5_1:
    case DType::q4_k:
    case DType::q5_k:
    case DType::q6_k:
      break;  // packed dtypes have no torch storage
  }
  return std::nullopt;
}

std::string torch_state_dict_pickle(std::span<const TensorSpec* const> tensors) {
  Pickler p;
  // OrderedDict.__reduce_ex__(2) is (OrderedDict, (), None, None, iter(items)).
  p.global("collections", "OrderedDict");
  p.raw(")R");  // EMPTY_TUPLE, REDUCE
  p.memo_put();
  for (std::size_t batch = 0; batch < tensors.size(); batch += kPickleBatch) {
    const std::size_t end = std::min(tensors.size(), batch + kPickleBatch);
    if (end - batch > 1) p.raw("(");  // MARK
    for (std::size_t i = batch; i < end; ++i) {
      const TensorSpec& t = *tensors[i];
      const std::optional<std::string_view> storage = torch_storage_type(t.dtype);
      FERRY_EXPECT(storage.has_value(), "tensor '{}' has a dtype torch cannot store", t.name);
      p.str(t.name);
      // Tensor.__reduce_ex__: _rebuild_tensor_v2(storage, storage_offset, size, stride,
      // requires_grad, backward_hooks).
      p.global("torch._utils", "_rebuild_tensor_v2");
      p.raw("(");  // MARK: a 6-tuple is built with MARK ... TUPLE
      // The storage is saved by persistent id ('storage', type, key, location, numel).
      p.raw("(");
      p.shared_str("storage");
      p.global("torch", *storage);
      p.str(std::to_string(i));
      p.shared_str("cpu");
      p.integer(t.shape.numel());
      p.raw("t");  // TUPLE
      p.memo_put();
      p.raw("Q");  // BINPERSID
      p.integer(0);
      p.int_tuple(std::span(t.shape.dims.data(), static_cast<std::size_t>(t.shape.rank)));
      p.int_tuple(contiguous_strides(t.shape));
      p.raw("\x89");                           // NEWFALSE: requires_grad
      p.global("collections", "OrderedDict");  // backward_hooks: an empty OrderedDict
      p.raw(")R");
      p.memo_put();
      p.raw("t");
      p.memo_put();
      p.raw("R");
      p.memo_put();
    }
    p.raw(end - batch > 1 ? "u" : "s");  // SETITEMS or SETITEM
  }
  return std::move(p).finish();
}

}  // namespace ferry::offload::detail
