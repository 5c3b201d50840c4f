#include "offload/detail/gguf.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <unordered_set>

#include "runtime/core/error.hpp"
#include "runtime/core/ggml_quant.hpp"
#include "runtime/core/quant.hpp"

namespace ferry::offload::detail {

namespace {

// Metadata values stored as JSON cost more than their bytes in the file (a u8 array element is
// one byte on disk and ~16 in memory), so the elements of all arrays together are capped: real
// files hold a few arrays of ≤ 262,144 entries (the vocabulary, its scores and types, merges).
constexpr uint64_t kMaxArrayElements = 32ull << 20;
constexpr int kMaxArrayDepth = 2;
constexpr uint64_t kMaxDims = 4;
constexpr std::size_t kReadChunk = 1u << 20;

// A forward reader over the header, buffering kReadChunk bytes at a time.
class Cursor {
 public:
  Cursor(uint64_t file_size, const ReadAt& read_at, std::string_view source)
      : size_(file_size), read_at_(read_at), source_(source) {}

  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }
  const std::string& source() const { return source_; }

  void read(void* dst, uint64_t n, const std::string& what) {
    FERRY_FORMAT_EXPECT(n <= left(),
                        "{}: the file ends at byte {} in the middle of {} ({} bytes needed at "
                        "offset {}); the file is truncated — download it again",
                        source_, size_, what, n, pos_);
    auto* out = static_cast<unsigned char*>(dst);
    while (n > 0) {
      if (pos_ < buf_begin_ || pos_ >= buf_begin_ + buf_.size()) fill();
      const uint64_t in_buf = buf_begin_ + buf_.size() - pos_;
      const uint64_t take = std::min(n, in_buf);
      std::memcpy(out, buf_.data() + (pos_ - buf_begin_), take);
      out += take;
      pos_ += take;
      n -= take;
    }
  }

  template <class T>
  T get(const std::string& what) {
    T v;
    read(&v, sizeof v, what);
    return v;  // little-endian host (x86-64, aarch64): the file's order
  }

  std::string string(const std::string& what) {
    const auto n = get<uint64_t>(what + "'s length");
    FERRY_FORMAT_EXPECT(n <= left(),
                        "{}: {} claims {} bytes at offset {} but only {} bytes are left in the "
                        "file; the file is corrupt or truncated",
                        source_, what, n, pos_ - 8, left());
    std::string s(n, '\0');
    read(s.data(), n, what);
    return s;
  }

 private:
  void fill() {
    buf_begin_ = pos_;
    buf_.resize(static_cast<std::size_t>(std::min<uint64_t>(kReadChunk, size_ - pos_)));
    read_at_(pos_, buf_.size(), buf_.data(), "the GGUF header");
  }

  uint64_t size_;
  const ReadAt& read_at_;
  std::string source_;
  uint64_t pos_ = 0;
  uint64_t buf_begin_ = 0;
  std::vector<unsigned char> buf_;
};

// The smallest number of bytes one value of type t takes in the file (bounds array counts).
uint64_t min_value_bytes(GgufType t) {
  switch (t) {
    case GgufType::u8:
    case GgufType::i8:
    case GgufType::boolean:
      return 1;
    case GgufType::u16:
    case GgufType::i16:
      return 2;
    case GgufType::u32:
    case GgufType::i32:
    case GgufType::f32:
      return 4;
    case GgufType::u64:
    case GgufType::i64:
    case GgufType::f64:
    case GgufType::string:
      return 8;
    case GgufType::array:
      return 12;
  }
  return 1;
}

bool known_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::f64); }

struct ValueReader {
  Cursor& in;
  uint64_t elements = 0;

