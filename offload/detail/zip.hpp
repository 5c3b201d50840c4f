// A minimal read-only zip directory reader for PyTorch checkpoints: finds the (zip64) end of
// central directory, reads only the central directory, and locates stored entries' data. It
// never inflates: torch.save stores every entry uncompressed, and compressed ones are refused.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "offload/detail/source.hpp"

namespace ferry::offload::detail {

// A central directory larger than this is refused rather than read (GPT-J-6B's is ~30 KiB).
inline constexpr uint64_t kMaxZipCentralDirectoryBytes = 64ull << 20;

struct ZipEntry {
  std::string name;
  uint16_t method = 0;  // 0 = stored; anything else is compressed
  uint16_t flags = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t local_header_offset = 0;
};

class ZipDirectory {
 public:
  // Reads the end-of-central-directory records and the central directory of a file of
  // file_size bytes. Throws FormatError naming `source` when it is not a complete zip.
  static ZipDirectory read(uint64_t file_size, const ReadAt& read_at, std::string source);

  const std::vector<ZipEntry>& entries() const { return entries_; }
  const ZipEntry* find(std::string_view name) const;

  // The absolute offset of an entry's data, from its local header (whose name and extra
  // lengths can differ from the central directory's). Refuses compressed or encrypted entries
  // and data that runs past the end of the file.
  uint64_t data_offset(const ZipEntry& e, const ReadAt& read_at) const;

  // Reads a whole (small) stored entry, refusing one larger than max_nbytes.
  std::string read_entry(const ZipEntry& e, const ReadAt& read_at, uint64_t max_nbytes) const;

  const std::string& source() const { return source_; }

 private:
  std::string source_;
  uint64_t file_size_ = 0;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, std::size_t> by_name_;
};

}  // namespace ferry::offload::detail
