#include "offload/detail/safetensors_header.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"

namespace ferry::offload::detail {

namespace {

using nlohmann::json;

constexpr const char* kRedownload = "the file is truncated or corrupt — download it again";

// One JSON number that must be a non-negative integer; nlohmann keeps unsigned and signed
// integers apart, and a float or a negative value is an error the caller names.
// For messages: never throws, even on invalid UTF-8 in the file.
std::string dump(const json& v) { return v.dump(-1, ' ', false, json::error_handler_t::replace); }

bool as_unsigned(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    const int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    out = static_cast<uint64_t>(s);
    return true;
  }
  return false;
}

LocatedTensor parse_entry(const std::string& name, const json& e, uint64_t data_start,
                          uint64_t data_nbytes, std::string_view source, uint64_t& begin,
                          uint64_t& end) {
  FERRY_FORMAT_EXPECT(e.is_object(), "{}: header entry for tensor '{}' is not a JSON object; {}",
                      source, name, kRedownload);
  LocatedTensor t;
  t.name = name;

  const auto dt = e.find("dtype");
  FERRY_FORMAT_EXPECT(dt != e.end() && dt->is_string(),
                      "{}: tensor '{}' has no \"dtype\" string in the header; {}", source, name,
                      kRedownload);
  const auto& tag = dt->get_ref<const std::string&>();
  const auto dtype = dtype_from_safetensors(tag);
  FERRY_FORMAT_EXPECT(dtype.has_value(),
                      "{}: tensor '{}' has dtype \"{}\", which ferry does not read (supported: "
                      "F32, F16, BF16, I8, U8, I32, I64, BOOL); convert the checkpoint to F16 or "
                      "F32",
                      source, name, tag);
  t.dtype = *dtype;

  const auto sh = e.find("shape");
  FERRY_FORMAT_EXPECT(sh != e.end() && sh->is_array(),
                      "{}: tensor '{}' has no \"shape\" array in the header; {}", source, name,
                      kRedownload);
  FERRY_FORMAT_EXPECT(sh->size() <= static_cast<std::size_t>(kMaxRank),
                      "{}: tensor '{}' has rank {}, but ferry handles tensors of rank at most {}",
                      source, name, sh->size(), kMaxRank);
  uint64_t numel = 1;
  for (const json& d : *sh) {
    uint64_t dim = 0;
    FERRY_FORMAT_EXPECT(
        as_unsigned(d, dim) && dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
        "{}: tensor '{}' has shape {} with a dimension that is not a "
        "non-negative integer; {}",
        source, name, dump(*sh), kRedownload);
    FERRY_FORMAT_EXPECT(checked_mul(numel, dim, numel),
                        "{}: tensor '{}' shape {} overflows 64 bits; {}", source, name, dump(*sh),
                        kRedownload);
    t.shape.dims[static_cast<std::size_t>(t.shape.rank++)] = static_cast<int64_t>(dim);
  }
  FERRY_FORMAT_EXPECT(checked_mul(numel, dtype_size(t.dtype), t.nbytes),
                      "{}: tensor '{}' shape {} overflows 64 bits; {}", source, name, dump(*sh),
                      kRedownload);

  const auto off = e.find("data_offsets");
  FERRY_FORMAT_EXPECT(off != e.end() && off->is_array() && off->size() == 2 &&
                          as_unsigned((*off)[0], begin) && as_unsigned((*off)[1], end),
                      "{}: tensor '{}' needs \"data_offsets\": [begin, end] of two non-negative "
                      "integers; {}",
                      source, name, kRedownload);
  FERRY_FORMAT_EXPECT(begin <= end, "{}: tensor '{}' data_offsets [{}, {}) end before begin; {}",
                      source, name, begin, end, kRedownload);
  FERRY_FORMAT_EXPECT(end <= data_nbytes,
                      "{}: tensor '{}' data_offsets [{}, {}) end beyond the data section of {} "
                      "bytes; {}",
                      source, name, begin, end, data_nbytes, kRedownload);
  FERRY_FORMAT_EXPECT(end - begin == t.nbytes,
                      "{}: tensor '{}' data_offsets [{}, {}) hold {} bytes but shape {} of {} "
                      "needs {}; {}",
                      source, name, begin, end, end - begin, t.shape.str(), dtype_name(t.dtype),
                      t.nbytes, kRedownload);
  // data_start + end <= file size, which the caller established, so this cannot overflow.
  t.offset_bytes = data_start + begin;
  return t;
}

}  // namespace

