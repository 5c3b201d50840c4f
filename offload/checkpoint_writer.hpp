// Writers for the checkpoint formats ferry reads: safetensors and PyTorch zip (torch.save's
// format), single-file or sharded with an index. They stream: tensor bytes come from a
// callback a chunk at a time, so a 12 GB checkpoint is written with a few MiB of memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "runtime/core/dtype.hpp"
#include "runtime/core/tensor.hpp"

namespace ferry::offload {

struct TensorSpec {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t nbytes() const { return static_cast<uint64_t>(shape.numel()) * dtype_size(dtype); }
};

// Fills dst with the tensor's bytes [first_byte, first_byte + dst.size()). Called in order,
// chunk after chunk, for each tensor; first_byte is always a multiple of the element size.
using TensorFiller =
    std::function<void(const TensorSpec& spec, uint64_t first_byte, std::span<std::byte> dst)>;

// Called after each tensor is written, with bytes written so far and in all (for progress).
using WriteProgress = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;

enum class WriteFormat { safetensors, torch_zip };

struct WriteOptions {
  WriteFormat format = WriteFormat::safetensors;
  // 0 = one file (model.safetensors / pytorch_model.bin). Otherwise shards of at most this
  // many bytes (a tensor is never split) named like Hugging Face's
  // (model-00001-of-00003.safetensors / pytorch_model-00001-of-00003.bin) plus the index
  // (model.safetensors.index.json / pytorch_model.bin.index.json).
  // As in transformers: the limit counts tensor bytes (not headers), tensors fill shards
  // greedily in order, one larger than the limit gets a shard to itself, and a model that fits
  // in one shard is written as the single file with no index.
  uint64_t max_shard_bytes = 0;
  std::map<std::string, std::string> metadata;  // safetensors "__metadata__" (e.g. format: pt)
  WriteProgress progress;
};

// Writes the tensors, in the given order, into directory dir (created if absent). Returns the
// files written (shards, then the index). Throws IoError naming the file on any write failure,
// InvalidArgument naming the tensor for a bad TensorSpec (before anything is written).
// Each file is written under a private temporary name beside it and renamed when complete; on
// any failure (or SIGINT/SIGTERM), this call's files are removed. Afterwards, files of an older
// checkpoint of the same format in dir that a reader could mistake for this one (a single file,
// shards, an index) are removed.
// Output is deterministic: the same tensors and bytes give identical files.
std::vector<std::filesystem::path> write_checkpoint(const std::filesystem::path& dir,
                                                    const std::vector<TensorSpec>& tensors,
                                                    const TensorFiller& fill,
                                                    const WriteOptions& options);

}  // namespace ferry::offload
