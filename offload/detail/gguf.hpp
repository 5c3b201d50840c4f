// GGUF (llama.cpp's file format, versions 2 and 3): header, metadata key/values and tensor infos,
// parsed and validated from a positional reader without touching the tensor data. Every size read
// from the file is checked against the file before anything is allocated for it, so a hostile
// header costs at most about the file's own size in memory.
//
// Layout (little-endian): "GGUF", u32 version, u64 n_tensors, u64 n_kv; n_kv × (string key,
// u32 type, value); n_tensors × (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
// u64 offset); padding to general.alignment (32 by default); the data section. A string is a u64
// length and that many bytes (no NUL). ne[0] is the innermost (row) length.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "offload/detail/source.hpp"

namespace ferry::offload::detail {

// GGUF metadata value types.
enum class GgufType : uint32_t {
  u8 = 0,
  i8 = 1,
  u16 = 2,
  i16 = 3,
  u32 = 4,
  i32 = 5,
  f32 = 6,
  boolean = 7,
  string = 8,
  array = 9,
  u64 = 10,
  i64 = 11,
  f64 = 12,
};
std::string_view gguf_type_name(GgufType t);  // "u32", "string", "array", ...

// ggml's name for a tensor type id ("Q4_K", "IQ2_XS"), or "type N" for an unknown id.
std::string ggml_type_name(uint32_t ggml_type);
// The dtype of a ggml type id ferry computes on (F32, F16, BF16, Q8_0 … Q6_K); none otherwise.
std::optional<DType> dtype_of_ggml(uint32_t ggml_type);
// The ggml type id of a dtype that has one (f32, f16, bf16, the block dtypes); none otherwise.
std::optional<uint32_t> ggml_type_of(DType dtype);

// Writes GGUF v3 headers: metadata and tensor infos, the data section's offsets assigned in the
// order tensors are added, each aligned. The caller writes header() and then each tensor's bytes
// at data_offset() + its offset (zero padding between).
class GgufWriter {
 public:
  explicit GgufWriter(uint64_t alignment = 32) : alignment_(alignment) {}
  // A value: numbers, bool, string, or an array (elem gives the element type).
  void set(std::string key, GgufType type, nlohmann::json value,
           GgufType elem = GgufType::u8);
  // Adds a tensor (ne in GGUF order, ne[0] the row length); returns its offset in the data
  // section.
  uint64_t add_tensor(std::string name, uint32_t ggml_type, std::vector<uint64_t> ne,
                      uint64_t nbytes);
  std::string header() const;       // through the padding before the data section
  uint64_t data_offset() const;     // header().size()
  uint64_t data_bytes() const;      // the data section's size, the last tensor's end
  uint64_t alignment() const { return alignment_; }

 private:
  struct Kv {
    std::string key;
    GgufType type;
    nlohmann::json value;
    GgufType elem;
  };
  struct Info {
    std::string name;
    uint32_t type;
    std::vector<uint64_t> ne;
    uint64_t offset;
    uint64_t nbytes;
  };
  std::string infos() const;  // magic through the tensor infos, unpadded
  uint64_t alignment_;
  std::vector<Kv> kv_;
  std::vector<Info> tensors_;
  uint64_t data_end_ = 0;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<uint64_t> ne;   // as stored: ne[0] is the row length
  uint64_t offset_bytes = 0;  // absolute, within the file
  uint64_t nbytes = 0;
};

struct GgufHeader {
  uint32_t version = 0;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;  // absolute offset of the data section
  // Every key/value: numbers as JSON numbers, bool, strings (bytes as stored; not necessarily
  // UTF-8), arrays as JSON arrays. Types are kept beside them for display.
  nlohmann::json metadata = nlohmann::json::object();
  std::map<std::string, std::string> metadata_types;  // key → "u32", "array[string]", ...
  std::vector<GgufTensorInfo> tensors;                 // in file order
};

// True when the first 4 bytes are GGUF's magic.
bool is_gguf_magic(const unsigned char* first4);

// Reads and validates a GGUF file's header and tensor infos (never the tensor data): the magic,
// version 2 or 3 (big-endian files are refused by name), every string and array length against
// what is left of the file, tensor dims, types (those ferry computes on: F32, F16, BF16, Q8_0,
// Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K; any other is refused naming the tensor and type),
// rows that are whole blocks, offsets aligned, inside the file and not overlapping, and
// duplicate names and keys. Throws FormatError naming `source` and the key or tensor.
GgufHeader read_gguf_header(uint64_t file_size, const ReadAt& read_at, std::string_view source);

// The header's tensors as a checkpoint lists them: ferry's row-major shapes ([ne1, ne0] for a
// matrix) and dtypes, sorted by offset.
FileTensors gguf_file_tensors(const GgufHeader& header, std::string_view source);

}  // namespace ferry::offload::detail
