#include "offload/detail/source.hpp"

#include <cstring>
#include <utility>

#include "runtime/core/error.hpp"

namespace ferry::offload::detail {

ReadAt buffer_read_at(std::string_view bytes, std::string source) {
  return [bytes, source = std::move(source)](uint64_t offset, std::size_t nbytes, void* dst,
                                             const char* what) {
    uint64_t end = 0;
    FERRY_FORMAT_EXPECT(checked_add(offset, nbytes, end) && end <= bytes.size(),
                        "{} ends at byte {} but {} needs bytes [{}, {}); the file is truncated — "
                        "download or convert it again",
                        source, bytes.size(), what, offset, offset + nbytes);
    if (nbytes != 0) std::memcpy(dst, bytes.data() + offset, nbytes);
  };
}

namespace {
// True when name is `suffix` or ends with "." + suffix.
bool has_component_suffix(std::string_view name, std::string_view suffix) {
  if (!name.ends_with(suffix)) return false;
  return name.size() == suffix.size() || name[name.size() - suffix.size() - 1] == '.';
}
}  // namespace

bool is_skipped_tensor(std::string_view name, DType dtype) {
  return dtype == DType::boolean || has_component_suffix(name, "attn.bias") ||
         has_component_suffix(name, "attn.masked_bias");
}

}  // namespace ferry::offload::detail