  nlohmann::json value(GgufType t, const std::string& key, int depth, std::string& type_text) {
    switch (t) {
      case GgufType::u8:
        return in.get<uint8_t>(key);
      case GgufType::i8:
        return in.get<int8_t>(key);
      case GgufType::u16:
        return in.get<uint16_t>(key);
      case GgufType::i16:
        return in.get<int16_t>(key);
      case GgufType::u32:
        return in.get<uint32_t>(key);
      case GgufType::i32:
        return in.get<int32_t>(key);
      case GgufType::f32:
        return in.get<float>(key);
      case GgufType::u64:
        return in.get<uint64_t>(key);
      case GgufType::i64:
        return in.get<int64_t>(key);
      case GgufType::f64:
        return in.get<double>(key);
      case GgufType::boolean: {
        const auto b = in.get<uint8_t>(key);
        FERRY_FORMAT_EXPECT(b <= 1, "{}: metadata key '{}' is a bool with value {}; the file is "
                            "corrupt — download it again", in.source(), key, b);
        return b == 1;
      }
      case GgufType::string:
        return in.string(fmt::format("metadata key '{}'", key));
      case GgufType::array: {
        FERRY_FORMAT_EXPECT(depth < kMaxArrayDepth,
                            "{}: metadata key '{}' nests arrays deeper than {}; ferry reads "
                            "arrays of values or of arrays of values",
                            in.source(), key, kMaxArrayDepth);
        const auto et = in.get<uint32_t>(key + "'s array type");
        FERRY_FORMAT_EXPECT(known_type(et),
                            "{}: metadata key '{}' is an array of unknown type {}; the file is "
                            "corrupt or from a newer GGUF version",
                            in.source(), key, et);
        const auto n = in.get<uint64_t>(key + "'s array length");
        const auto elem = static_cast<GgufType>(et);
        FERRY_FORMAT_EXPECT(n <= in.left() / min_value_bytes(elem),
                            "{}: metadata key '{}' claims {} array elements of type {}, more than "
                            "the {} bytes left in the file can hold; the file is corrupt or "
                            "truncated",
                            in.source(), key, n, gguf_type_name(elem), in.left());
        elements += n;
        FERRY_FORMAT_EXPECT(elements <= kMaxArrayElements,
                            "{}: metadata arrays hold more than {} elements in all (at key '{}'); "
                            "ferry refuses metadata that large",
                            in.source(), kMaxArrayElements, key);
        std::string inner;
        nlohmann::json a = nlohmann::json::array();
        a.get_ref<nlohmann::json::array_t&>().reserve(n);
        for (uint64_t i = 0; i < n; ++i) a.push_back(value(elem, key, depth + 1, inner));
        if (inner.empty()) inner = std::string(gguf_type_name(elem));
        type_text = fmt::format("array[{}]", inner);
        return a;
      }
    }
    return nullptr;
  }
};

}  // namespace

std::optional<DType> dtype_of_ggml(uint32_t t) {
  switch (t) {
    case 0:
      return DType::f32;
    case 1:
      return DType::f16;
    case 2:
      return DType::q4_0;
    case 3:
      return DType::q4_1;
    case 6:
      return DType::q5_0;
    case 7:
      return DType::q5_1;
    case 8:
      return DType::q8_0;
    case 12:
      return DType::q4_k;
    case 13:
      return DType::q5_k;
    case 14:
      return DType::q6_k;
    case 30:
      return DType::bf16;
    default:
      return std::nullopt;
  }
}

std::optional<uint32_t> ggml_type_of(DType dtype) {
  for (uint32_t t : {0u, 1u, 2u, 3u, 6u, 7u, 8u, 12u, 13u, 14u, 30u})
    if (dtype_of_ggml(t) == dtype) return t;
  return std::nullopt;
}

std::string_view gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::u8:
      return "u8";
    case GgufType::i8:
      return "i8";
    case GgufType::u16:
      return "u16";
    case GgufType::i16:
      return "i16";
    case GgufType::u32:
      return "u32";
    case GgufType::i32:
      return "i32";
    case GgufType::f32:
      return "f32";
    case GgufType::boolean:
      return "bool";
    case GgufType::string:
      return "string";
    case GgufType::array:
      return "array";
    case GgufType::u64:
      return "u64";
    case GgufType::i64:
      return "i64";
    case GgufType::f64:
      return "f64";
  }
  return "?";
}

std::string ggml_type_name(uint32_t t) {
  static constexpr const char* kNames[] = {
      "F32",     "F16",    "Q4_0",  "Q4_1",    "Q4_2",   "Q4_3",  "Q5_0",  "Q5_1",
      "Q8_0",    "Q8_1",   "Q2_K",  "Q3_K",    "Q4_K",   "Q5_K",  "Q6_K",  "Q8_K",
      "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
      "I8",      "I16",    "I32",   "I64",     "F64",    "IQ1_M", "BF16",  "Q4_0_4_4",
      "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0"};
  if (t < std::size(kNames)) return kNames[t];
  return fmt::format("type {}", t);
}