uint64_t parse_safetensors_header_length(const unsigned char (&prefix)[8], uint64_t file_size,
                                         std::string_view source) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[i];
  FERRY_FORMAT_EXPECT(n <= kMaxSafetensorsHeaderBytes,
                      "{}: safetensors header length {} exceeds the {} byte limit; this is not a "
                      "safetensors file or it is corrupt — download it again",
                      source, n, kMaxSafetensorsHeaderBytes);
  FERRY_FORMAT_EXPECT(file_size >= 8 && n <= file_size - 8,
                      "{}: safetensors header length {} is beyond the file of {} bytes; {}", source,
                      n, file_size, kRedownload);
  return n;
}

FileTensors parse_safetensors_header(std::string_view json_text, uint64_t data_start,
                                     uint64_t data_nbytes, std::string_view source) {
  const json header =
      parse_json_strict(json_text, fmt::format("{}: safetensors header", source), kRedownload);
  FERRY_FORMAT_EXPECT(header.is_object(), "{}: safetensors header is not a JSON object; {}", source,
                      kRedownload);

  struct Span {
    uint64_t begin, end;
    std::size_t index;
  };
  FileTensors out;
  std::vector<LocatedTensor> all;
  std::vector<Span> spans;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      FERRY_FORMAT_EXPECT(entry.is_object(), "{}: \"__metadata__\" is not a JSON object; {}",
                          source, kRedownload);
      continue;
    }
    uint64_t begin = 0, end = 0;
    all.push_back(parse_entry(name, entry, data_start, data_nbytes, source, begin, end));
    // A zero-byte tensor occupies nothing, so it cannot overlap another.
    if (begin != end) spans.push_back({begin, end, all.size() - 1});
  }

  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < spans.size(); ++i) {
    const Span& prev = spans[i - 1];
    const Span& cur = spans[i];
    FERRY_FORMAT_EXPECT(cur.begin >= prev.end,
                        "{}: tensors '{}' data_offsets [{}, {}) and '{}' [{}, {}) overlap; {}",
                        source, all[prev.index].name, prev.begin, prev.end, all[cur.index].name,
                        cur.begin, cur.end, kRedownload);
  }

  std::stable_sort(all.begin(), all.end(), [](const LocatedTensor& a, const LocatedTensor& b) {
    return a.offset_bytes < b.offset_bytes;
  });
  for (LocatedTensor& t : all) {
    if (is_skipped_tensor(t.name, t.dtype)) {
      out.skipped.push_back(std::move(t.name));
    } else {
      out.tensors.push_back(std::move(t));
    }
  }
  return out;
}

FileTensors read_safetensors(uint64_t file_size, const ReadAt& read_at, std::string_view source) {
  FERRY_FORMAT_EXPECT(file_size >= 8,
                      "{}: file of {} bytes is too short to be safetensors (needs an 8-byte "
                      "header length); {}",
                      source, file_size, kRedownload);
  unsigned char prefix[8];
  read_at(0, 8, prefix, "the safetensors header length");
  const uint64_t header_nbytes = parse_safetensors_header_length(prefix, file_size, source);
  std::string json_text(header_nbytes, '\0');
  read_at(8, header_nbytes, json_text.data(), "the safetensors header");
  const uint64_t data_start = 8 + header_nbytes;
  return parse_safetensors_header(json_text, data_start, file_size - data_start, source);
}

}  // namespace ferry::offload::detail
