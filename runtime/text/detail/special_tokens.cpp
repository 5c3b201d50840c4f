#include "runtime/text/detail/special_tokens.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

namespace ferry::text::detail {

void SpecialTokenMatcher::add(std::string content, std::int32_t id) {
  auto& bucket = by_first_byte_[static_cast<unsigned char>(content.front())];
  const auto same = std::find_if(bucket.begin(), bucket.end(),
                                 [&](const Entry& e) { return e.content == content; });
  if (same != bucket.end()) {
    same->id = id;
    return;
  }
  bucket.push_back({std::move(content), id});
  std::stable_sort(bucket.begin(), bucket.end(), [](const Entry& a, const Entry& b) {
    return a.content.size() > b.content.size();
  });
  ++count_;
}

std::optional<SpecialTokenMatcher::Match> SpecialTokenMatcher::find(std::string_view text,
                                                                    std::size_t from) const {
  if (count_ == 0) return std::nullopt;
  for (std::size_t pos = from; pos < text.size(); ++pos) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(text[pos])];
    for (const Entry& e : bucket) {
      if (text.size() - pos >= e.content.size() &&
          std::memcmp(text.data() + pos, e.content.data(), e.content.size()) == 0) {
        return Match{pos, e.content.size(), e.id};
      }
    }
  }
  return std::nullopt;
}

}  // namespace ferry::text::detail
