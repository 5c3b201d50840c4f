#include "offload/checkpoint_writer.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>
#include <system_error>
#include <unordered_map>

#include "offload/detail/safetensors_writer_file.hpp"
#include "offload/detail/torch_writer_zip.hpp"
#include "offload/detail/writer_internal.hpp"
#include "offload/detail/writer_output.hpp"
#include "runtime/core/error.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;

// Hugging Face's file names for each format.
struct FormatNames {
  std::string_view stem;  // "model" / "pytorch_model"
  std::string_view ext;   // ".safetensors" / ".bin"

  std::string single() const { return fmt::format("{}{}", stem, ext); }
  std::string index() const { return fmt::format("{}{}.index.json", stem, ext); }
  std::string shard(std::size_t i, std::size_t n) const {
    return fmt::format("{}-{:05d}-of-{:05d}{}", stem, i + 1, n, ext);
  }
  // "<stem>-<digits>-of-<digits><ext>", at least five digits each, as shard() makes them.
  bool is_shard(std::string_view f) const {
    if (f.size() < stem.size() + ext.size() || !f.starts_with(stem) || !f.ends_with(ext)) {
      return false;
    }
    f = f.substr(stem.size(), f.size() - stem.size() - ext.size());
    const auto digits = [&f]() {
      std::size_t n = 0;
      while (n < f.size() && std::isdigit(static_cast<unsigned char>(f[n])) != 0) ++n;
      f.remove_prefix(n);
      return n;
    };
    if (!f.starts_with('-')) return false;
    f.remove_prefix(1);
    if (digits() < 5 || !f.starts_with("-of-")) return false;
    f.remove_prefix(4);
    return digits() >= 5 && f.empty();
  }
};

FormatNames names_for(WriteFormat format) {
  return format == WriteFormat::safetensors ? FormatNames{"model", ".safetensors"}
                                            : FormatNames{"pytorch_model", ".bin"};
}

// Well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): JSON and
// pickle's BINUNICODE both need it, and nlohmann would otherwise throw mid-write.
bool is_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t extra = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1FU;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0FU;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07U;
    } else {
      return false;
    }
    if (extra > s.size() - i - 1) return false;
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3FU);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return false;
    }
    i += extra + 1;
  }
  return true;
}

// Checks everything a caller can get wrong before a byte is written; returns the total bytes.
uint64_t validate(const std::vector<TensorSpec>& tensors, const TensorFiller& fill,
                  const WriteOptions& options, const detail::WriterTuning& tuning) {
  FERRY_EXPECT(
      options.format == WriteFormat::safetensors || options.format == WriteFormat::torch_zip,
      "unknown checkpoint format {}; use safetensors or torch_zip",
      static_cast<int>(options.format));
  FERRY_EXPECT(tuning.chunk_bytes > 0 && tuning.chunk_bytes % 8 == 0,
               "write chunk of {} bytes must be a positive multiple of 8", tuning.chunk_bytes);
  std::unordered_map<std::string_view, std::size_t> seen;
  uint64_t total = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& t = tensors[i];
    // First, as Shape::str() below reads rank dimensions.
    FERRY_EXPECT(t.shape.rank >= 0 && t.shape.rank <= kMaxRank,
                 "tensor #{} ('{}') has rank {}; ranks 0 to {} are supported", i, t.name,
                 t.shape.rank, kMaxRank);
    FERRY_EXPECT(!t.name.empty(),
                 "tensor #{} (shape {}) has an empty name; give every tensor a unique name", i,
                 t.shape.str());
    FERRY_EXPECT(is_utf8(t.name), "tensor #{} has a name that is not valid UTF-8", i);
    const auto [it, inserted] = seen.emplace(t.name, i);
    FERRY_EXPECT(inserted, "tensor '{}' is given twice (tensors #{} and #{}); names must be unique",
                 t.name, it->second, i);
    const std::size_t esize = dtype_size(t.dtype);
    FERRY_EXPECT(esize != 0, "tensor '{}' has dtype code {}, which is not a ferry dtype", t.name,
                 static_cast<int>(t.dtype));
    // Every ferry dtype has a safetensors tag and a torch storage class; the one thing a
    // format refuses is safetensors' reserved key.
    FERRY_EXPECT(options.format != WriteFormat::safetensors || t.name != "__metadata__",
                 "tensor '__metadata__' cannot be stored in safetensors, which reserves that key "
                 "for the metadata; rename the tensor");
    // numel * element size must fit in int64 (torch's and safetensors' limit).
    auto nbytes = static_cast<int64_t>(esize);
    for (int d = 0; d < t.shape.rank; ++d) {
      FERRY_EXPECT(t.shape[d] >= 0, "tensor '{}' has a negative dimension in shape {}", t.name,
                   t.shape.str());
      FERRY_EXPECT(!__builtin_mul_overflow(nbytes, t.shape[d], &nbytes),
                   "tensor '{}' with shape {} is larger than 2^63 bytes", t.name, t.shape.str());
    }
    FERRY_EXPECT(total <= std::numeric_limits<uint64_t>::max() - static_cast<uint64_t>(nbytes),
                 "the tensors add up to more than 2^64 bytes");
    total += static_cast<uint64_t>(nbytes);
  }
  if (options.format == WriteFormat::safetensors) {
    for (const auto& [key, value] : options.metadata) {
      FERRY_EXPECT(is_utf8(key) && is_utf8(value),
                   "safetensors metadata entry '{}' is not valid UTF-8", key);
    }
  }
  FERRY_EXPECT(static_cast<bool>(fill) || total == 0,
               "write_checkpoint was given no fill callback for {} bytes of tensors", total);
  return total;
}

