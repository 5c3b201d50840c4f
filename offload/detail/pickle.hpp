// A safe interpreter for the pickles torch.save writes (data.pkl of a PyTorch zip checkpoint).
// It understands the protocol 2–5 opcodes a state dict uses, builds values in an arena (so
// hostile cycles and nesting cannot leak or blow the stack), and calls nothing: GLOBAL may
// only name an allow-list (tensor rebuilders, storages, collections.OrderedDict).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/core/dtype.hpp"
#include "runtime/core/tensor.hpp"

namespace ferry::offload::detail {

// data.pkl larger than this is refused before it is read (GPT-J-6B's is ~30 KiB).
inline constexpr uint64_t kMaxPickleBytes = 64ull << 20;
// Opcodes executed at most; each does bounded work, so this bounds time and memory.
inline constexpr uint64_t kMaxPickleOps = 1ull << 22;
// What the parse may copy of objects the pickle references repeatedly (sizes, strides, keys,
// names): this floor plus this many bytes per byte of pickle. A state dict copies each a few
// times; a hostile pickle referencing one large memoised tuple from every REDUCE is refused.
inline constexpr uint64_t kPickleCopyBudgetFloor = 16ull << 20;
inline constexpr uint64_t kPickleCopyBytesPerByte = 16;

// One entry of the state dict: what _rebuild_tensor_v2 was called with and the storage
// (persistent id ('storage', type, key, location, numel)) it views.
struct PickledTensor {
  std::string name;
  std::string storage_key;      // the zip entry "<prefix>/data/<storage_key>"
  std::string storage_type;     // e.g. "HalfStorage"
  std::optional<DType> dtype;   // nullopt for storages ferry has no dtype for (DoubleStorage…)
  uint64_t storage_numel = 0;   // elements of the storage
  uint64_t storage_offset = 0;  // elements
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

// Runs the pickle and returns the tensors of the state dict it builds, in pickle order.
// `source` names the pickle in errors (e.g. "pytorch_model.bin: data.pkl"). Throws FormatError
// naming the byte offset for unsupported opcodes, refused globals, malformed structure, and
// for exceeding kMaxPickleOps.
std::vector<PickledTensor> parse_torch_pickle(std::string_view bytes, std::string_view source);

// A pickled tensor's dense layout, validated.
struct TorchTensorLayout {
  DType dtype = DType::f32;
  Shape shape;
  uint64_t offset_bytes = 0;  // within the storage
  uint64_t nbytes = 0;
  uint64_t storage_nbytes = 0;  // storage_numel · dtype_size
};

// Checks that the tensor has a dtype ferry reads, rank ≤ kMaxRank, non-negative sizes,
// row-major contiguous strides, and lies within its storage. Errors name `source` and the tensor.
TorchTensorLayout torch_tensor_layout(const PickledTensor& t, std::string_view source);

}  // namespace ferry::offload::detail
