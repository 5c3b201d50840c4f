#include "offload/detail/zip.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "offload/detail/zip_format.hpp"
#include "runtime/core/error.hpp"

namespace ferry::offload::detail {

namespace {

using namespace zip_format;  // NOLINT(google-build-using-namespace): the record constants
constexpr uint64_t kMaxCommentBytes = 0xffff;

constexpr const char* kRedownload =
    "the PyTorch checkpoint is truncated or corrupt — download it again";

uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t le32(const unsigned char* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t le64(const unsigned char* p) {
  return static_cast<uint64_t>(le32(p)) | (static_cast<uint64_t>(le32(p + 4)) << 32);
}

struct EndRecord {
  uint64_t cd_offset = 0;
  uint64_t cd_nbytes = 0;
  uint64_t entry_count = 0;
  uint64_t cd_limit = 0;  // the central directory must end at or before this offset
};

// Finds the end-of-central-directory record in the file's last 64 KiB + 22 bytes, and the zip64
// records it points to when present (torch always writes them).
EndRecord read_end_record(uint64_t file_size, const ReadAt& read_at, const std::string& source) {
  FERRY_FORMAT_EXPECT(file_size >= kEocdBytes,
                      "{}: file of {} bytes is too short to be a zip archive (PyTorch "
                      "checkpoint); {}",
                      source, file_size, kRedownload);
  const uint64_t tail_nbytes = std::min(file_size, kEocdBytes + kMaxCommentBytes);
  const uint64_t tail_start = file_size - tail_nbytes;
  std::string tail(tail_nbytes, '\0');
  read_at(tail_start, tail_nbytes, tail.data(), "the zip end-of-central-directory search");
  const auto* t = reinterpret_cast<const unsigned char*>(tail.data());

  // Scan backwards; the record is the one whose comment ends exactly at the end of the file,
  // which rules out a stray signature inside tensor data.
  uint64_t eocd = UINT64_MAX;
  for (uint64_t pos = tail_nbytes - kEocdBytes + 1; pos-- > 0;) {
    if (le32(t + pos) == kEocdSig && pos + kEocdBytes + le16(t + pos + 20) == tail_nbytes) {
      eocd = pos;
      break;
    }
  }
  FERRY_FORMAT_EXPECT(eocd != UINT64_MAX,
                      "{}: not a complete zip archive (no end-of-central-directory record in "
                      "its last {} bytes); {}",
                      source, tail_nbytes, kRedownload);
  const unsigned char* e = t + eocd;
  const uint64_t eocd_abs = tail_start + eocd;
  FERRY_FORMAT_EXPECT(le16(e + 4) == 0 && le16(e + 6) == 0,
                      "{}: zip archive spans several disks, which PyTorch never writes; {}", source,
                      kRedownload);
  EndRecord r;
  r.entry_count = le16(e + 10);
  r.cd_nbytes = le32(e + 12);
  r.cd_offset = le32(e + 16);
  r.cd_limit = eocd_abs;

  if (eocd_abs >= kZip64LocatorBytes) {
    unsigned char loc[kZip64LocatorBytes];
    const uint64_t loc_abs = eocd_abs - kZip64LocatorBytes;
    if (loc_abs >= tail_start) {
      std::memcpy(loc, t + (loc_abs - tail_start), sizeof loc);
    } else {
      read_at(loc_abs, sizeof loc, loc, "the zip64 end-of-central-directory locator");
    }
    if (le32(loc) == kZip64LocatorSig) {
      const uint64_t z_abs = le64(loc + 8);
      FERRY_FORMAT_EXPECT(z_abs <= loc_abs && loc_abs - z_abs >= kZip64EocdBytes,
                          "{}: zip64 end-of-central-directory record at byte {} is not before "
                          "its locator at byte {}; {}",
                          source, z_abs, loc_abs, kRedownload);
      unsigned char z[kZip64EocdBytes];
      read_at(z_abs, sizeof z, z, "the zip64 end-of-central-directory record");
      FERRY_FORMAT_EXPECT(le32(z) == kZip64EocdSig,
                          "{}: no zip64 end-of-central-directory record at byte {} where the "
                          "locator points; {}",
                          source, z_abs, kRedownload);
      FERRY_FORMAT_EXPECT(le32(z + 16) == 0 && le32(z + 20) == 0,
                          "{}: zip archive spans several disks, which PyTorch never writes; {}",
                          source, kRedownload);
      r.entry_count = le64(z + 32);
      r.cd_nbytes = le64(z + 40);
      r.cd_offset = le64(z + 48);
      r.cd_limit = z_abs;
    }
  }
  uint64_t cd_end = 0;
  FERRY_FORMAT_EXPECT(checked_add(r.cd_offset, r.cd_nbytes, cd_end) && cd_end <= r.cd_limit,
                      "{}: zip central directory [{}, {}) runs past the end records at byte {}; "
                      "{}",
                      source, r.cd_offset, r.cd_offset + r.cd_nbytes, r.cd_limit, kRedownload);
  FERRY_FORMAT_EXPECT(r.cd_nbytes <= kMaxZipCentralDirectoryBytes,
                      "{}: zip central directory of {} bytes exceeds the {} byte limit; this is "
                      "not a PyTorch checkpoint ferry can read",
                      source, r.cd_nbytes, kMaxZipCentralDirectoryBytes);
  FERRY_FORMAT_EXPECT(r.entry_count <= r.cd_nbytes / kCentralBytes,
                      "{}: zip end record claims {} entries but the central directory of {} "
                      "bytes holds at most {}; {}",
                      source, r.entry_count, r.cd_nbytes, r.cd_nbytes / kCentralBytes, kRedownload);
  return r;
}

// Replaces the 0xffff…/0xffffffff placeholders of a central directory entry with the values in
// its zip64 extra field (id 1), which appear in a fixed order, each only when needed.
void apply_zip64_extra(std::string_view extra, ZipEntry& z, bool need_usize, bool need_csize,
                       bool need_offset, const std::string& source) {
  const auto* p = reinterpret_cast<const unsigned char*>(extra.data());
  std::size_t pos = 0;
  bool found = false;
  while (pos + 4 <= extra.size()) {
    const uint16_t id = le16(p + pos);
    const uint16_t len = le16(p + pos + 2);
    FERRY_FORMAT_EXPECT(pos + 4 + len <= extra.size(),
                        "{}: zip entry '{}' has an extra field running past its end; {}", source,
                        z.name, kRedownload);
    if (id == 1) {
      found = true;
      const unsigned char* f = p + pos + 4;
      std::size_t at = 0;
      auto take = [&](uint64_t& v) {
        FERRY_FORMAT_EXPECT(at + 8 <= len,
                            "{}: zip entry '{}' has a zip64 extra field of {} bytes, too short "
                            "for the sizes it must hold; {}",
                            source, z.name, len, kRedownload);
        v = le64(f + at);
        at += 8;
      };
      if (need_usize) take(z.uncompressed_size);
      if (need_csize) take(z.compressed_size);
      if (need_offset) take(z.local_header_offset);
    }
    pos += 4 + len;
  }
  FERRY_FORMAT_EXPECT(found || !(need_usize || need_csize || need_offset),
                      "{}: zip entry '{}' needs a zip64 extra field for its sizes but has none; "
                      "{}",
                      source, z.name, kRedownload);
}

}  // namespace

ZipDirectory ZipDirectory::read(uint64_t file_size, const ReadAt& read_at, std::string source) {
  const EndRecord end = read_end_record(file_size, read_at, source);
  std::string cd(end.cd_nbytes, '\0');
  read_at(end.cd_offset, end.cd_nbytes, cd.data(), "the zip central directory");
  const auto* p = reinterpret_cast<const unsigned char*>(cd.data());

  ZipDirectory dir;
  dir.source_ = std::move(source);
  dir.file_size_ = file_size;
  dir.entries_.reserve(end.entry_count);
  uint64_t pos = 0;
  for (uint64_t i = 0; i < end.entry_count; ++i) {
    FERRY_FORMAT_EXPECT(pos + kCentralBytes <= cd.size() && le32(p + pos) == kCentralSig,
                        "{}: zip central directory entry {} of {} at byte {} is missing or "
                        "corrupt; {}",
                        dir.source_, i, end.entry_count, end.cd_offset + pos, kRedownload);
    const unsigned char* h = p + pos;
    const uint64_t name_len = le16(h + 28);
    const uint64_t extra_len = le16(h + 30);
    const uint64_t comment_len = le16(h + 32);
    const uint64_t var_len = name_len + extra_len + comment_len;
    FERRY_FORMAT_EXPECT(pos + kCentralBytes + var_len <= cd.size(),
                        "{}: zip central directory entry {} at byte {} runs past the end of the "
                        "directory; {}",
                        dir.source_, i, end.cd_offset + pos, kRedownload);
    ZipEntry z;
    z.flags = le16(h + 8);
    z.method = le16(h + 10);
    z.compressed_size = le32(h + 20);
    z.uncompressed_size = le32(h + 24);
    z.local_header_offset = le32(h + 42);
    z.name.assign(cd.data() + pos + kCentralBytes, name_len);
    const std::string_view extra(cd.data() + pos + kCentralBytes + name_len, extra_len);
    apply_zip64_extra(extra, z, z.uncompressed_size == 0xffffffffu,
                      z.compressed_size == 0xffffffffu, z.local_header_offset == 0xffffffffu,
                      dir.source_);
    const auto [it, inserted] = dir.by_name_.emplace(z.name, dir.entries_.size());
    FERRY_FORMAT_EXPECT(inserted, "{}: zip archive holds entry '{}' twice; {}", dir.source_, z.name,
                        kRedownload);
    dir.entries_.push_back(std::move(z));
    pos += kCentralBytes + var_len;
  }
  return dir;
}

const ZipEntry* ZipDirectory::find(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

uint64_t ZipDirectory::data_offset(const ZipEntry& e, const ReadAt& read_at) const {
  FERRY_FORMAT_EXPECT((e.flags & 1u) == 0,
                      "{}: zip entry '{}' is encrypted; PyTorch never encrypts checkpoints, so "
                      "this file is not one ferry can read",
                      source_, e.name);
  FERRY_FORMAT_EXPECT(e.method == 0,
                      "{}: zip entry '{}' is compressed (method {}{}); ferry reads only stored "
                      "(uncompressed) entries, as torch.save writes them — re-save the "
                      "checkpoint with torch.save, or convert it to safetensors, without "
                      "re-zipping it",
                      source_, e.name, e.method, e.method == 8 ? ", deflate" : "");
  FERRY_FORMAT_EXPECT(e.compressed_size == e.uncompressed_size,
                      "{}: stored zip entry '{}' has compressed size {} but uncompressed size "
                      "{}; {}",
                      source_, e.name, e.compressed_size, e.uncompressed_size, kRedownload);
  uint64_t header_end = 0;
  FERRY_FORMAT_EXPECT(
      checked_add(e.local_header_offset, kLocalBytes, header_end) && header_end <= file_size_,
      "{}: zip entry '{}' local header at byte {} is beyond the file of {} "
      "bytes; {}",
      source_, e.name, e.local_header_offset, file_size_, kRedownload);
  unsigned char h[kLocalBytes];
  read_at(e.local_header_offset, kLocalBytes, h, "a zip local header");
  FERRY_FORMAT_EXPECT(le32(h) == kLocalSig, "{}: zip entry '{}' has no local header at byte {}; {}",
                      source_, e.name, e.local_header_offset, kRedownload);
  const uint64_t name_len = le16(h + 26);
  const uint64_t extra_len = le16(h + 28);
  // The local name must be the central directory's; a mismatch means the offset is wrong.
  FERRY_FORMAT_EXPECT(name_len == e.name.size(),
                      "{}: zip entry '{}' local header at byte {} names a different entry; {}",
                      source_, e.name, e.local_header_offset, kRedownload);
  std::string local_name(name_len, '\0');
  if (header_end + name_len <= file_size_) {
    read_at(header_end, name_len, local_name.data(), "a zip local header name");
  }
  FERRY_FORMAT_EXPECT(local_name == e.name,
                      "{}: zip entry '{}' local header at byte {} names a different entry; {}",
                      source_, e.name, e.local_header_offset, kRedownload);
  const uint64_t data = header_end + name_len + extra_len;
  uint64_t data_end = 0;
  FERRY_FORMAT_EXPECT(checked_add(data, e.compressed_size, data_end) && data_end <= file_size_,
                      "{}: zip entry '{}' data [{}, {}) runs past the end of the file of {} "
                      "bytes; {}",
                      source_, e.name, data, data + e.compressed_size, file_size_, kRedownload);
  return data;
}

std::string ZipDirectory::read_entry(const ZipEntry& e, const ReadAt& read_at,
                                     uint64_t max_nbytes) const {
  const uint64_t data = data_offset(e, read_at);
  FERRY_FORMAT_EXPECT(e.uncompressed_size <= max_nbytes,
                      "{}: zip entry '{}' is {} bytes, more than the {} byte limit for it; this "
                      "is not a checkpoint ferry can read",
                      source_, e.name, e.uncompressed_size, max_nbytes);
  std::string bytes(e.uncompressed_size, '\0');
  const std::string what = fmt::format("zip entry '{}'", e.name);
  read_at(data, bytes.size(), bytes.data(), what.c_str());
  return bytes;
}

}  // namespace ferry::offload::detail
