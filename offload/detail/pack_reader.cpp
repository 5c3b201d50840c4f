#include "offload/detail/pack_reader.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>

#include "offload/detail/pack_format.hpp"
#include "offload/detail/xxhash64.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"

namespace ferry::offload::detail {

namespace {

using nlohmann::json;

uint64_t get_u64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

uint32_t get_u32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// The field `key` of object j as T, or a FormatError naming where it is missing.
template <class T>
T field(const json& j, const char* key, const std::string& where, const std::string& source) {
  FERRY_FORMAT_EXPECT(j.is_object() && j.contains(key),
                      "{}: the pack header's {} has no \"{}\"; the pack is damaged — convert it "
                      "again with ferry convert",
                      source, where, key);
  try {
    return j.at(key).get<T>();
  } catch (const json::exception&) {
    FERRY_FORMAT_EXPECT(false,
                        "{}: the pack header's {} has a \"{}\" of the wrong type; the pack is "
                        "damaged — convert it again with ferry convert",
                        source, where, key);
  }
  return T{};
}

uint64_t parse_hex64(const std::string& s, const std::string& where, const std::string& source) {
  FERRY_FORMAT_EXPECT(
      s.size() == 16 && s.find_first_not_of("0123456789abcdef") == std::string::npos,
      "{}: {} has checksum \"{}\", not 16 lower-case hex digits; the pack is "
      "damaged — convert it again",
      source, where, s);
  return std::stoull(s, nullptr, 16);
}

// "tensor 'a'" or "tensors 'a' … 'c'": what bytes [lo, hi) of the pack hold.
std::string tensors_in(const PackContents& pack, uint64_t lo, uint64_t hi) {
  std::vector<const std::string*> names;
  for (const auto& t : pack.tensors.tensors)
    if (t.offset_bytes < hi && t.offset_bytes + t.nbytes > lo) names.push_back(&t.name);
  if (names.empty()) return "";
  if (names.size() == 1) return fmt::format(", in tensor '{}'", *names[0]);
  std::string out = ", in tensors";
  for (std::size_t i = 0; i < names.size(); ++i)
    out += fmt::format("{} '{}'", i == 0 ? "" : ",", *names[i]);
  return out;
}

}  // namespace

bool is_pack_magic(const unsigned char* first8) {
  return std::memcmp(first8, kPackMagic, sizeof kPackMagic) == 0;
}

PackContents read_pack(uint64_t file_size, const ReadAt& read_at, const std::string& source) {
  unsigned char pre[kPackPreambleBytes] = {};
  FERRY_FORMAT_EXPECT(file_size >= kPackPreambleBytes,
                      "{}: {} bytes is too short for a ferry pack (the preamble alone is {}); the "
                      "file is truncated — convert or copy it again",
                      source, file_size, kPackPreambleBytes);
  read_at(0, kPackPreambleBytes, pre, "the pack preamble");
  FERRY_FORMAT_EXPECT(is_pack_magic(pre),
                      "{}: not a ferry pack (it does not start with \"FERRYPAK\"); make one with "
                      "ferry convert -m MODEL_DIR -o OUT.ferry",
                      source);
  const uint32_t version = get_u32(pre + 8);
  FERRY_FORMAT_EXPECT(
      version == kPackVersion, "{}: ferry pack version {}, but this ferry reads version {}; {}",
      source, version, kPackVersion,
      version > kPackVersion ? "upgrade ferry, or convert the model again with this ferry"
                             : "convert the model again with this ferry (ferry convert)");
  FERRY_FORMAT_EXPECT(xxh64(pre, 48) == get_u64(pre + 48),
                      "{}: the pack preamble fails its checksum; the file is damaged — convert or "
                      "copy it again",
                      source);
  const uint32_t flags = get_u32(pre + 12);
  FERRY_FORMAT_EXPECT(flags == 0, "{}: pack flags {:#x} are unknown to this ferry; upgrade ferry",
                      source, flags);
  const uint64_t header_offset = get_u64(pre + 16);
  const uint64_t header_bytes = get_u64(pre + 24);
  const uint64_t header_sum = get_u64(pre + 32);
  const uint64_t file_bytes = get_u64(pre + 40);
  FERRY_FORMAT_EXPECT(file_size == file_bytes,
                      "{}: the pack is {} bytes but its preamble says {}; the file is {} — copy "
                      "or convert it again",
                      source, file_size, file_bytes,
                      file_size < file_bytes ? "truncated" : "followed by extra bytes");
  uint64_t header_end = 0;
  FERRY_FORMAT_EXPECT(header_bytes <= kPackMaxHeaderBytes &&
                          checked_add(header_offset, header_bytes, header_end) &&
                          header_end == file_bytes && header_offset >= kPackAlignment,
                      "{}: the pack preamble places its header at bytes [{}, +{}), outside the "
                      "file; the file is damaged — convert it again",
                      source, header_offset, header_bytes);
  std::string text(header_bytes, '\0');
  read_at(header_offset, header_bytes, text.data(), "the pack header");
  FERRY_FORMAT_EXPECT(xxh64(text.data(), text.size()) == header_sum,
                      "{}: the pack header fails its checksum; the file is damaged — convert or "
                      "copy it again",
                      source);
  const json h = parse_json_strict(text, fmt::format("{}: the pack header", source),
                                   "the pack is damaged — convert it again");
  FERRY_FORMAT_EXPECT(
      h.is_object() && field<std::string>(h, "format", "top level", source) == "ferry-pack",
      "{}: the header does not say \"format\": \"ferry-pack\"; convert it again", source);
  FERRY_FORMAT_EXPECT(field<uint64_t>(h, "version", "top level", source) == version,
                      "{}: the header's version differs from the preamble's; convert it again",
                      source);
  const json checksum = h.contains("checksum") ? h["checksum"] : json();
  FERRY_FORMAT_EXPECT(
      field<std::string>(checksum, "algorithm", "\"checksum\"", source) == "xxh64" &&
          field<uint64_t>(checksum, "chunk_bytes", "\"checksum\"", source) == kPackChecksumChunk,
      "{}: the pack uses checksums this ferry does not know; upgrade ferry", source);

  PackContents pack;
  pack.metadata = h.contains("metadata") ? h["metadata"] : json::object();
  FERRY_FORMAT_EXPECT(h.contains("blobs") && h["blobs"].is_array() && h.contains("tensors") &&
                          h["tensors"].is_array(),
                      "{}: the pack header lacks its \"blobs\" or \"tensors\" list; convert it "
                      "again",
                      source);
  uint64_t prev_end = kPackAlignment;
  for (const json& b : h["blobs"]) {
    PackBlob blob;
    const std::string where = fmt::format("blob #{}", pack.blobs.size());
    blob.name = field<std::string>(b, "name", where, source);
    blob.offset_bytes = field<uint64_t>(b, "offset", where, source);
    blob.nbytes = field<uint64_t>(b, "nbytes", where, source);
    uint64_t end = 0;
    FERRY_FORMAT_EXPECT(blob.offset_bytes % kPackAlignment == 0 && blob.offset_bytes >= prev_end &&
                            checked_add(blob.offset_bytes, blob.nbytes, end) &&
                            end <= header_offset,
                        "{}: blob '{}' at bytes [{}, +{}) is misaligned, overlaps another or "
                        "runs past the blobs' area; the pack is damaged — convert it again",
                        source, blob.name, blob.offset_bytes, blob.nbytes);
    prev_end = end;
    const auto sums = field<std::vector<std::string>>(b, "xxh64", where, source);
    const uint64_t chunks = (blob.nbytes + kPackChecksumChunk - 1) / kPackChecksumChunk;
    FERRY_FORMAT_EXPECT(sums.size() == chunks,
                        "{}: blob '{}' of {} bytes needs {} checksums but has {}; convert it again",
                        source, blob.name, blob.nbytes, chunks, sums.size());
    for (const auto& s : sums)
      blob.checksums.push_back(parse_hex64(s, "blob '" + blob.name + "'", source));
    pack.blobs.push_back(std::move(blob));
  }
  for (const json& t : h["tensors"]) {
    LocatedTensor lt;
    const std::string where = fmt::format("tensor #{}", pack.tensors.tensors.size());
    lt.name = field<std::string>(t, "name", where, source);
    const auto dtype = parse_dtype(field<std::string>(t, "dtype", where, source));
    FERRY_FORMAT_EXPECT(dtype && (is_float_weight(*dtype) || is_row_packed(*dtype)),
                        "{}: tensor '{}' has dtype \"{}\", unknown to this ferry; upgrade ferry",
                        source, lt.name, t.value("dtype", std::string()));
    lt.dtype = *dtype;
    const auto shape = field<std::vector<int64_t>>(t, "shape", where, source);
    FERRY_FORMAT_EXPECT(shape.size() <= static_cast<std::size_t>(kMaxRank) &&
                            std::all_of(shape.begin(), shape.end(),
                                        [](int64_t d) { return d >= 0 && d < (int64_t{1} << 40); }),
                        "{}: tensor '{}' has an invalid shape; convert it again", source, lt.name);
    // Each dimension is below 2^40, but four of them multiply past 64 bits: count the elements
    // with overflow checks before numel() or the packed sizes multiply them unchecked.
    uint64_t elements = 1;
    bool counted = true;
    for (const int64_t d : shape)
      counted = counted && checked_mul(elements, static_cast<uint64_t>(d), elements);
    FERRY_FORMAT_EXPECT(counted && elements <= (uint64_t{1} << 56),
                        "{}: tensor '{}' has shape {} of more elements than any file holds; the "
                        "pack is damaged — convert it again",
                        source, lt.name, fmt::join(shape, " x "));
    lt.shape.rank = static_cast<int>(shape.size());
    for (std::size_t d = 0; d < shape.size(); ++d) lt.shape.dims[d] = shape[d];
    FERRY_FORMAT_EXPECT(!is_row_packed(lt.dtype) ||
                            (lt.shape.rank == 2 &&
                             (!is_ggml_block(lt.dtype) || ggml_row_fits(lt.dtype, lt.shape[1]))),
                        "{}: tensor '{}' is packed as {} but has rank {} (or rows that are not "
                        "whole blocks); packed tensors are matrices — convert it again",
                        source, lt.name, dtype_name(lt.dtype), lt.shape.rank);
    const uint64_t want = is_row_packed(lt.dtype)
                              ? packed_matrix_bytes(lt.dtype, lt.shape[0], lt.shape[1])
                              : static_cast<uint64_t>(lt.shape.numel()) * dtype_size(lt.dtype);
    const auto blob = field<uint64_t>(t, "blob", where, source);
    const auto offset = field<uint64_t>(t, "offset", where, source);
    lt.nbytes = field<uint64_t>(t, "nbytes", where, source);
    uint64_t end = 0;
    FERRY_FORMAT_EXPECT(lt.nbytes == want && blob < pack.blobs.size() &&
                            checked_add(offset, lt.nbytes, end) && end <= pack.blobs[blob].nbytes,
                        "{}: tensor '{}' ({} {}, {} bytes) does not fit where the header puts it "
                        "(blob {}, offset {}); the pack is damaged — convert it again",
                        source, lt.name, dtype_name(lt.dtype), lt.shape.str(), lt.nbytes, blob,
                        offset);
    // The writer aligns every tensor (the kernels and O_DIRECT reads rely on it); a forged
    // offset of 1 once computed garbage from bytes shared with the previous tensor.
    FERRY_FORMAT_EXPECT(offset % kPackTensorAlignment == 0,
                        "{}: tensor '{}' starts at offset {} of blob {}, not a multiple of {}; "
                        "the pack is damaged — convert it again",
                        source, lt.name, offset, blob, kPackTensorAlignment);
    lt.offset_bytes = pack.blobs[blob].offset_bytes + offset;
    pack.tensors.tensors.push_back(std::move(lt));
  }
  std::sort(pack.tensors.tensors.begin(), pack.tensors.tensors.end(),
            [](const LocatedTensor& a, const LocatedTensor& b) {
              return a.offset_bytes < b.offset_bytes;
            });
  for (std::size_t i = 1; i < pack.tensors.tensors.size(); ++i) {
    const LocatedTensor& a = pack.tensors.tensors[i - 1];
    const LocatedTensor& b = pack.tensors.tensors[i];
    FERRY_FORMAT_EXPECT(b.offset_bytes >= a.offset_bytes + a.nbytes,
                        "{}: tensors '{}' and '{}' overlap (bytes {} … {} and {} … {}); the pack "
                        "is damaged — convert it again",
                        source, a.name, b.name, a.offset_bytes, a.offset_bytes + a.nbytes,
                        b.offset_bytes, b.offset_bytes + b.nbytes);
  }
  return pack;
}

std::vector<ChunkSpan> pack_chunks_overlapping(const PackContents& pack, uint64_t offset_bytes,
                                               uint64_t nbytes) {
  std::vector<ChunkSpan> out;
  const uint64_t end = offset_bytes + nbytes;
  for (std::size_t b = 0; b < pack.blobs.size(); ++b) {
    const PackBlob& blob = pack.blobs[b];
    const uint64_t blob_end = blob.offset_bytes + blob.nbytes;
    if (blob_end <= offset_bytes || blob.offset_bytes >= end || blob.nbytes == 0) continue;
    const uint64_t lo = std::max(offset_bytes, blob.offset_bytes) - blob.offset_bytes;
    const uint64_t hi = std::min(end, blob_end) - blob.offset_bytes;
    out.push_back({b, lo / kPackChecksumChunk, (hi + kPackChecksumChunk - 1) / kPackChecksumChunk});
  }
  return out;
}

uint64_t verify_pack_range(const PackContents& pack, uint64_t offset_bytes, const void* data,
                           uint64_t nbytes, const std::string& source,
                           std::vector<std::vector<char>>* verified, ThreadPool* pool) {
  const auto* base = static_cast<const unsigned char*>(data);
  const uint64_t end = offset_bytes + nbytes;
  struct Chunk {
    std::size_t blob;
    uint64_t index;
    uint64_t lo;  // absolute file offsets
    uint64_t hi;
  };
  std::vector<Chunk> chunks;
  for (const ChunkSpan& span : pack_chunks_overlapping(pack, offset_bytes, nbytes)) {
    const PackBlob& blob = pack.blobs[span.blob];
    for (uint64_t c = span.first; c < span.last; ++c) {
      const uint64_t lo = blob.offset_bytes + c * kPackChecksumChunk;
      const uint64_t hi = std::min(lo + kPackChecksumChunk, blob.offset_bytes + blob.nbytes);
      if (lo < offset_bytes || hi > end) continue;  // only partly read: checked elsewhere
      if (verified && (*verified)[span.blob][c]) continue;
      chunks.push_back({span.blob, c, lo, hi});
    }
  }
  std::vector<char> good(chunks.size(), 0);
  const auto hash = [&](int64_t first, int64_t last) {
    for (auto i = static_cast<std::size_t>(first); i < static_cast<std::size_t>(last); ++i) {
      const Chunk& c = chunks[i];
      good[i] =
          xxh64(base + (c.lo - offset_bytes), c.hi - c.lo) == pack.blobs[c.blob].checksums[c.index];
    }
  };
  // 4 chunks (1 MiB) a task at least: less is not worth waking the pool.
  if (pool != nullptr && chunks.size() >= 8) {
    pool->parallel_for(static_cast<int64_t>(chunks.size()), 4, hash);
  } else {
    hash(0, static_cast<int64_t>(chunks.size()));
  }
  uint64_t checked = 0;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    const Chunk& c = chunks[i];
    FERRY_FORMAT_EXPECT(good[i],
                        "{}: {} is corrupt: bytes [{}, {}){} fail their xxh64 checksum; the pack "
                        "was damaged on disk or in transfer — copy it again or re-run ferry "
                        "convert",
                        source, pack.blobs[c.blob].name, c.lo, c.hi, tensors_in(pack, c.lo, c.hi));
    checked += c.hi - c.lo;
    if (verified) (*verified)[c.blob][c.index] = 1;
  }
  return checked;
}

}  // namespace ferry::offload::detail
