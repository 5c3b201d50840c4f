// Checkpoint: a lazily read model checkpoint (safetensors, sharded safetensors, PyTorch zip,
// sharded PyTorch zip, a ferry pack, GGUF and split GGUF). Opening one reads only metadata; tensor bytes are read on request
// with positional reads, so nothing ever holds a whole file in memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "runtime/core/dtype.hpp"
#include "runtime/core/tensor.hpp"

namespace ferry {
class ThreadPool;
}  // namespace ferry

namespace ferry::offload {

namespace detail {
struct GgufHeader;
}  // namespace detail

enum class CheckpointFormat { safetensors, torch_zip, ferry_pack, gguf };
// "safetensors", "torch-zip", "ferry-pack", "gguf"
std::string_view format_name(CheckpointFormat f);

// When the checksums of a ferry pack are checked: on every read of a blob (loaded, streamed, or
// an embedding row), on the first read of each part only, or never. FERRY_VERIFY=always|once|off
// sets it; always is the default.
enum class VerifyMode { always, once, off };
VerifyMode verify_mode_from_env();
// "always" | "once" | "off"; throws InvalidArgument naming source (e.g. "--verify") otherwise.
VerifyMode parse_verify_mode(std::string_view text, std::string_view source);

// Where one tensor's bytes live. Tensors are dense and row-major (a non-contiguous torch
// tensor is refused at open with a FormatError naming it).
struct TensorEntry {
  std::string name;  // as in the checkpoint, e.g. "transformer.h.0.attn.q_proj.weight"
  DType dtype = DType::f32;
  Shape shape;                // rank 0 (a scalar) has numel 1
  uint32_t file_index = 0;    // into Checkpoint::files()
  uint64_t offset_bytes = 0;  // absolute offset of the first element within that file
  uint64_t nbytes = 0;        // numel · dtype_size
};

// Bytes [offset_bytes, offset_bytes + nbytes) of something: a file, or a tensor's bytes.
// kToEnd (the default) means up to the end, so ByteRange{} is the whole of it.
struct ByteRange {
  static constexpr uint64_t kToEnd = UINT64_MAX;
  uint64_t offset_bytes = 0;
  uint64_t nbytes = kToEnd;
  bool operator==(const ByteRange&) const = default;
};

struct CheckpointFile {
  std::filesystem::path path;
  uint64_t size_bytes = 0;
};

class Checkpoint {
 public:
  // Opens a model directory (finds model.ferry, model.safetensors,
  // model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json, in that
  // order of preference, else a lone .gguf file or split set) or a single checkpoint file. The
  // first file of a split GGUF ("…-00001-of-00003.gguf") opens the whole set. Throws FormatError / IoError naming the
  // file and the problem.
  static Checkpoint open(const std::filesystem::path& path,
                         VerifyMode verify = verify_mode_from_env());

  Checkpoint(Checkpoint&&) noexcept;
  Checkpoint& operator=(Checkpoint&&) noexcept;
  ~Checkpoint();

  CheckpointFormat format() const;
  const std::vector<CheckpointFile>& files() const;
  // Every weight tensor, in file order then offset order. Non-weight buffers
  // (attn.bias, attn.masked_bias) and bool tensors are not listed.
  const std::vector<TensorEntry>& tensors() const;
  const TensorEntry* find(std::string_view name) const;  // nullptr when absent
  // Like find, but throws FormatError "tensor 'X' is missing from <path>" when absent.
  const TensorEntry& at(std::string_view name) const;
  uint64_t total_bytes() const;  // sum of nbytes over tensors()

  // Reads the whole tensor into dst (nbytes bytes). Checks every read; a short file raises
  // FormatError naming file, tensor and offset. In a ferry pack the checksummed chunks around
  // the bytes are read and checked too.
  void read(const TensorEntry& t, void* dst) const;
  // Reads nbytes starting offset_bytes into the tensor (e.g. one embedding row).
  void read_range(const TensorEntry& t, uint64_t offset_bytes, uint64_t nbytes, void* dst) const;

  // The open file descriptor of files()[i] (for the I/O engine).
  int fd(uint32_t file_index) const;

  // Checks bytes [offset_bytes, offset_bytes + nbytes) of files()[file_index], already read into
  // data, against the checkpoint's checksums (ferry packs have one per 256 KiB of each blob;
  // other formats none, and this does nothing). Only chunks wholly inside the range are checked.
  // Throws FormatError naming the blob ("layer 3") and tensor. Returns the bytes checked. With a
  // pool, the chunks are hashed on all its threads (not from inside its parallel_for).
  uint64_t verify(uint32_t file_index, uint64_t offset_bytes, const void* data, uint64_t nbytes,
                  ThreadPool* pool = nullptr) const;
  bool has_checksums() const;
  // Bytes per checksum chunk (a ferry pack's 256 KiB); 0 when the checkpoint has no checksums.
  // Chunks are counted from the start of each blob, and a blob's last one is shorter.
  uint64_t checksum_chunk_bytes() const;
  // What must be read for verify() to check every one of bytes [offset_bytes, offset_bytes +
  // nbytes) of files()[file_index]: that range widened to whole checksum chunks. The range itself
  // when there are no checksums or verification is off; bytes outside every blob are not widened.
  ByteRange checked_range(uint32_t file_index, uint64_t offset_bytes, uint64_t nbytes) const;
  // Reads the whole pack once, 64 MiB at a time, and checks every checksum (ferry verify).
  // progress(done, total) after each read. Returns the bytes checked; throws as verify does. With
  // a pool, each read's chunks are hashed on its threads.
  uint64_t verify_all(const std::function<void(uint64_t, uint64_t)>& progress = {},
                      ThreadPool* pool = nullptr) const;
  VerifyMode verify_mode() const;
  // The ferry pack's header "metadata" (model config, quantization, tokenizer); null otherwise.
  const nlohmann::json* pack_metadata() const;
  // A GGUF file's header (of the first file of a split set): version, alignment, every metadata
  // key/value, the tensor infos with their ggml types; null for other formats.
  const detail::GgufHeader* gguf_header() const;

  struct Impl;

 private:
  explicit Checkpoint(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::offload
