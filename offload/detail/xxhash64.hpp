// XXH64 (Yann Collet's xxHash, 64-bit variant, seed 0 unless given), implemented here so ferry
// packs need no new dependency. Bit-compatible with the reference (xxhash.h's XXH64), so any
// other implementation can check a pack: `xxh64sum` from the xxhash package, or python-xxhash.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ferry::offload::detail {

uint64_t xxh64(const void* data, std::size_t nbytes, uint64_t seed = 0);

}  // namespace ferry::offload::detail
