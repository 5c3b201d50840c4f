// Fuzzes a ferry pack's JSON header through Checkpoint::open, the path `verify`, `inspect` and
// `run` take (a duplicate tensor name crashed it). The input's first byte picks the size of the
// blob area; the rest is the header, wrapped in a preamble whose sizes and checksums are right,
// so the fuzzer spends its time on the JSON and not on checksums. The file lives in a memfd.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "offload/checkpoint.hpp"
#include "offload/detail/pack_format.hpp"
#include "offload/detail/xxhash64.hpp"
#include "runtime/core/error.hpp"

namespace {

void put_u32(std::string& b, std::size_t at, uint32_t v) { std::memcpy(b.data() + at, &v, 4); }
void put_u64(std::string& b, std::size_t at, uint64_t v) { std::memcpy(b.data() + at, &v, 8); }

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  using namespace ferry::offload;
  if (size < 1) return 0;
  const uint64_t header_offset = detail::kPackAlignment * (1 + data[0] % 4);
  const std::string_view header(reinterpret_cast<const char*>(data) + 1, size - 1);
  std::string file(header_offset, '\0');
  for (uint64_t i = detail::kPackAlignment; i < header_offset; ++i)
    file[i] = static_cast<char>(i * 131);  // blob bytes
  std::memcpy(file.data(), detail::kPackMagic, 8);
  put_u32(file, 8, detail::kPackVersion);
  put_u32(file, 12, 0);
  put_u64(file, 16, header_offset);
  put_u64(file, 24, header.size());
  put_u64(file, 32, detail::xxh64(header.data(), header.size()));
  put_u64(file, 40, header_offset + header.size());
  put_u64(file, 48, detail::xxh64(file.data(), 48));
  file.append(header);

  static const int fd = ::memfd_create("fuzz_pack", 0);
  if (fd < 0 || ::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, file.data(), file.size(), 0) != static_cast<ssize_t>(file.size()))
    __builtin_trap();
  try {
    const Checkpoint ck = Checkpoint::open("/proc/self/fd/" + std::to_string(fd));
    for (const TensorEntry& t : ck.tensors()) {
      // Every tensor it hands out lies inside the file.
      if (t.offset_bytes > file.size() || t.nbytes > file.size() - t.offset_bytes)
        __builtin_trap();
    }
    (void)ck.verify_all({}, nullptr);
  } catch (const ferry::Error&) {
  } catch (const std::system_error&) {
  }
  return 0;
}
