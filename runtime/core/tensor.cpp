#include "runtime/core/tensor.hpp"

#include <fmt/format.h>

#include "runtime/core/error.hpp"

namespace ferry {

Shape::Shape(std::initializer_list<int64_t> d) {
  FERRY_EXPECT(d.size() <= kMaxRank, "tensor rank {} exceeds the maximum of {}", d.size(),
               kMaxRank);
  for (int64_t v : d) dims[static_cast<std::size_t>(rank++)] = v;
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[static_cast<std::size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (rank != o.rank) return false;
  for (int i = 0; i < rank; ++i)
    if (dims[static_cast<std::size_t>(i)] != o.dims[static_cast<std::size_t>(i)]) return false;
  return true;
}

std::string Shape::str() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[static_cast<std::size_t>(i)]);
  }
  return s + "]";
}

}  // namespace ferry
