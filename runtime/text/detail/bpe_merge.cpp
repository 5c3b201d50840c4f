#include "runtime/text/detail/bpe_merge.hpp"

#include <algorithm>

namespace ferry::text::detail {

// Lowest rank first; among equal ranks (the same pair in several places) the leftmost, which
// reproduces the reference's left-to-right, non-overlapping "merge every occurrence" pass.
bool BpeMerger::later(const Candidate& a, const Candidate& b) {
  if (a.rank != b.rank) return a.rank > b.rank;
  return a.left > b.left;
}

void BpeMerger::push_candidate(const MergeTable& merges, std::int32_t left) {
  if (left < 0) return;
  const std::int32_t right = symbols_[static_cast<std::size_t>(left)].next;
  if (right < 0) return;
  const std::int32_t left_id = symbols_[static_cast<std::size_t>(left)].id;
  const std::int32_t right_id = symbols_[static_cast<std::size_t>(right)].id;
  const MergeTable::Rule* rule = merges.find(left_id, right_id);
  if (rule == nullptr) return;
  heap_.push_back({rule->rank, left, right, left_id, right_id, rule->merged});
  std::push_heap(heap_.begin(), heap_.end(), later);
}

void BpeMerger::merge(std::string_view piece, const std::array<std::int32_t, 256>& byte_ids,
                      const MergeTable& merges, std::vector<std::int32_t>& out) {
  const auto n = static_cast<std::int32_t>(piece.size());
  if (n <= 1) {
    if (n == 1) out.push_back(byte_ids[static_cast<unsigned char>(piece[0])]);
    return;
  }
  symbols_.clear();
  for (std::int32_t i = 0; i < n; ++i) {
    symbols_.push_back({byte_ids[static_cast<unsigned char>(piece[static_cast<std::size_t>(i)])],
                        i - 1, i + 1 < n ? i + 1 : -1});
  }
  run(merges, out);
}

void BpeMerger::merge_ids(std::span<const std::int32_t> ids, const MergeTable& merges,
                          std::vector<std::int32_t>& out) {
  const auto n = static_cast<std::int32_t>(ids.size());
  if (n <= 1) {
    out.insert(out.end(), ids.begin(), ids.end());
    return;
  }
  symbols_.clear();
  for (std::int32_t i = 0; i < n; ++i) {
    symbols_.push_back({ids[static_cast<std::size_t>(i)], i - 1, i + 1 < n ? i + 1 : -1});
  }
  run(merges, out);
}

void BpeMerger::run(const MergeTable& merges, std::vector<std::int32_t>& out) {
  const auto n = static_cast<std::int32_t>(symbols_.size());
  heap_.clear();
  for (std::int32_t i = 0; i + 1 < n; ++i) push_candidate(merges, i);

  while (!heap_.empty()) {
    std::pop_heap(heap_.begin(), heap_.end(), later);
    const Candidate c = heap_.back();
    heap_.pop_back();
    Symbol& left = symbols_[static_cast<std::size_t>(c.left)];
    if (left.id != c.left_id || left.next != c.right) continue;  // stale
    Symbol& right = symbols_[static_cast<std::size_t>(c.right)];
    if (right.id != c.right_id) continue;

    left.id = c.merged;
    left.next = right.next;
    right.id = -1;
    if (right.next >= 0) symbols_[static_cast<std::size_t>(right.next)].prev = c.left;
    push_candidate(merges, left.prev);
    push_candidate(merges, c.left);
  }

  for (std::int32_t i = 0; i >= 0; i = symbols_[static_cast<std::size_t>(i)].next) {
    out.push_back(symbols_[static_cast<std::size_t>(i)].id);
  }
}

}  // namespace ferry::text::detail
