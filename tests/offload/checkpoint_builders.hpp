// Builders for crafted checkpoints: safetensors files, zip archives and torch state-dict
// pickles, byte by byte, so tests can make exactly the corruption or feature they check.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::test {

// A safetensors file: u64 LE header length, the header text as given, then data.
std::string make_safetensors(std::string_view header_json, std::string_view data);

struct ZipSpec {
  std::string name;
  std::string data;
  uint16_t method = 0;  // what the central directory claims; data is written as given
};

struct ZipOptions {
  bool zip64 = true;         // zip64 end records, and local offsets moved into zip64 extras
  std::string comment;       // end-of-central-directory comment
  uint32_t align_data = 64;  // pad local headers (extra field) so data starts aligned, as torch
};

// A zip archive laid out as torch.save writes one: local headers with zero sizes and a
// padding extra field, sizes only in the central directory, zip64 end records.
std::string make_zip(const std::vector<ZipSpec>& entries, const ZipOptions& options = {});

// Pickle opcodes, appended to a byte string.
class PickleWriter {
 public:
  PickleWriter& raw(std::string_view bytes);
  PickleWriter& op(char opcode);
  PickleWriter& proto(uint8_t version);
  PickleWriter& global(std::string_view module, std::string_view name);
  PickleWriter& str(std::string_view s);  // BINUNICODE
  PickleWriter& integer(int64_t v);       // BININT1/BININT2/BININT/LONG1 as pickle would
  PickleWriter& mark() { return op('('); }
  PickleWriter& tuple() { return op('t'); }
  PickleWriter& ints_tuple(const std::vector<int64_t>& v);
  PickleWriter& stop() { return op('.'); }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

struct PickleTensorSpec {
  std::string name;
  std::string storage_type = "FloatStorage";
  std::string key;
  int64_t storage_numel = 0;
  int64_t storage_offset = 0;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;  // empty: row-major contiguous
};

// The data.pkl torch.save writes for an OrderedDict state dict of these tensors.
std::string make_state_dict_pickle(const std::vector<PickleTensorSpec>& tensors);

// A whole torch zip checkpoint: "<prefix>/data.pkl", "<prefix>/data/<key>" (storage bytes from
// `storages`, by key), "<prefix>/version".
struct StorageSpec {
  std::string key;
  std::string bytes;
};
std::string make_torch_zip(std::string_view prefix, std::string_view pickle,
                           const std::vector<StorageSpec>& storages,
                           const ZipOptions& options = {});

// Bytes of a float vector (little-endian host).
std::string f32_bytes(const std::vector<float>& v);

}  // namespace ferry::test
