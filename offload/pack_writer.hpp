// Writing a ferry pack (docs/pack-format.md): one file holding a JSON header and one 4 KiB-aligned
// blob per unit of weights (a layer), each checksummed, so that one layer is one aligned O_DIRECT
// read. It knows nothing of any model: the caller says which tensors form each blob and fills
// their bytes; memory stays at one blob.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "offload/checkpoint_writer.hpp"
#include "runtime/core/dtype.hpp"
#include "runtime/core/tensor.hpp"

namespace ferry::offload {

struct PackTensorSpec {
  std::string name;
  DType dtype = DType::f32;  // float, or packed (q8, q4_g64, q4_g128: shape must be [rows, cols])
  Shape shape;
  uint64_t nbytes() const;  // rows · packed_row_bytes for packed dtypes, numel · size otherwise
};

struct PackBlobSpec {
  std::string name;                     // "layer 3", for messages
  std::vector<PackTensorSpec> tensors;  // stored in this order, each 64-byte aligned
};

// Fills dst with all of tensor `tensor` of blob `blob` (dst.size() == its nbytes()). Called once
// per tensor, blob after blob, in order.
using PackFiller =
    std::function<void(std::size_t blob, std::size_t tensor, std::span<std::byte> dst)>;

struct PackWriteOptions {
  nlohmann::json metadata = nlohmann::json::object();  // stored as the header's "metadata"
  WriteProgress progress;  // after each blob: bytes of blobs written, and in all
};

// Writes the pack to file (under a private temporary name beside it, renamed when complete and
// synced; removed on failure and on SIGINT/SIGTERM). Deterministic: the same specs and bytes give the same file. Returns its size.
// Throws InvalidArgument for a bad spec (before writing) and IoError naming the file.
uint64_t write_pack(const std::filesystem::path& file, const std::vector<PackBlobSpec>& blobs,
                    const PackFiller& fill, const PackWriteOptions& options = {});

}  // namespace ferry::offload
