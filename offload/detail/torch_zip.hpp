// PyTorch zip checkpoints (torch.save ≥ 1.6): the zip directory, data.pkl run through the safe
// pickle interpreter, and each tensor located inside its stored "<prefix>/data/<key>" entry.
// Reads only the end records, the central directory, a few local headers and data.pkl.
#pragma once

#include <cstdint>
#include <string_view>

#include "offload/detail/source.hpp"

namespace ferry::offload::detail {

FileTensors read_torch_zip(uint64_t file_size, const ReadAt& read_at, std::string_view source);

}  // namespace ferry::offload::detail
