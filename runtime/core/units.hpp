// Byte sizes as people write them ("512MiB", "4GiB", "1.5GB") and as ferry prints them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace ferry {

// Parses a size: a number (decimal point allowed) and an optional unit B, K/KB, M/MB, G/GB,
// T/TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024); case-insensitive. Throws
// InvalidArgument naming the text and the accepted forms.
uint64_t parse_size(std::string_view text);

// "384.0 MiB", "12.10 GiB", "512 B".
std::string format_bytes(uint64_t nbytes);

}  // namespace ferry
