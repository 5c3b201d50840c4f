// ferry inspect and ferry make-model: looking at checkpoints and making synthetic ones.
#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>

#include "offload/checkpoint.hpp"
#include "offload/detail/gguf.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/make_model.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/model/layout.hpp"
#include "runtime/model/model_config.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace {

// A metadata value for display: scalars as JSON, strings quoted (cut at 80 bytes), arrays by
// their type and length with the first few values.
std::string show_value(const nlohmann::json& v, const std::string& type) {
  if (v.is_array()) {
    std::string head;
    for (std::size_t i = 0; i < std::min<std::size_t>(v.size(), 3); ++i)
      head += (i ? ", " : "") + show_value(v[i], "");
    return fmt::format("{} of {}: [{}{}]", type, v.size(), head, v.size() > 3 ? ", …" : "");
  }
  if (v.is_string()) {
    const std::string& s = v.get_ref<const std::string&>();
    std::string shown = s.size() > 80 ? s.substr(0, 80) + "…" : s;
    for (char& c : shown)
      if (c == '\n' || c == '\r') c = ' ';
    return nlohmann::json(shown).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  return v.dump();
}

void print_gguf_header(const offload::detail::GgufHeader& h, bool all_metadata) {
  const auto& md = h.metadata;
  auto str = [&](const char* key) {
    const auto it = md.find(key);
    return it != md.end() && it->is_string() ? it->get<std::string>() : std::string("?");
  };
  fmt::print("gguf: version {}, alignment {}, {} metadata keys, data at byte {}\n", h.version,
             h.alignment, md.size(), h.data_offset);
  fmt::print("architecture: {}  name: {}", str("general.architecture"), str("general.name"));
  if (const auto it = md.find("general.file_type"); it != md.end())
    fmt::print("  file type: {}", it->dump());
  fmt::print("\n");
  std::map<std::string, std::pair<int, uint64_t>> by_type;
  for (const auto& t : h.tensors) {
    auto& [n, b] = by_type[offload::detail::ggml_type_name(t.ggml_type)];
    ++n;
    b += t.nbytes;
  }
  for (const auto& [type, nb] : by_type)
    fmt::print("ggml type {}: {} tensors, {}\n", type, nb.first, format_bytes(nb.second));
  for (const auto& [key, type] : h.metadata_types) {
    const bool tokenizer_table = key.starts_with("tokenizer.ggml.") && type.starts_with("array");
    if (!all_metadata && (tokenizer_table || key == "tokenizer.chat_template")) continue;
    fmt::print("  {:<44} {}\n", key, show_value(md[key], type));
  }
}

}  // namespace

