#include "runtime/text/detail/bpe_model.hpp"

#include <fmt/format.h>

#include "runtime/text/detail/utf8.hpp"

namespace ferry::text::detail {
namespace {

// The piece cache: natural text repeats a small set of words (Zipf), so a cache of short
// pieces removes nearly all merge work. Long pieces are rare and would only evict others.
constexpr std::size_t kMaxCachedPieceBytes = 64;
// At this many entries the cache is emptied and refills with what is hot now; that bounds it
// at a few MiB without LRU bookkeeping on every lookup.
constexpr std::size_t kMaxCacheEntries = std::size_t{1} << 16;

}  // namespace

bool BpeModel::insert(std::string key, std::int32_t id) {
  return vocab_.emplace(std::move(key), id).second;
}

std::optional<std::int32_t> BpeModel::find(std::string_view key) const {
  const auto it = vocab_.find(key);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::optional<unsigned> BpeModel::finish() {
  for (unsigned b = 0; b < 256; ++b) {
    const char byte = static_cast<char>(b);
    if (options_.byte_level) {
      const std::optional<std::int32_t> id = find(std::string_view(&byte, 1));
      if (!id) return b;
      byte_ids_[b] = *id;
    } else {
      // Hugging Face spells them "<0x0A>": upper-case digits after a lower-case x.
      fallback_ids_[b] = find(fmt::format("<0x{:02X}>", b)).value_or(-1);
    }
  }
  return std::nullopt;
}

void BpeModel::initial_symbols(std::string_view word, std::vector<std::int32_t>& out) const {
  std::int32_t pending_unk = -1;  // an <unk> not yet written, to fuse the next into
  for (std::size_t pos = 0; pos < word.size();) {
    const Utf8Char ch = decode_utf8(word, pos);
    const std::size_t len = ch.status == Utf8Status::kOk ? ch.len : 1;
    const std::string_view unit = word.substr(pos, len);
    pos += len;
    if (const auto it = vocab_.find(unit); it != vocab_.end()) {
      if (pending_unk >= 0) out.push_back(pending_unk);
      pending_unk = -1;
      out.push_back(it->second);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (const char b : unit) all = all && fallback_ids_[static_cast<unsigned char>(b)] >= 0;
      if (all) {
        if (pending_unk >= 0) out.push_back(pending_unk);
        pending_unk = -1;
        for (const char b : unit) out.push_back(fallback_ids_[static_cast<unsigned char>(b)]);
        continue;
      }
    }
    if (!options_.unk_id) continue;  // Hugging Face drops what it can neither find nor name
    if (pending_unk >= 0 && !options_.fuse_unk) out.push_back(pending_unk);
    pending_unk = *options_.unk_id;
  }
  if (pending_unk >= 0) out.push_back(pending_unk);
}

void BpeModel::merge_uncached(std::string_view word, BpeMerger& merger,
                              std::vector<std::int32_t>& out) const {
  if (options_.byte_level) {
    merger.merge(word, byte_ids_, merges_, out);
    return;
  }
  std::vector<std::int32_t> symbols;
  symbols.reserve(word.size());
  initial_symbols(word, symbols);
  merger.merge_ids(symbols, merges_, out);
}

void BpeModel::encode(std::string_view word, BpeMerger& merger,
                      std::vector<std::int32_t>& out) const {
  if (word.empty()) return;
  if (options_.byte_level && word.size() == 1) {
    out.push_back(byte_ids_[static_cast<unsigned char>(word[0])]);
    return;
  }
  if (options_.ignore_merges) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  if (word.size() > kMaxCachedPieceBytes) {
    merge_uncached(word, merger, out);
    return;
  }
  {
    const std::lock_guard lock(cache_mutex_);
    if (const auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const std::size_t first = out.size();
  merge_uncached(word, merger, out);
  const auto new_first = out.begin() + static_cast<std::ptrdiff_t>(first);
  const std::lock_guard lock(cache_mutex_);
  if (cache_.size() >= kMaxCacheEntries) cache_.clear();
  cache_.emplace(std::string(word), std::vector<std::int32_t>(new_first, out.end()));
}

}  // namespace ferry::text::detail
