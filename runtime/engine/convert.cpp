#include "runtime/engine/convert.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "kernels/cpu/ops.hpp"
#include "kernels/cpu/quant.hpp"
#include "offload/checkpoint.hpp"
#include "offload/detail/gguf.hpp"
#include "offload/pack_writer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/engine/backend.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/engine/weights.hpp"
#include "runtime/model/layout.hpp"

namespace ferry::engine {

namespace fs = std::filesystem;
using model::WeightRole;

namespace {

// The GGUF value type of a type name as the reader shows it ("u32", "array[string]").
offload::detail::GgufType gguf_type_of(const std::string& name) {
  using offload::detail::GgufType;
  if (name.starts_with("array")) return GgufType::array;
  for (uint32_t t = 0; t <= static_cast<uint32_t>(GgufType::f64); ++t)
    if (offload::detail::gguf_type_name(static_cast<GgufType>(t)) == name)
      return static_cast<GgufType>(t);
  return GgufType::string;
}
offload::detail::GgufType gguf_elem_type_of(const std::string& name) {
  if (!name.starts_with("array[")) return offload::detail::GgufType::u8;
  return gguf_type_of(name.substr(6, name.size() - 7));
}

// Files of a Hugging Face model directory that travel with the weights.
constexpr const char* kSideFiles[] = {"vocab.json",
                                      "merges.txt",
                                      "tokenizer.json",
                                      "tokenizer_config.json",
                                      "special_tokens_map.json",
                                      "added_tokens.json",
                                      "generation_config.json"};

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  FERRY_EXPECT(in.good(), "cannot read {}", path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Removes the private directory a conversion is written into unless it was moved into place.
struct TempDirOwner {
  fs::path path;
  ~TempDirOwner() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

bool is_pack_file_name(const std::string& name) {
  if (name == "config.json" || name == "model.ferry" || name == "tokenizer.gguf") return true;
  return std::any_of(std::begin(kSideFiles), std::end(kSideFiles),
                     [&](const char* side) { return name == side; });
}

// Moves the finished pack directory `tmp` to `dest`. A new or empty `dest` is renamed whole; one
// holding only a pack's files is swapped with it in one step (renameat2 RENAME_EXCHANGE), so a
// reader sees the old pack or the new one. Otherwise (the user keeps other files there) each of
// the pack's files is renamed over its old self, model.ferry first, and an old side file the
// new model lacks (a tokenizer of another kind) is removed, so it cannot pair with the new pack.
void install_pack_dir(const fs::path& tmp, const fs::path& dest) {
  std::error_code ec;
  // The staging directory is private (0700) while it is written; the pack takes the old
  // directory's permissions, or a new directory's usual rwxr-xr-x.
  const fs::file_status old = fs::status(dest, ec);
  fs::permissions(tmp, fs::is_directory(old) ? old.permissions() : fs::perms(0755), ec);
  if (fs::is_directory(dest, ec) && fs::is_empty(dest, ec)) fs::remove(dest, ec);
  if (!fs::exists(dest, ec)) {
    FERRY_SYSCALL(::rename(tmp.c_str(), dest.c_str()), "cannot move the finished pack {} to {}",
                  tmp.string(), dest.string());
    return;
  }
  bool only_pack_files = true;
  for (const auto& e : fs::directory_iterator(dest))
    only_pack_files = only_pack_files && is_pack_file_name(e.path().filename().string());
  if (only_pack_files &&
      ::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dest.c_str(), RENAME_EXCHANGE) == 0) {
    return;  // tmp now holds the old pack, which the caller's TempDirOwner removes
  }
  std::vector<std::string> names = {"model.ferry", "config.json", "tokenizer.gguf"};
  names.insert(names.end(), std::begin(kSideFiles), std::end(kSideFiles));
  for (const std::string& name : names) {
    if (fs::exists(tmp / name, ec)) {
      FERRY_SYSCALL(::rename((tmp / name).c_str(), (dest / name).c_str()),
                    "cannot move the finished {} into {}", name, dest.string());
    } else if (::unlink((dest / name).c_str()) != 0 && errno != ENOENT) {
      FERRY_SYSCALL(-1, "cannot remove the old {} from {}", name, dest.string());
    }
  }
}

// Source rows are read this many bytes at a time.
constexpr uint64_t kReadChunkBytes = 16ull << 20;

// One f32 value stored as dtype (f32, f16 or bf16). A NaN or infinity is refused, as int8 and
// int4 refuse it (f16 once carried it into the pack, which then ran to NaN logits), and so is a
// finite value that would become infinite, since the model would silently change.
void store_float(float v, DType dtype, std::byte* out, const std::string& name) {
  FERRY_FORMAT_EXPECT(std::isfinite(v),
                      "tensor '{}' holds {}; a weight must be finite — the source checkpoint is "
                      "damaged (re-download or re-export it)",
                      name, v);
  if (dtype == DType::f32) {
    std::memcpy(out, &v, 4);
    return;
  }
  const uint16_t h = dtype == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
  const float back = dtype == DType::f16 ? f16_to_f32(h) : bf16_to_f32(h);
  FERRY_EXPECT(std::isfinite(back),
               "tensor '{}' holds {}, beyond {}'s range; convert with --quant f32 or bf16", name, v,
               dtype_name(dtype));
  std::memcpy(out, &h, 2);
}

// Fills dst with tensor t of the source converted to dtype, reading a few MiB of rows at a time.
void convert_tensor(const offload::Checkpoint& ck, const offload::TensorEntry& t, DType dtype,
                    std::span<std::byte> dst, ThreadPool& pool) {
  const int64_t cols = t.shape.rank >= 1 ? t.shape[t.shape.rank - 1] : 1;
  const int64_t rows = cols > 0 ? t.shape.numel() / cols : 0;
  const uint64_t src_row = packed_row_bytes(t.dtype, cols);
  const uint64_t dst_row = packed_row_bytes(dtype, cols);
  FERRY_EXPECT(static_cast<uint64_t>(rows) * dst_row == dst.size(),
               "internal: tensor '{}' converts to {} bytes, not {}", t.name,
               static_cast<uint64_t>(rows) * dst_row, dst.size());
  if (dtype == t.dtype) {  // kept as stored (a GGUF file's blocks): the bytes, exactly
    ck.read(t, dst.data());
    // Float weights are still checked, as every converted value is (blocks are not looked into).
    const int64_t bad = first_nonfinite(dst.data(), dtype, t.shape.numel());
    FERRY_FORMAT_EXPECT(bad < 0,
                        "tensor '{}' holds a NaN or an infinity at element {}; a weight must be "
                        "finite — the source checkpoint is damaged (re-download or re-export it)",
                        t.name, bad);
    return;
  }
  FERRY_EXPECT(!is_ggml_block(dtype) || ggml_row_fits(dtype, cols),
               "tensor '{}' has rows of {}, not whole {} blocks of {}; convert with --quant "
               "int8, int4 or f16, or a block type with smaller blocks (q8_0, q4_0)",
               t.name, cols, dtype_name(dtype), ggml_block_elems(dtype));
  const int64_t rows_per_read =
      std::max<int64_t>(1, static_cast<int64_t>(kReadChunkBytes / std::max<uint64_t>(src_row, 1)));
  std::vector<std::byte> src(static_cast<std::size_t>(rows_per_read) * src_row);
  std::vector<float> wide(static_cast<std::size_t>(rows_per_read * cols));
  const std::string what = fmt::format("tensor '{}'", t.name);
  for (int64_t r0 = 0; r0 < rows; r0 += rows_per_read) {
    const int64_t nr = std::min(rows_per_read, rows - r0);
    ck.read_range(t, static_cast<uint64_t>(r0) * src_row, static_cast<uint64_t>(nr) * src_row,
                  src.data());
    pool.parallel_for(nr, 1, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        float* row = wide.data() + r * cols;
        kernels::cpu::convert_to_f32(src.data() + static_cast<uint64_t>(r) * src_row, t.dtype, cols,
                                     row);
        std::byte* out = dst.data() + static_cast<uint64_t>(r0 + r) * dst_row;
        if (is_row_packed(dtype)) {
          kernels::cpu::quantize_row(row, cols, dtype, out, what.c_str());
        } else {
          for (int64_t j = 0; j < cols; ++j)
            store_float(row[j], dtype, out + static_cast<uint64_t>(j) * dtype_size(dtype), t.name);
        }
      }
    });
  }
}

}  // namespace

