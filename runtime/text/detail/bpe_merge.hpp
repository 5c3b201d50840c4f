// The BPE merge step: turns one pre-tokenised piece (its bytes) into token ids by applying
// the learned merges, lowest rank first, the way GPT-2's encoder.py does.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace ferry::text::detail {

// Merge rules keyed by the pair of ids they join.
class MergeTable {
 public:
  struct Rule {
    std::int32_t rank;    // position in the merges list; lower merges first
    std::int32_t merged;  // id of the joined token
  };

  // A pair listed twice keeps its last rank, as the reference's dict(zip(merges, ranks)) does.
  void set(std::int32_t left, std::int32_t right, Rule rule) { rules_[key(left, right)] = rule; }
  const Rule* find(std::int32_t left, std::int32_t right) const {
    const auto it = rules_.find(key(left, right));
    return it == rules_.end() ? nullptr : &it->second;
  }
  std::size_t size() const { return rules_.size(); }
  void reserve(std::size_t n) { rules_.reserve(n); }

 private:
  static std::uint64_t key(std::int32_t left, std::int32_t right) {
    return (std::uint64_t{static_cast<std::uint32_t>(left)} << 32) |
           static_cast<std::uint32_t>(right);
  }
  std::unordered_map<std::uint64_t, Rule> rules_;
};

// Scratch state for merging; reuse one per thread of work to avoid reallocating per piece.
// Each merge is O(log n) (a heap of candidate pairs over a linked list of symbols), so a
// piece of a megabyte with no spaces costs no more than its length suggests.
class BpeMerger {
 public:
  // Appends the ids for `piece` to `out`. byte_ids[b] is the id of the one-byte token b.
  void merge(std::string_view piece, const std::array<std::int32_t, 256>& byte_ids,
             const MergeTable& merges, std::vector<std::int32_t>& out);
  // The same from the ids of the piece's first symbols (characters, for SentencePiece-style
  // vocabularies); ids must not be negative.
  void merge_ids(std::span<const std::int32_t> ids, const MergeTable& merges,
                 std::vector<std::int32_t>& out);

 private:
  struct Symbol {
    std::int32_t id;    // -1 once merged into the symbol on its left
    std::int32_t prev;  // index of the previous live symbol, -1 at the start
    std::int32_t next;  // index of the next live symbol, -1 at the end
  };
  struct Candidate {
    std::int32_t rank;
    std::int32_t left;  // symbol indices
    std::int32_t right;
    std::int32_t left_id;  // ids when queued: a changed id means the pair is stale
    std::int32_t right_id;
    std::int32_t merged;
  };

  static bool later(const Candidate& a, const Candidate& b);  // heap order
  void run(const MergeTable& merges, std::vector<std::int32_t>& out);
  void push_candidate(const MergeTable& merges, std::int32_t left);

  std::vector<Symbol> symbols_;
  std::vector<Candidate> heap_;
};

}  // namespace ferry::text::detail
