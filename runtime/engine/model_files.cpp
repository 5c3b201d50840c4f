#include "runtime/engine/model_files.hpp"

#include <fmt/format.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "offload/checkpoint.hpp"
#include "offload/detail/gguf.hpp"
#include "offload/file.hpp"
#include "runtime/core/error.hpp"
#include "runtime/model/gguf_config.hpp"

namespace ferry::engine {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool has_gguf_magic(const fs::path& p) {
  std::FILE* f = std::fopen(p.c_str(), "rb");
  if (f == nullptr) return false;
  unsigned char m[4] = {};
  const bool ok = std::fread(m, 1, 4, f) == 4 && offload::detail::is_gguf_magic(m);
  std::fclose(f);
  return ok;
}

}  // namespace

std::optional<fs::path> gguf_model_file(const fs::path& model) {
  std::error_code ec;
  if (fs::is_regular_file(model, ec))
    return model.extension() == ".gguf" || has_gguf_magic(model) ? std::optional(model)
                                                                 : std::nullopt;
  if (!fs::is_directory(model, ec) || fs::exists(model / "config.json", ec)) return std::nullopt;
  // (A pack directory has a config.json; its tokenizer.gguf is not a model.)
  std::vector<fs::path> found;
  for (const auto& e : fs::directory_iterator(model, ec)) {
    const std::string n = e.path().filename().string();
    if (!n.ends_with(".gguf") || !e.is_regular_file(ec)) continue;
    // A split set counts once, by its first part.
    const auto of = n.rfind("-of-");
    if (of != std::string::npos && of >= 6 && n.compare(of - 6, 6, "-00001") != 0) continue;
    found.push_back(e.path());
  }
  FERRY_EXPECT(found.size() <= 1,
               "{} holds {} GGUF models ({}, {}, …); pass the one to run with -m FILE.gguf",
               model.string(), found.size(), found[0].filename().string(),
               found[1].filename().string());
  if (found.empty()) return std::nullopt;
  return found.front();
}

model::ModelConfig gguf_model_config(const offload::Checkpoint& ck) {
  const offload::detail::GgufHeader* h = ck.gguf_header();
  FERRY_EXPECT(h != nullptr, "{} is not a GGUF checkpoint", ck.files().front().path.string());
  const std::string source = ck.files().front().path.string();
  model::ModelConfig c = model::config_from_gguf(
      h->metadata,
      [&ck](std::string_view name) -> const Shape* {
        const offload::TensorEntry* t = ck.find(name);
        return t ? &t->shape : nullptr;
      },
      source);
  if (const offload::TensorEntry* t = ck.find(model::kGgufRopeFreqsTensor)) {
    FERRY_FORMAT_EXPECT(t->dtype == DType::f32 && t->shape.rank == 1 &&
                            t->shape[0] == c.rotary_dim / 2,
                        "{}: tensor '{}' is {} {}; it must be f32 [{}] (one factor per rotary "
                        "frequency)",
                        source, t->name, dtype_name(t->dtype), t->shape.str(), c.rotary_dim / 2);
    c.rope_freq_factors.resize(static_cast<std::size_t>(c.rotary_dim / 2));
    ck.read(*t, c.rope_freq_factors.data());
    for (float f : c.rope_freq_factors)
      FERRY_FORMAT_EXPECT(f > 0 && f < 1e6f,
                          "{}: tensor '{}' holds the factor {}; rotary frequency factors are "
                          "positive — the file is corrupt",
                          source, t->name, f);
  }
  return c;
}

model::ModelConfig read_model_config(const fs::path& model) {
  if (const auto gguf = gguf_model_file(model))
    return gguf_model_config(offload::Checkpoint::open(*gguf));
  return model::ModelConfig::from_model_dir(model);
}

