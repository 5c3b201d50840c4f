// The zip record signatures and fixed sizes (APPNOTE.TXT) that the torch-zip reader and writer
// share.
#pragma once

#include <cstdint>

namespace ferry::offload::detail::zip_format {

inline constexpr uint32_t kLocalSig = 0x04034b50;           // local file header
inline constexpr uint32_t kDataDescriptorSig = 0x08074b50;  // data descriptor (optional sig)
inline constexpr uint32_t kCentralSig = 0x02014b50;         // central directory header
inline constexpr uint32_t kZip64EocdSig = 0x06064b50;       // zip64 end of central directory
inline constexpr uint32_t kZip64LocatorSig = 0x07064b50;    // zip64 end of central dir locator
inline constexpr uint32_t kEocdSig = 0x06054b50;            // end of central directory

inline constexpr uint64_t kLocalBytes = 30;
inline constexpr uint64_t kCentralBytes = 46;
inline constexpr uint64_t kZip64EocdBytes = 56;
inline constexpr uint64_t kZip64LocatorBytes = 20;
inline constexpr uint64_t kEocdBytes = 22;

inline constexpr uint16_t kZip64ExtraId = 0x0001;  // zip64 extended information extra field

}  // namespace ferry::offload::detail::zip_format