struct Shard {
  std::vector<const TensorSpec*> tensors;
  uint64_t nbytes = 0;
  fs::path path;
};

// Greedy, in order, as transformers' shard_checkpoint: a tensor starts a new shard when it
// would push the current one past the limit, so a tensor larger than the limit sits alone.
// Counted in tensor bytes, like Hugging Face (headers are not counted).
std::vector<Shard> plan_shards(const std::vector<TensorSpec>& tensors, uint64_t max_shard_bytes) {
  std::vector<Shard> shards(1);
  for (const TensorSpec& t : tensors) {
    Shard* cur = &shards.back();
    const bool full = cur->nbytes >= max_shard_bytes || t.nbytes() > max_shard_bytes - cur->nbytes;
    if (max_shard_bytes > 0 && !cur->tensors.empty() && full) {
      cur = &shards.emplace_back();
    }
    cur->tensors.push_back(&t);
    cur->nbytes += t.nbytes();
  }
  return shards;
}

void write_index(const fs::path& path, const std::vector<Shard>& shards, uint64_t total_bytes,
                 const detail::WriterTuning& tuning) {
  // nlohmann::json keeps keys sorted and dump(2) matches Python's json.dumps(indent=2), so
  // this is the text transformers writes (sort_keys=True, ASCII escapes, trailing newline).
  nlohmann::json index;
  index["metadata"]["total_size"] = total_bytes;
  nlohmann::json& weight_map = index["weight_map"] = nlohmann::json::object();
  for (const Shard& s : shards) {
    for (const TensorSpec* t : s.tensors) weight_map[t->name] = s.path.filename().string();
  }
  detail::OutputFile out(path, tuning.buffer_bytes());
  out.write(index.dump(2, ' ', /*ensure_ascii=*/true) + "\n");
  out.commit();
}

// Removes files a reader would take for this checkpoint but which this write did not produce
// (a single file after a sharded write, shards or an index of an earlier write), as
// transformers' save_pretrained does; otherwise Checkpoint::open could pick up the old model.
void remove_stale_files(const fs::path& dir, const FormatNames& names,
                        const std::vector<fs::path>& written) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string f = it->path().filename().string();
    if (f != names.single() && f != names.index() && !names.is_shard(f)) continue;
    const auto same_name = [&f](const fs::path& w) { return w.filename() == f; };
    if (std::none_of(written.begin(), written.end(), same_name)) {
      stale.push_back(it->path());
    }
  }
  if (ec) {
    ::ferry::detail::throw_io_error(__FILE__, __LINE__, ec.value(),
                                    fmt::format("cannot list {} to remove files of an older "
                                                "checkpoint",
                                                dir.string()));
  }
  for (const fs::path& p : stale) {
    if (!fs::remove(p, ec) && ec) {
      ::ferry::detail::throw_io_error(
          __FILE__, __LINE__, ec.value(),
          fmt::format("the new checkpoint is written, but {} of an older one cannot be removed; "
                      "remove it by hand, or readers may load it instead",
                      p.string()));
    }
  }
}

}  // namespace

namespace detail {

std::vector<fs::path> write_checkpoint_tuned(const fs::path& dir,
                                             const std::vector<TensorSpec>& tensors,
                                             const TensorFiller& fill, const WriteOptions& options,
                                             const WriterTuning& tuning) {
  const uint64_t total = validate(tensors, fill, options, tuning);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    ::ferry::detail::throw_io_error(__FILE__, __LINE__, ec.value(),
                                    fmt::format("cannot create directory {}", dir.string()));
  }

  const FormatNames names = names_for(options.format);
  // Planned in full first: every shard's name carries the shard count.
  std::vector<Shard> shards = plan_shards(tensors, options.max_shard_bytes);
  // Like transformers, a model that fits in one shard is saved as a single file, no index.
  const bool sharded = shards.size() > 1;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    shards[i].path = dir / (sharded ? names.shard(i, shards.size()) : names.single());
  }

  ProgressReporter progress(options.progress, total);
  std::vector<fs::path> written;
  try {
    for (const Shard& s : shards) {
      if (options.format == WriteFormat::safetensors) {
        write_safetensors_file(s.path, s.tensors, options.metadata, fill, progress, tuning);
      } else {
        write_torch_zip_file(s.path, s.tensors, fill, progress, tuning);
      }
      written.push_back(s.path);
    }
    // The index goes last: until it exists, the shards do not form a checkpoint.
    if (sharded) {
      write_index(dir / names.index(), shards, total, tuning);
      written.push_back(dir / names.index());
    }
  } catch (...) {
    // The shards finished before the failure are no checkpoint without the rest; remove
    // them rather than leave a directory that half-looks like a model.
    for (const fs::path& p : written) {
      std::error_code ignored;
      fs::remove(p, ignored);
    }
    throw;
  }
  remove_stale_files(dir, names, written);
  sync_directory(dir);
  return written;
}

}  // namespace detail

std::vector<fs::path> write_checkpoint(const fs::path& dir, const std::vector<TensorSpec>& tensors,
                                       const TensorFiller& fill, const WriteOptions& options) {
  return detail::write_checkpoint_tuned(dir, tensors, fill, options, detail::WriterTuning{});
}

}  // namespace ferry::offload
