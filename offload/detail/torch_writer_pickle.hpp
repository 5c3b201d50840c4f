// The data.pkl of a torch.save'd state dict, byte for byte as Python's pickle (protocol 2)
// writes it: an OrderedDict of name -> torch._utils._rebuild_tensor_v2(storage, ...).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "offload/checkpoint_writer.hpp"

namespace ferry::offload::detail {

// torch's typed-storage class for dtype ("FloatStorage", "HalfStorage", ...); nullopt if none.
std::optional<std::string_view> torch_storage_type(DType dtype);

// The pickle of an OrderedDict holding tensors[i] under its name, stored in the archive entry
// "data/<i>" (key "i"), dense and row-major, on "cpu", not requiring grad.
std::string torch_state_dict_pickle(std::span<const TensorSpec* const> tensors);

}  // namespace ferry::offload::detail