bool is_gguf_magic(const unsigned char* m) {
  return m[0] == 'G' && m[1] == 'G' && m[2] == 'U' && m[3] == 'F';
}

GgufHeader read_gguf_header(uint64_t file_size, const ReadAt& read_at, std::string_view source) {
  const std::string src(source);
  Cursor in(file_size, read_at, source);
  unsigned char magic[4];
  in.read(magic, 4, "the magic bytes");
  FERRY_FORMAT_EXPECT(is_gguf_magic(magic),
                      "{} is not a GGUF file (it does not start with \"GGUF\")", src);
  GgufHeader h;
  h.version = in.get<uint32_t>("the version");
  FERRY_FORMAT_EXPECT(
      !(__builtin_bswap32(h.version) == 2 || __builtin_bswap32(h.version) == 3),
      "{} is a big-endian GGUF file (version {} byte-swapped); ferry reads little-endian GGUF "
      "only — use the little-endian release of the model",
      src, __builtin_bswap32(h.version));
  FERRY_FORMAT_EXPECT(h.version != 1,
                      "{} is GGUF version 1 (from before September 2023), which ferry does not "
                      "read; download a current conversion of the model",
                      src);
  FERRY_FORMAT_EXPECT(h.version == 2 || h.version == 3,
                      "{} is GGUF version {}; ferry reads versions 2 and 3", src, h.version);
  const auto n_tensors = in.get<uint64_t>("the tensor count");
  const auto n_kv = in.get<uint64_t>("the metadata count");
  // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes, each tensor info 8 + 4 +
  // 8 + 4 + 8.
  FERRY_FORMAT_EXPECT(n_kv <= in.left() / 13,
                      "{}: the header claims {} metadata keys, more than the file's {} bytes can "
                      "hold; the file is corrupt or truncated",
                      src, n_kv, file_size);
  FERRY_FORMAT_EXPECT(n_tensors <= in.left() / 32,
                      "{}: the header claims {} tensors, more than the file's {} bytes can hold; "
                      "the file is corrupt or truncated",
                      src, n_tensors, file_size);

  ValueReader values{in};
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = in.string(fmt::format("metadata key {}", i));
    FERRY_FORMAT_EXPECT(!h.metadata.contains(key),
                        "{}: metadata key '{}' appears twice; the file is corrupt", src, key);
    const auto t = in.get<uint32_t>(fmt::format("metadata key '{}''s type", key));
    FERRY_FORMAT_EXPECT(known_type(t),
                        "{}: metadata key '{}' has unknown value type {}; the file is corrupt or "
                        "from a newer GGUF version",
                        src, key, t);
    std::string type_text(gguf_type_name(static_cast<GgufType>(t)));
    nlohmann::json v = values.value(static_cast<GgufType>(t), key, 0, type_text);
    h.metadata_types[key] = type_text;
    h.metadata[key] = std::move(v);
  }

  if (h.metadata.contains("general.alignment")) {
    const auto& a = h.metadata["general.alignment"];
    FERRY_FORMAT_EXPECT(a.is_number_unsigned() && a.get<uint64_t>() > 0 &&
                            std::has_single_bit(a.get<uint64_t>()) && a.get<uint64_t>() <= (1u << 30),
                        "{}: general.alignment is {}; it must be a power of two", src, a.dump());
    h.alignment = a.get<uint64_t>();
  }

  std::unordered_set<std::string> names;
  h.tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = in.string(fmt::format("tensor {}'s name", i));
    FERRY_FORMAT_EXPECT(names.insert(t.name).second,
                        "{}: tensor '{}' appears twice; the file is corrupt", src, t.name);
    const auto n_dims = in.get<uint32_t>(fmt::format("tensor '{}''s rank", t.name));
    FERRY_FORMAT_EXPECT(n_dims >= 1 && n_dims <= kMaxDims,
                        "{}: tensor '{}' has {} dimensions; GGUF tensors have 1 to {}", src,
                        t.name, n_dims, kMaxDims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const auto ne = in.get<uint64_t>(fmt::format("tensor '{}''s shape", t.name));
      FERRY_FORMAT_EXPECT(ne >= 1 && ne < (1ull << 40) && checked_mul(numel, ne, numel),
                          "{}: tensor '{}' has dimension {} of size {}; the file is corrupt", src,
                          t.name, d, ne);
      t.ne.push_back(ne);
    }
    t.ggml_type = in.get<uint32_t>(fmt::format("tensor '{}''s type", t.name));
    const uint64_t rel = in.get<uint64_t>(fmt::format("tensor '{}''s offset", t.name));
    const std::optional<DType> dt = dtype_of_ggml(t.ggml_type);
    FERRY_FORMAT_EXPECT(dt.has_value(),
                        "{}: tensor '{}' is stored as {}, which ferry does not compute on; ferry "
                        "reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K and Q6_K "
                        "(Q4_K_M, Q5_K_M and Q6_K files) — download one of those quantizations",
                        src, t.name, ggml_type_name(t.ggml_type));
    if (is_ggml_block(*dt)) {
      FERRY_FORMAT_EXPECT(t.ne[0] % static_cast<uint64_t>(ggml_block_elems(*dt)) == 0,
                          "{}: tensor '{}' has rows of {} elements, not a whole number of {}'s "
                          "{}-element blocks; the file is corrupt",
                          src, t.name, t.ne[0], ggml_type_name(t.ggml_type),
                          ggml_block_elems(*dt));
      t.nbytes = numel / t.ne[0] * ggml_row_bytes(*dt, static_cast<int64_t>(t.ne[0]));
    } else {
      FERRY_FORMAT_EXPECT(checked_mul(numel, dtype_size(*dt), t.nbytes),
                          "{}: tensor '{}' is too large; the file is corrupt", src, t.name);
    }
    FERRY_FORMAT_EXPECT(rel % h.alignment == 0,
                        "{}: tensor '{}' starts at data offset {}, not a multiple of the file's "
                        "alignment {}; the file is corrupt",
                        src, t.name, rel, h.alignment);
    t.offset_bytes = rel;  // made absolute below
    h.tensors.push_back(std::move(t));
  }
  const uint64_t infos_end = in.pos();
  h.data_offset = (infos_end + h.alignment - 1) / h.alignment * h.alignment;
  FERRY_FORMAT_EXPECT(h.data_offset <= file_size || h.tensors.empty(),
                      "{}: the file ends at byte {} before its data section (at {}); the file is "
                      "truncated — download it again",
                      src, file_size, h.data_offset);

  std::vector<const GgufTensorInfo*> by_offset;
  for (GgufTensorInfo& t : h.tensors) {
    uint64_t end = 0;
    FERRY_FORMAT_EXPECT(checked_add(h.data_offset, t.offset_bytes, t.offset_bytes) &&
                            checked_add(t.offset_bytes, t.nbytes, end) && end <= file_size,
                        "{}: tensor '{}' ({} bytes of {}, shape {}) ends at byte {} but the file "
                        "has {} bytes; the file is truncated or corrupt — download it again",
                        src, t.name, t.nbytes, ggml_type_name(t.ggml_type),
                        nlohmann::json(t.ne).dump(), end, file_size);
    by_offset.push_back(&t);
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const auto* a, const auto* b) { return a->offset_bytes < b->offset_bytes; });
  for (std::size_t i = 1; i < by_offset.size(); ++i) {
    const auto* a = by_offset[i - 1];
    const auto* b = by_offset[i];
    FERRY_FORMAT_EXPECT(b->offset_bytes >= a->offset_bytes + a->nbytes,
                        "{}: tensors '{}' and '{}' overlap (bytes {}–{} and {}–{}); the file is "
                        "corrupt",
                        src, a->name, b->name, a->offset_bytes, a->offset_bytes + a->nbytes,
                        b->offset_bytes, b->offset_bytes + b->nbytes);
  }
  return h;
}

