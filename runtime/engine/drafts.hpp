// Draft models for speculative decoding (speculative.hpp): what `--draft` names, and the
// quantized packs of a model that `self-int4` / `self-int8` draft with, converted once into
// ferry's cache directory (never into the model's own folder) and reused.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace ferry::engine {

// What `--draft` names.
struct DraftSpec {
  enum class Kind { lookup, self, model };
  Kind kind = Kind::lookup;
  std::string quant;           // self: "int4" or "int8"
  std::filesystem::path path;  // model: the draft model (a directory, ferry pack or GGUF file)

  // "lookup", "self-int4", "self-int8", or the path of a model. Throws InvalidArgument naming
  // the accepted values when the text is none of them and no such path exists.
  static DraftSpec parse(std::string_view text);
  std::string describe() const;  // "lookup", "self-int4", "model PATH"
};

// Where ferry keeps self-draft packs: <cache>/drafts, beside the probe cache ($FERRY_CACHE_DIR,
// $XDG_CACHE_HOME/ferry or ~/.cache/ferry); none when FERRY_CACHE_DIR=off or there is no home.
std::optional<std::filesystem::path> drafts_cache_dir();

// The pack directory for `model` in `quant` under cache_dir: named by the model's name, the
// quantization and a hash of the model's absolute path, total size and latest modification time,
// so a changed model gets a fresh pack.
std::filesystem::path self_draft_dir(const std::filesystem::path& model, std::string_view quant,
                                     const std::filesystem::path& cache_dir);

// The self-draft pack of `model`, converting it first if the cache lacks it (under a lock, so
// two runs convert once; written to a staging directory and renamed, so an interrupted
// conversion leaves nothing). on_convert is called before a conversion starts, with the
// destination. Throws InvalidArgument when there is no cache directory, saying how to make the
// pack by hand.
std::filesystem::path ensure_self_draft(
    const std::filesystem::path& model, std::string_view quant,
    std::optional<std::filesystem::path> cache_dir = drafts_cache_dir(),
    const std::function<void(const std::filesystem::path&)>& on_convert = {});

}  // namespace ferry::engine