ConvertResult convert_model(const fs::path& in, const fs::path& out,
                            const ConvertOptions& options) {
  const std::optional<fs::path> gguf = gguf_model_file(in);
  FERRY_EXPECT(gguf || fs::is_directory(in),
               "{} is not a model directory or a GGUF file; give -m a Hugging Face model "
               "directory (config.json + weights), a ferry pack directory or a .gguf file",
               in.string());
  std::error_code ec;
  FERRY_EXPECT(!fs::exists(out, ec) || fs::is_directory(out, ec),
               "{} exists and is not a directory; -o names the pack directory to write",
               out.string());
  FERRY_EXPECT(!fs::exists(out, ec) || !fs::equivalent(in, out, ec),
               "-o {} is the input directory; write the pack to a new directory", out.string());
  const auto ck = offload::Checkpoint::open(gguf.value_or(in));
  model::ModelConfig config =
      gguf ? gguf_model_config(ck) : model::ModelConfig::from_model_dir(in);
  check_checkpoint(config, ck);
  // A GGUF file's stop ids include those llama.cpp finds by their text; the pack's config keeps
  // them all.
  if (gguf) config.eos_token_ids = read_eos_ids(*gguf, config);

  const DType matrices = options.format.dtype;
  const DType wte_src = ck.at(model::embedding_group(config).weights[0].name).dtype;
  // What stays unquantized keeps 16 bits (f16, or bf16 if the source is bf16); a float format
  // applies to everything.
  const DType sixteen = !is_row_packed(matrices) ? matrices
                        : wte_src == DType::bf16  ? DType::bf16
                                                  : DType::f16;
  const DType embeddings = options.quant_embeddings ? matrices : sixteen;
  const DType lm_head = options.lm_head_format ? options.lm_head_format->dtype
                        : options.quant_lm_head  ? matrices
                                                 : sixteen;
  FERRY_EXPECT(!options.lm_head_format || !options.keep,
               "--lm-head {} asks to rewrite lm_head, but --quant keep copies every matrix as the "
               "source stores it; drop one of the two",
               options.lm_head_format ? options.lm_head_format->name() : std::string());

  std::vector<offload::PackBlobSpec> blobs;
  std::vector<std::vector<const offload::TensorEntry*>> sources;
  const auto add_blob = [&](std::string name) {
    blobs.push_back({std::move(name), {}});
    sources.emplace_back();
  };
  const auto add = [&](const model::WeightSpec& w, DType dtype, const std::string& source) {
    const offload::TensorEntry& t = ck.at(source);
    // Norms and biases keep their source dtype: a few MiB, and exact.
    const DType d = w.is_matrix() && !options.keep ? dtype : t.dtype;
    blobs.back().tensors.push_back({w.name, d, w.shape});
    sources.back().push_back(&t);
  };
  add_blob("vectors");
  for (const auto& g : model::all_groups(config))
    for (const auto& w : g.weights)
      if (!w.is_matrix()) add(w, matrices, w.name);
  add_blob("embedding");
  const model::WeightSpec table = model::embedding_group(config).weights[0];
  add(table, embeddings, table.name);
  for (int l = 0; l < config.n_layer; ++l) {
    add_blob(fmt::format("layer {}", l));
    // The block's matrices in the order model_units streams them, so a layer's blob is one read.
    for (const auto& w : model::block_group(config, l).matrices()) add(w, matrices, w.name);
  }
  // A tied output projection is written as its own lm_head.weight (it may be quantized where
  // the embedding is not), and the pack's config.json says the two are no longer tied.
  model::ModelConfig pack_config = config;
  pack_config.tie_word_embeddings = false;
  add_blob("lm_head");
  add(model::head_group(pack_config).spec(WeightRole::lm_head_w), lm_head,
      model::head_group(config).spec(WeightRole::lm_head_w).name);

  // Everything is written into a private directory beside the destination and moved into place
  // only when complete: a failed, interrupted or concurrent convert never leaves an old pack
  // beside a new config.json or tokenizer. Two converts into one destination take turns.
  fs::path dest = fs::absolute(out).lexically_normal();
  if (!dest.has_filename()) dest = dest.parent_path();  // "out/"
  fs::create_directories(dest.parent_path());
  std::string lock_name = dest.filename().string();
  lock_name.insert(lock_name.begin(), '.');
  lock_name.append(".lock");
  const FileLock lock(dest.parent_path() / lock_name);
  TempDirOwner staged{make_temp_dir_beside(dest)};
  const RemoveOnSignal remove_on_signal(staged.path);
  const fs::path& work = staged.path;
  nlohmann::json tokenizer = nlohmann::json::object();
  for (const char* name : kSideFiles) {
    if (!fs::is_regular_file(in / name, ec)) continue;
    const std::string text = read_text_file(in / name);
    write_file_atomically(work / name, text, name);
    tokenizer[name] = {{"bytes", text.size()}};
  }
  if (gguf) {
    // The description as ferry read it (GGUF names, the stored rows' rotary), and the file's
    // tokenizer as a GGUF file of metadata only.
    write_file_atomically(work / "config.json", pack_config.to_json().dump(2) + "\n",
                          "config.json");
    offload::detail::GgufWriter w;
    const auto& md = ck.gguf_header()->metadata;
    const auto& types = ck.gguf_header()->metadata_types;
    for (const auto& [key, value] : md.items()) {
      if (!key.starts_with("tokenizer.")) continue;
      const std::string& type = types.at(key);
      w.set(key, gguf_type_of(type), value, gguf_elem_type_of(type));
    }
    w.set("general.architecture", offload::detail::GgufType::string,
          md.value("general.architecture", std::string("llama")));
    const std::string header = w.header();
    write_file_atomically(work / "tokenizer.gguf", header, "tokenizer.gguf");
    tokenizer["tokenizer.gguf"] = {{"bytes", header.size()}};
  } else {
    std::string config_text = read_text_file(in / "config.json");
    if (config.tie_word_embeddings) {
      nlohmann::json j = nlohmann::json::parse(config_text);
      j["tie_word_embeddings"] = false;
      config_text = j.dump(2) + "\n";
    }
    write_file_atomically(work / "config.json", config_text, "config.json");
  }

  const int64_t group = options.keep ? 0 : quant_group_size(matrices);
  nlohmann::json meta = {
      {"model", pack_config.to_json()},
      {"tokenizer", {{"files", tokenizer}, {"note", "the files beside model.ferry"}}},
      {"quantization",
       {{"format", options.keep ? std::string("as the source") : options.format.name()},
        {"matrices", dtype_name(matrices)},
        {"group_size", group > 0 ? nlohmann::json(group) : nlohmann::json(nullptr)},
        {"embeddings", dtype_name(embeddings)},
        {"lm_head", dtype_name(lm_head)}}},
      {"source", {{"format", offload::format_name(ck.format())}, {"bytes", ck.total_bytes()}}}};

  ThreadPool& pool = default_thread_pool();
  offload::PackWriteOptions wo;
  wo.metadata = std::move(meta);
  wo.progress = options.progress;
  ConvertResult result;
  result.source_bytes = ck.total_bytes();
  result.pack_bytes = offload::write_pack(
      work / "model.ferry", blobs,
      [&](std::size_t b, std::size_t t, std::span<std::byte> dst) {
        convert_tensor(ck, *sources[b][t], blobs[b].tensors[t].dtype, dst, pool);
      },
      wo);
  install_pack_dir(work, dest);
  result.pack_file = out / "model.ferry";
  return result;
}

}  // namespace ferry::engine