text::GgufVocabulary gguf_vocabulary(const json& md, const std::string& source) {
  text::GgufVocabulary v;
  v.source = source;
  auto string_key = [&](const char* key, std::string& out, bool required) {
    const auto it = md.find(key);
    if (it == md.end()) {
      FERRY_FORMAT_EXPECT(!required,
                          "{}: metadata key '{}' is missing; the file carries no tokenizer — "
                          "pass token ids with --ids",
                          source, key);
      return;
    }
    FERRY_FORMAT_EXPECT(it->is_string(), "{}: metadata key '{}' is not a string", source, key);
    out = it->get<std::string>();
  };
  string_key("tokenizer.ggml.model", v.model, true);
  string_key("tokenizer.ggml.pre", v.pre, false);
  string_key("tokenizer.chat_template", v.chat_template, false);
  auto array_key = [&](const char* key, auto& out, auto check, const char* what, bool required) {
    const auto it = md.find(key);
    if (it == md.end()) {
      FERRY_FORMAT_EXPECT(!required, "{}: metadata key '{}' is missing; the tokenizer is incomplete",
                          source, key);
      return;
    }
    FERRY_FORMAT_EXPECT(it->is_array(), "{}: metadata key '{}' is not an array", source, key);
    out.reserve(it->size());
    for (const json& e : *it) {
      FERRY_FORMAT_EXPECT(check(e), "{}: metadata key '{}' holds {}, not {}", source, key,
                          e.is_string() ? "a string" : e.dump(), what);
      out.push_back(e.get<typename std::decay_t<decltype(out)>::value_type>());
    }
  };
  array_key("tokenizer.ggml.tokens", v.tokens, [](const json& e) { return e.is_string(); },
            "strings", true);
  array_key("tokenizer.ggml.scores", v.scores, [](const json& e) { return e.is_number(); },
            "numbers", false);
  array_key("tokenizer.ggml.token_type", v.token_types,
            [](const json& e) { return e.is_number_integer(); }, "integers", false);
  array_key("tokenizer.ggml.merges", v.merges, [](const json& e) { return e.is_string(); },
            "strings", false);
  auto id_key = [&](const char* key, std::optional<int32_t>& out) {
    const auto it = md.find(key);
    if (it == md.end()) return;
    FERRY_FORMAT_EXPECT(it->is_number_integer() && it->get<int64_t>() >= 0 &&
                            it->get<int64_t>() < static_cast<int64_t>(v.tokens.size()),
                        "{}: metadata key '{}' is {}, not an id of the {}-token vocabulary",
                        source, key, it->dump(), v.tokens.size());
    out = it->get<int32_t>();
  };
  id_key("tokenizer.ggml.bos_token_id", v.bos_id);
  id_key("tokenizer.ggml.eos_token_id", v.eos_id);
  id_key("tokenizer.ggml.eot_token_id", v.eot_id);
  id_key("tokenizer.ggml.eom_token_id", v.eom_id);
  id_key("tokenizer.ggml.unknown_token_id", v.unk_id);
  id_key("tokenizer.ggml.padding_token_id", v.pad_id);
  auto bool_key = [&](const char* key, std::optional<bool>& out) {
    const auto it = md.find(key);
    if (it == md.end()) return;
    FERRY_FORMAT_EXPECT(it->is_boolean(), "{}: metadata key '{}' is {}, not a bool", source, key,
                        it->dump());
    out = it->get<bool>();
  };
  bool_key("tokenizer.ggml.add_bos_token", v.add_bos);
  bool_key("tokenizer.ggml.add_eos_token", v.add_eos);
  bool_key("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  return v;
}

nlohmann::json gguf_file_metadata(const fs::path& file) {
  const offload::UniqueFd fd = offload::open_read(file);
  const uint64_t size = offload::file_size(fd.get(), file);
  return offload::detail::read_gguf_header(
             size,
             [&](uint64_t offset, std::size_t nbytes, void* dst, const char* what) {
               offload::pread_full(fd.get(), dst, nbytes, offset, file, what);
             },
             file.string())
      .metadata;
}

namespace {
text::Tokenizer tokenizer_of_gguf(const fs::path& file) {
  return text::Tokenizer::from_gguf(gguf_vocabulary(gguf_file_metadata(file), file.string()));
}
}  // namespace

text::Tokenizer read_tokenizer(const fs::path& model) {
  if (const auto gguf = gguf_model_file(model)) return tokenizer_of_gguf(*gguf);
  // A pack converted from a GGUF file keeps the file's tokenizer as tokenizer.gguf.
  std::error_code ec;
  if (fs::is_directory(model, ec) && fs::is_regular_file(model / "tokenizer.gguf", ec) &&
      !fs::exists(model / "tokenizer.json", ec) && !fs::exists(model / "vocab.json", ec))
    return tokenizer_of_gguf(model / "tokenizer.gguf");
  return text::Tokenizer::from_model_dir(model);
}

std::vector<int32_t> read_eos_ids(const fs::path& model, const model::ModelConfig& config,
                                  const text::Tokenizer* tokenizer) {
  if (!gguf_model_file(model)) return model::generation_eos_ids(model, config);
  // llama.cpp stops at every end-of-generation token its vocabulary names (eos, eot, eom, and
  // those it recognises by their text, e.g. Llama 3's <|eot_id|>).
  std::vector<int32_t> ids = config.eos_token_ids;
  const std::vector<int32_t> eog =
      tokenizer != nullptr ? tokenizer->eog_ids() : read_tokenizer(model).eog_ids();
  for (int32_t id : eog)
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  return ids;
}

}  // namespace ferry::engine