Command add_inspect(CLI::App& app) {
  struct Options {
    std::string model;
    bool tensors = false;
    bool metadata = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("inspect", "describe a checkpoint: format, tensors, bytes");
  cmd->add_option("-m,--model", o->model, "model directory or checkpoint file")->required();
  cmd->add_flag("--tensors", o->tensors, "list every tensor");
  cmd->add_flag("--metadata", o->metadata, "a GGUF file's metadata, every key");
  return [o] {
    const auto ck = offload::Checkpoint::open(o->model);
    fmt::print("format: {}\n", offload::format_name(ck.format()));
    const offload::detail::GgufHeader* gguf = ck.gguf_header();
    if (gguf != nullptr) print_gguf_header(*gguf, o->metadata);
    for (const auto& f : ck.files())
      fmt::print("file: {} ({})\n", f.path.string(), format_bytes(f.size_bytes));
    std::map<std::string, std::pair<int64_t, uint64_t>> by_dtype;
    for (const auto& t : ck.tensors()) {
      auto& [n, b] = by_dtype[std::string(dtype_name(t.dtype))];
      ++n;
      b += t.nbytes;
    }
    for (const auto& [dt, nb] : by_dtype)
      fmt::print("dtype {}: {} tensors, {}\n", dt, nb.first, format_bytes(nb.second));
    if (o->tensors) {
      for (const auto& t : ck.tensors())
        fmt::print("  {:<48} {:<5} {:<16} {:>12} bytes  file {} @ {}\n", t.name,
                   dtype_name(t.dtype), t.shape.str(), t.nbytes, t.file_index, t.offset_bytes);
    }
    // Per-layer bytes, when a config.json beside the weights (or a GGUF file's metadata) says
    // what the layers are.
    const std::filesystem::path dir = std::filesystem::is_directory(o->model)
                                          ? std::filesystem::path(o->model)
                                          : std::filesystem::path(o->model).parent_path();
    if (gguf != nullptr || std::filesystem::exists(dir / "config.json")) {
      const auto cfg = gguf != nullptr ? engine::gguf_model_config(ck)
                                       : model::ModelConfig::from_model_dir(dir);
      fmt::print("model: {}, {:.3f} B parameters{}\n", cfg.summary(),
                 static_cast<double>(model::total_params(cfg)) / 1e9,
                 cfg.tie_word_embeddings ? " (lm_head tied to the embedding)" : "");
      for (const auto& g : model::all_groups(cfg)) {
        uint64_t bytes = 0;
        std::string missing;
        std::map<std::string, int> types;
        for (const auto& w : g.weights) {
          if (const auto* t = ck.find(w.name)) {
            bytes += t->nbytes;
            if (w.is_matrix()) ++types[std::string(dtype_name(t->dtype))];
          } else {
            missing = w.name;
          }
        }
        std::string mix;
        for (const auto& [name, n] : types)
          mix += fmt::format("{}{} {}", mix.empty() ? "" : ", ", n, name);
        const std::string name =
            g.kind == model::WeightGroup::Kind::block
                ? fmt::format("layer {}", g.layer)
                : (g.kind == model::WeightGroup::Kind::embedding ? "embedding" : "head");
        fmt::print("  {:<10} {:>12}  {}{}\n", name, format_bytes(bytes), mix,
                   missing.empty() ? "" : fmt::format("  (missing {})", missing));
      }
    }
    fmt::print("total: {} tensors, {} ({} bytes)\n", ck.tensors().size(),
               format_bytes(ck.total_bytes()), ck.total_bytes());
    return 0;
  };
}

Command add_make_model(CLI::App& app) {
  struct Options {
    std::string preset = "tiny";
    int64_t n_layer = 0, n_embd = 0, n_head = 0, n_kv_head = 0, head_dim = 0, rotary_dim = -1,
            n_inner = 0, vocab = 0, n_positions = 0;
    std::string dtype;
    std::string format = "safetensors";
    std::string shard_size;
    std::string gguf;
    uint64_t seed = 0;
    std::string out;
    bool quiet = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "make-model",
      "write a random-weight checkpoint of a real model's shapes (config, tokenizer, weights)");
  cmd->add_option("--preset", o->preset, model::preset_names())->check([](const std::string& name) {
    try {
      model::preset_config(name);
      return std::string();
    } catch (const Error& e) {
      return std::string(e.what());
    }
  });
  cmd->add_option("--n-layer", o->n_layer, "override the preset's layer count");
  cmd->add_option("--n-embd", o->n_embd, "override n_embd");
  cmd->add_option("--n-head", o->n_head, "override n_head (the KV heads follow unless given)");
  cmd->add_option("--n-kv-head", o->n_kv_head, "override the KV heads (Llama family)");
  cmd->add_option("--head-dim", o->head_dim, "override head_dim (Llama family)");
  cmd->add_option("--rotary-dim", o->rotary_dim, "override rotary_dim");
  cmd->add_option("--n-inner", o->n_inner, "override n_inner (default 4 · n_embd)");
  cmd->add_option("--vocab", o->vocab, "override vocab_size");
  cmd->add_option("--n-positions", o->n_positions, "override n_positions");
  cmd->add_option(
         "--dtype", o->dtype,
         "f32 | f16 | bf16 (default: bf16 for the Llama family, as released; f16 for GPT-J)")
      ->check(CLI::IsMember({"f32", "f16", "bf16"}));
  cmd->add_option("--format", o->format, "safetensors | torch")
      ->check(CLI::IsMember({"safetensors", "torch"}));
  cmd->add_option("--shard-size", o->shard_size,
                  "split into shards of at most this size, e.g. 2GiB");
  cmd->add_option("--seed", o->seed, "weights are a function of the seed")
      ->check(no_minus_sign());
  cmd->add_option("--gguf", o->gguf,
                  "write one GGUF file (-o FILE.gguf) instead of a directory, its matrices as "
                  "llama-quantize types them: f32 | f16 | q8_0 | q4_0 | q4_k_m | q5_k_m | q6_k "
                  "(Llama family)");
  cmd->add_option("-o,--output", o->out, "directory to write (a file with --gguf)")->required();
  cmd->add_flag("-q,--quiet", o->quiet, "no progress on stderr");
  return [o] {
    engine::MakeModelOptions mo;
    mo.config = model::preset_config(o->preset);
    auto& c = mo.config;
    if (o->n_layer) c.n_layer = o->n_layer;
    if (o->n_embd) {
      c.n_embd = o->n_embd;
      if (!o->n_inner) c.n_inner = 4 * o->n_embd;
    }
    if (o->n_head) {
      // Keep the preset's grouping (GQA 4:1 stays 4:1) unless the KV heads are given.
      const int64_t group = c.n_head / c.n_kv_head;
      c.n_head = o->n_head;
      c.n_kv_head = o->n_head % group == 0 ? o->n_head / group : o->n_head;
    }
    if (o->n_kv_head) c.n_kv_head = o->n_kv_head;
    if (o->head_dim) c.head_dim_ = o->head_dim;
    FERRY_EXPECT(!c.is_llama_family() || o->rotary_dim < 0,
                 "--rotary-dim is GPT-J's; the Llama family rotates the whole head (--head-dim)");
    if (c.is_llama_family()) c.rotary_dim = c.head_dim();
    if (o->rotary_dim >= 0) c.rotary_dim = o->rotary_dim;
    if (o->n_inner) c.n_inner = o->n_inner;
    if (o->vocab) c.vocab_size = o->vocab;
    if (o->n_positions) c.n_positions = o->n_positions;
    if (o->dtype.empty()) o->dtype = c.is_llama_family() ? "bf16" : "f16";
    mo.dtype = *parse_dtype(o->dtype);
    mo.format =
        o->format == "torch" ? offload::WriteFormat::torch_zip : offload::WriteFormat::safetensors;
    mo.seed = o->seed;
    if (!o->shard_size.empty()) mo.max_shard_bytes = parse_size(o->shard_size);
    Progress progress("make-model", o->quiet);
    mo.progress = [&](uint64_t done, uint64_t total) { progress.update(done, total); };
    if (!o->gguf.empty()) {
      const uint64_t bytes = engine::make_gguf_model(o->out, mo, engine::parse_gguf_mix(o->gguf));
      progress.finish();
      if (!o->quiet)
        fmt::print(stderr, "ferry: wrote {} ({} layers, {}) to {}\n", format_bytes(bytes),
                   c.n_layer, o->gguf, o->out);
      return 0;
    }
    const uint64_t bytes = engine::make_model(o->out, mo);
    progress.finish();
    if (!o->quiet)
      eprint("ferry: wrote {} ({} layers, {} weights as {}) to {}\n",
                 format_bytes(bytes), c.n_layer, o->dtype, o->format, o->out);
    return 0;
  };
}

}  // namespace ferry::tools