FileTensors gguf_file_tensors(const GgufHeader& header, std::string_view source) {
  FileTensors out;
  for (const GgufTensorInfo& t : header.tensors) {
    LocatedTensor lt;
    lt.name = t.name;
    lt.dtype = *dtype_of_ggml(t.ggml_type);
    FERRY_FORMAT_EXPECT(t.ne.size() <= static_cast<std::size_t>(kMaxRank),
                        "{}: tensor '{}' has {} dimensions; ferry handles at most {}", source,
                        t.name, t.ne.size(), kMaxRank);
    lt.shape.rank = static_cast<int>(t.ne.size());
    for (std::size_t d = 0; d < t.ne.size(); ++d)
      lt.shape.dims[t.ne.size() - 1 - d] = static_cast<int64_t>(t.ne[d]);
    lt.offset_bytes = t.offset_bytes;
    lt.nbytes = t.nbytes;
    out.tensors.push_back(std::move(lt));
  }
  std::sort(out.tensors.begin(), out.tensors.end(),
            [](const auto& a, const auto& b) { return a.offset_bytes < b.offset_bytes; });
  return out;
}

namespace {

template <class T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_value(std::string& out, GgufType t, const nlohmann::json& v, GgufType elem) {
  switch (t) {
    case GgufType::u8:
      return put(out, v.get<uint8_t>());
    case GgufType::i8:
      return put(out, v.get<int8_t>());
    case GgufType::u16:
      return put(out, v.get<uint16_t>());
    case GgufType::i16:
      return put(out, v.get<int16_t>());
    case GgufType::u32:
      return put(out, v.get<uint32_t>());
    case GgufType::i32:
      return put(out, v.get<int32_t>());
    case GgufType::f32:
      return put(out, v.get<float>());
    case GgufType::u64:
      return put(out, v.get<uint64_t>());
    case GgufType::i64:
      return put(out, v.get<int64_t>());
    case GgufType::f64:
      return put(out, v.get<double>());
    case GgufType::boolean:
      return put<uint8_t>(out, v.get<bool>() ? 1 : 0);
    case GgufType::string:
      return put_string(out, v.get<std::string>());
    case GgufType::array: {
      // Arrays of arrays: the inner element type follows the first inner value.
      GgufType inner = GgufType::u8;
      if (elem == GgufType::array && !v.empty() && !v[0].empty()) {
        const auto& f = v[0][0];
        inner = f.is_string()             ? GgufType::string
                : f.is_boolean()          ? GgufType::boolean
                : f.is_number_integer()   ? GgufType::i64
                                          : GgufType::f64;
      }
      put<uint32_t>(out, static_cast<uint32_t>(elem));
      put<uint64_t>(out, v.size());
      for (const auto& e : v) put_value(out, elem, e, inner);
      return;
    }
  }
}

}  // namespace

