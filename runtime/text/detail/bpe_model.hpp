// The BPE model of a tokenizer: its vocabulary and merges, and how one pre-token becomes ids.
// Two alphabets: byte-level (GPT-2, Llama 3, Qwen: pre-tokens are raw bytes, the vocabulary
// is spelled in GPT-2's byte alphabet and stored here as the bytes it stands for) and text
// (SentencePiece-style, Llama 2, Mistral: pre-tokens are UTF-8, the first symbols are
// characters, a character the vocabulary lacks becomes <0xNN> byte tokens or <unk>).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "runtime/text/detail/bpe_merge.hpp"

namespace ferry::text::detail {

struct StringHash {
  using is_transparent = void;  // lets the maps be searched with a string_view, no copy
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  struct Options {
    bool byte_level = true;
    bool ignore_merges = false;  // a pre-token that is itself in the vocabulary is one token
    bool byte_fallback = false;  // unknown characters become <0xNN> tokens
    bool fuse_unk = false;       // a run of unknown characters is one <unk>
    std::optional<std::int32_t> unk_id;
  };

  BpeModel() = default;
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;

  Options& options() { return options_; }
  const Options& options() const { return options_; }

  // `key` is the token as the model sees it: raw bytes for byte-level, else its UTF-8 text.
  // False when the key is already there.
  bool insert(std::string key, std::int32_t id);
  std::optional<std::int32_t> find(std::string_view key) const;
  std::size_t size() const { return vocab_.size(); }
  void reserve(std::size_t tokens, std::size_t merges) {
    vocab_.reserve(tokens);
    merges_.reserve(merges);
  }

  // A pair listed twice keeps its last rank, as the reference's dict(zip(merges, ranks)) does.
  void add_merge(std::int32_t left, std::int32_t right, std::int32_t rank, std::int32_t merged) {
    merges_.set(left, right, {rank, merged});
  }

  // Looks up the single-byte tokens (byte-level) or the <0xNN> tokens (byte_fallback); the
  // missing byte's value when byte-level and one of the 256 is absent.
  std::optional<unsigned> finish();

  // Appends the ids of one pre-token. Safe to call from several threads at once.
  void encode(std::string_view word, BpeMerger& merger, std::vector<std::int32_t>& out) const;

 private:
  void merge_uncached(std::string_view word, BpeMerger& merger,
                      std::vector<std::int32_t>& out) const;
  void initial_symbols(std::string_view word, std::vector<std::int32_t>& out) const;

  Options options_;
  StringMap<std::int32_t> vocab_;
  MergeTable merges_;
  std::array<std::int32_t, 256> byte_ids_{};      // byte-level: the one-byte tokens
  std::array<std::int32_t, 256> fallback_ids_{};  // text: <0xNN>, -1 where absent

  // encode() is const and may run on several threads at once; the cache is its only state.
  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<std::int32_t>> cache_;
};

}  // namespace ferry::text::detail