void GgufWriter::set(std::string key, GgufType type, nlohmann::json value, GgufType elem) {
  for (Kv& kv : kv_) {
    if (kv.key == key) {
      kv = {std::move(key), type, std::move(value), elem};
      return;
    }
  }
  kv_.push_back({std::move(key), type, std::move(value), elem});
}

uint64_t GgufWriter::add_tensor(std::string name, uint32_t ggml_type, std::vector<uint64_t> ne,
                                uint64_t nbytes) {
  const uint64_t offset = (data_end_ + alignment_ - 1) / alignment_ * alignment_;
  tensors_.push_back({std::move(name), ggml_type, std::move(ne), offset, nbytes});
  data_end_ = offset + nbytes;
  return offset;
}

std::string GgufWriter::infos() const {
  std::string out = "GGUF";
  put<uint32_t>(out, 3);
  put<uint64_t>(out, tensors_.size());
  const bool explicit_alignment = alignment_ != 32;
  put<uint64_t>(out, kv_.size() + (explicit_alignment ? 1 : 0));
  if (explicit_alignment) {
    put_string(out, "general.alignment");
    put<uint32_t>(out, static_cast<uint32_t>(GgufType::u32));
    put<uint32_t>(out, static_cast<uint32_t>(alignment_));
  }
  for (const Kv& kv : kv_) {
    put_string(out, kv.key);
    put<uint32_t>(out, static_cast<uint32_t>(kv.type));
    put_value(out, kv.type, kv.value, kv.elem);
  }
  for (const Info& t : tensors_) {
    put_string(out, t.name);
    put<uint32_t>(out, static_cast<uint32_t>(t.ne.size()));
    for (uint64_t n : t.ne) put<uint64_t>(out, n);
    put<uint32_t>(out, t.type);
    put<uint64_t>(out, t.offset);
  }
  return out;
}

std::string GgufWriter::header() const {
  std::string out = infos();
  out.resize((out.size() + alignment_ - 1) / alignment_ * alignment_, '\0');
  return out;
}

uint64_t GgufWriter::data_offset() const {
  const uint64_t n = infos().size();
  return (n + alignment_ - 1) / alignment_ * alignment_;
}

uint64_t GgufWriter::data_bytes() const { return data_end_; }

}  // namespace ferry::offload::detail
