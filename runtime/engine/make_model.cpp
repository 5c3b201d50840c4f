#include "runtime/engine/make_model.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kernels/cpu/quant.hpp"
#include "offload/detail/gguf.hpp"
#include "offload/file.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/model/layout.hpp"
#include "runtime/text/embedded_gpt2.hpp"

namespace ferry::engine {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

bool ends_with(const std::string& s, const char* suffix) {
  const std::size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

// Per-tensor distribution: centre and half-width of a uniform law. Scales follow GPT-J's
// initialisation (std 0.02), with q/k and fc_in larger so attention is not uniform and the
// activations of a random model do not vanish.
struct Law {
  float centre;
  float half_width;
};

Law law_for(const model::ModelConfig& c, const std::string& name) {
  const float sqrt3 = std::sqrt(3.0f);
  // Norm weights: GPT-J's ln_1 / ln_f, Llama's input / post-attention layernorms, final norm
  // and Qwen3's q/k norms.
  for (const char* norm : {"ln_1.weight", "ln_f.weight", "layernorm.weight", "model.norm.weight",
                           "q_norm.weight", "k_norm.weight"})
    if (ends_with(name, norm)) return {1.0f, 0.1f};
  if (ends_with(name, ".bias")) return {0.0f, 0.02f * sqrt3};
  if (ends_with(name, "q_proj.weight") || ends_with(name, "k_proj.weight"))
    return {0.0f, 1.5f / std::sqrt(static_cast<float>(c.n_embd)) * sqrt3};
  if (ends_with(name, "fc_in.weight") || ends_with(name, "gate_proj.weight") ||
      ends_with(name, "up_proj.weight"))
    return {0.0f, 1.0f / std::sqrt(static_cast<float>(c.n_embd)) * sqrt3};
  return {0.0f, 0.02f * sqrt3};
}

uint64_t tensor_key(uint64_t seed, const std::string& name) {
  return splitmix64(seed ^ fnv1a(name));
}

float draw(const Law& law, uint64_t key, uint64_t index) {
  const uint64_t r = splitmix64(key + index);
  const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f);  // [0, 1)
  return law.centre + law.half_width * (2.0f * u - 1.0f);
}

void write_text(const std::filesystem::path& p, std::string_view text) {
  write_file_atomically(p, text, p.filename().string());
}

constexpr int64_t kGpt2Tokens = 50257;

// GPT-2's vocab.json and merges.txt cut to its first `vocab` ids. Its ids 0–255 are the bytes
// and merge i makes id 256 + i, so the first vocab − 256 merges make exactly those ids.
std::pair<std::string, std::string> gpt2_tokenizer_prefix(int64_t vocab) {
  FERRY_EXPECT(vocab >= 256,
               "a vocabulary of {} tokens cannot hold the 256 byte tokens of GPT-2's tokenizer, "
               "which random-weight checkpoints carry; give --vocab 256 or more",
               vocab);
  const auto full = nlohmann::json::parse(text::embedded_gpt2_vocab_json());
  nlohmann::ordered_json cut = nlohmann::ordered_json::object();
  std::vector<std::pair<int64_t, std::string>> by_id;
  for (const auto& [tok, id] : full.items())
    if (id.get<int64_t>() < vocab) by_id.emplace_back(id.get<int64_t>(), tok);
  std::sort(by_id.begin(), by_id.end());
  for (const auto& [id, tok] : by_id) cut[tok] = id;
  std::string merges;
  const std::string_view m = text::embedded_gpt2_merges_txt();
  int64_t kept = 0;
  for (std::size_t pos = 0; pos < m.size() && kept < vocab - 256;) {
    const std::size_t end = std::min(m.find('\n', pos), m.size());
    const std::string_view line = m.substr(pos, end - pos);
    pos = end + 1;
    if (line.starts_with("#version")) {
      merges.append(line).push_back('\n');
      continue;
    }
    if (line.empty()) continue;
    merges.append(line).push_back('\n');
    ++kept;
  }
  return {cut.dump() + "\n", merges};
}

}  // namespace

float synthetic_weight(const model::ModelConfig& config, uint64_t seed, const std::string& name,
                       uint64_t index) {
  return draw(law_for(config, name), tensor_key(seed, name), index);
}

uint64_t make_model(const std::filesystem::path& dir, const MakeModelOptions& options) {
  model::ModelConfig config = options.config;
  config.validate("make-model options");
  FERRY_EXPECT(is_float_weight(options.dtype), "make-model writes f32, f16 or bf16, not {}",
               dtype_name(options.dtype));
  config.torch_dtype = options.dtype;
  const std::pair<std::string, std::string> tokenizer =
      config.vocab_size < kGpt2Tokens ? gpt2_tokenizer_prefix(config.vocab_size)
                                      : std::pair<std::string, std::string>{};
  std::filesystem::create_directories(dir);

  std::vector<offload::TensorSpec> specs;
  for (const auto& group : model::all_groups(config))
    for (const auto& w : group.weights)
      // A tied lm_head is the embedding table, written once.
      if (!(config.tie_word_embeddings && w.role == model::WeightRole::lm_head_w))
        specs.push_back({w.name, options.dtype, w.shape});

  ThreadPool& pool = default_thread_pool();
  const DType dtype = options.dtype;
  const uint64_t seed = options.seed;
  const offload::TensorFiller fill = [&](const offload::TensorSpec& spec, uint64_t first_byte,
                                         std::span<std::byte> dst) {
    const std::size_t esize = dtype_size(dtype);
    const uint64_t first = first_byte / esize;
    const auto count = static_cast<int64_t>(dst.size() / esize);
    const Law law = law_for(config, spec.name);
    const uint64_t key = tensor_key(seed, spec.name);
    pool.parallel_for(count, 1 << 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float v = draw(law, key, first + static_cast<uint64_t>(i));
        std::byte* out = dst.data() + static_cast<std::size_t>(i) * esize;
        if (dtype == DType::f32) {
          std::memcpy(out, &v, 4);
        } else {
          const uint16_t h = dtype == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
          std::memcpy(out, &h, 2);
        }
      }
    });
  };

  offload::WriteOptions wo;
  wo.format = options.format;
  wo.max_shard_bytes = options.max_shard_bytes;
  wo.metadata = {{"format", "pt"}};
  wo.progress = options.progress;
  offload::write_checkpoint(dir, specs, fill, wo);

  write_text(dir / "config.json", config.to_json().dump(2) + "\n");
  // GPT-2's tokenizer, for every family: random weights have no tokenizer of their own, and its
  // ids fit GPT-J's, Llama 3's and Qwen's vocabularies. A smaller vocabulary gets GPT-2's first
  // tokens and the merges that make them, so that no text encodes to an id beyond it.
  if (config.vocab_size >= kGpt2Tokens) {
    write_text(dir / "vocab.json", text::embedded_gpt2_vocab_json());
    write_text(dir / "merges.txt", text::embedded_gpt2_merges_txt());
  } else {
    write_text(dir / "vocab.json", tokenizer.first);
    write_text(dir / "merges.txt", tokenizer.second);
  }
  uint64_t total = 0;
  for (const auto& s : specs) total += s.nbytes();
  return total;
}

GgufMix parse_gguf_mix(std::string_view name) {
  static constexpr std::pair<std::string_view, GgufMix> kMixes[] = {
      {"f32", GgufMix::f32},   {"f16", GgufMix::f16},       {"q8_0", GgufMix::q8_0},
      {"q4_0", GgufMix::q4_0}, {"q4_k_m", GgufMix::q4_k_m}, {"q5_k_m", GgufMix::q5_k_m},
      {"q6_k", GgufMix::q6_k}};
  for (const auto& [n, m] : kMixes)
    if (n == name) return m;
  throw InvalidArgument(fmt::format(
      "'{}' is not a GGUF type ferry writes; use f32, f16, q8_0, q4_0, q4_k_m, q5_k_m or q6_k",
      name));
}

namespace {

// llama.cpp's use_more_bits (llama-quant.cpp): the first and last eighth of the layers and
// every third one between get the bigger type in the K mixes.
bool use_more_bits(int layer, int n_layer) {
  return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

DType gguf_dtype(GgufMix mix, const model::WeightSpec& w, int layer, int n_layer) {
  if (!w.is_matrix()) return DType::f32;
  switch (mix) {
    case GgufMix::f32:
      return DType::f32;
    case GgufMix::f16:
      return DType::f16;
    case GgufMix::q8_0:
      return DType::q8_0;
    case GgufMix::q6_k:
      return DType::q6_k;
    case GgufMix::q4_0:
      return w.role == model::WeightRole::lm_head_w ? DType::q6_k : DType::q4_0;
    case GgufMix::q4_k_m:
    case GgufMix::q5_k_m: {
      const DType base = mix == GgufMix::q4_k_m ? DType::q4_k : DType::q5_k;
      if (w.role == model::WeightRole::lm_head_w) return DType::q6_k;
      if ((w.role == model::WeightRole::v_proj || w.role == model::WeightRole::mlp_down) &&
          use_more_bits(layer, n_layer))
        return DType::q6_k;
      return base;
    }
  }
  return DType::f32;
}

uint32_t file_type_of(GgufMix mix) {
  switch (mix) {
    case GgufMix::f32:
      return 0;
    case GgufMix::f16:
      return 1;
    case GgufMix::q8_0:
      return 7;
    case GgufMix::q4_0:
      return 2;
    case GgufMix::q4_k_m:
      return 15;
    case GgufMix::q5_k_m:
      return 17;
    case GgufMix::q6_k:
      return 18;
  }
  return 0;
}

// GPT-2's tokens in id order, padded with unused tokens to vocab entries; a vocabulary smaller
// than GPT-2's gets its first vocab − 1 tokens (and the merges that make them) with
// <|endoftext|> last, so that no text encodes beyond it.
void add_gpt2_vocabulary(offload::detail::GgufWriter& w, int64_t vocab) {
  using offload::detail::GgufType;
  const auto v = nlohmann::json::parse(text::embedded_gpt2_vocab_json());
  std::vector<std::string> tokens(v.size());
  for (const auto& [tok, id] : v.items()) tokens.at(id.get<std::size_t>()) = tok;
  FERRY_EXPECT(vocab >= 257,
               "a vocabulary of {} tokens cannot hold the 256 byte tokens of GPT-2's tokenizer "
               "and its <|endoftext|>, which random-weight GGUF files carry; give --vocab 257 or "
               "more",
               vocab);
  int32_t eot = v.at("<|endoftext|>").get<int32_t>();
  if (vocab < static_cast<int64_t>(tokens.size())) {
    tokens.resize(static_cast<std::size_t>(vocab));
    tokens.back() = "<|endoftext|>";
    eot = static_cast<int32_t>(vocab - 1);
  }
  // Merge i makes token 256 + i: the ones whose token is kept (not the one <|endoftext|> took).
  const auto n_merges = static_cast<std::size_t>(std::min<int64_t>(
      static_cast<int64_t>(tokens.size()) - 256, static_cast<int64_t>(eot) - 256));
  std::vector<int32_t> types(tokens.size(), 1);
  types[static_cast<std::size_t>(eot)] = 3;  // control
  for (auto i = static_cast<int64_t>(tokens.size()); i < vocab; ++i) {
    tokens.push_back(fmt::format("[PAD{}]", i));
    types.push_back(5);  // unused
  }
  std::vector<std::string> merges;
  const std::string_view m = text::embedded_gpt2_merges_txt();
  for (std::size_t at = 0; at < m.size() && merges.size() < n_merges;) {
    std::size_t end = m.find('\n', at);
    if (end == std::string_view::npos) end = m.size();
    const std::string_view line = m.substr(at, end - at);
    if (!line.empty() && !line.starts_with("#version")) merges.emplace_back(line);
    at = end + 1;
  }
  w.set("tokenizer.ggml.model", GgufType::string, "gpt2");
  w.set("tokenizer.ggml.pre", GgufType::string, "gpt-2");
  w.set("tokenizer.ggml.tokens", GgufType::array, tokens, GgufType::string);
  w.set("tokenizer.ggml.token_type", GgufType::array, types, GgufType::i32);
  w.set("tokenizer.ggml.merges", GgufType::array, merges, GgufType::string);
  w.set("tokenizer.ggml.bos_token_id", GgufType::u32, eot);
  w.set("tokenizer.ggml.eos_token_id", GgufType::u32, eot);
  w.set("tokenizer.ggml.add_bos_token", GgufType::boolean, false);
}

}  // namespace

uint64_t make_gguf_model(const std::filesystem::path& file, const MakeModelOptions& options,
                         GgufMix mix) {
  using offload::detail::GgufType;
  model::ModelConfig config = options.config;
  config.validate("make-model options");
  const std::string arch = config.model_type == "mistral" ? "llama" : config.model_type;
  model::ModelConfig gguf = config;
  gguf.naming = model::TensorNaming::gguf;

  offload::detail::GgufWriter w;
  w.set("general.architecture", GgufType::string, arch);
  w.set("general.name", GgufType::string, fmt::format("ferry random {}", config.summary()));
  w.set("general.file_type", GgufType::u32, file_type_of(mix));
  w.set("general.quantization_version", GgufType::u32, 2);
  auto key = [&](const char* suffix) { return arch + "." + suffix; };
  w.set(key("context_length"), GgufType::u32, config.n_positions);
  w.set(key("embedding_length"), GgufType::u32, config.n_embd);
  w.set(key("block_count"), GgufType::u32, config.n_layer);
  w.set(key("feed_forward_length"), GgufType::u32, config.n_inner);
  w.set(key("attention.head_count"), GgufType::u32, config.n_head);
  w.set(key("attention.head_count_kv"), GgufType::u32, config.n_kv_head);
  w.set(key("attention.key_length"), GgufType::u32, config.head_dim());
  w.set(key("attention.value_length"), GgufType::u32, config.head_dim());
  w.set(key("rope.dimension_count"), GgufType::u32, config.rotary_dim);
  w.set(key("rope.freq_base"), GgufType::f32, config.rope_theta);
  w.set(key(config.is_llama_family() ? "attention.layer_norm_rms_epsilon"
                                     : "attention.layer_norm_epsilon"),
        GgufType::f32, config.layer_norm_epsilon);
  w.set(key("vocab_size"), GgufType::u32, config.vocab_size);
  add_gpt2_vocabulary(w, config.vocab_size);

  // Every tensor: its Hugging Face name (the random law and the values follow it, so the file
  // holds the weights make_model writes, quantized), its GGUF name and type.
  struct Out {
    std::string hf_name;
    std::string name;
    DType dtype;
    int64_t rows, cols;
    uint64_t offset;
  };
  std::vector<Out> outs;
  const auto hf_groups = model::all_groups(config);
  const auto gguf_groups = model::all_groups(gguf);
  for (std::size_t g = 0; g < hf_groups.size(); ++g) {
    for (std::size_t i = 0; i < hf_groups[g].weights.size(); ++i) {
      const auto& hw = hf_groups[g].weights[i];
      if (config.tie_word_embeddings && hw.role == model::WeightRole::lm_head_w) continue;
      const DType dt = gguf_dtype(mix, hw, hf_groups[g].layer, static_cast<int>(config.n_layer));
      const int64_t rows = hw.is_matrix() ? hw.shape[0] : 1;
      const int64_t cols = hw.is_matrix() ? hw.shape[1] : hw.shape[0];
      FERRY_EXPECT(!is_ggml_block(dt) || ggml_row_fits(dt, cols),
                   "{} has rows of {}, not whole {} blocks of {}; choose a mix with smaller "
                   "blocks (q8_0, q4_0) or sizes that are multiples of 256",
                   hw.name, cols, dtype_name(dt), ggml_block_elems(dt));
      std::vector<uint64_t> ne = {static_cast<uint64_t>(cols)};
      if (hw.is_matrix()) ne.push_back(static_cast<uint64_t>(rows));
      const uint64_t nbytes = static_cast<uint64_t>(rows) * packed_row_bytes(dt, cols);
      const std::string name = gguf_groups[g].weights[i].name;
      const uint64_t offset =
          w.add_tensor(name, *offload::detail::ggml_type_of(dt), std::move(ne), nbytes);
      outs.push_back({hw.name, name, dt, rows, cols, offset});
    }
  }

  const std::string header = w.header();
  const offload::UniqueFd fd = offload::open_write(file);
  offload::write_full(fd.get(), header.data(), header.size(), file);
  ThreadPool& pool = default_thread_pool();
  uint64_t written = 0;
  uint64_t at = 0;  // within the data section
  const std::vector<std::byte> zeros(w.alignment());
  const uint64_t total = w.data_bytes();
  for (const Out& o : outs) {
    const uint64_t row_bytes = packed_row_bytes(o.dtype, o.cols);
    const int64_t rows_per_chunk =
        std::max<int64_t>(1, (32 << 20) / static_cast<int64_t>(row_bytes));
    std::vector<std::byte> buf;
    offload::write_full(fd.get(), zeros.data(), o.offset - at, file);  // alignment padding
    at = o.offset;
    for (int64_t r0 = 0; r0 < o.rows; r0 += rows_per_chunk) {
      const int64_t n = std::min(rows_per_chunk, o.rows - r0);
      buf.assign(static_cast<std::size_t>(n) * row_bytes, std::byte{0});
      const Law law = law_for(config, o.hf_name);
      const uint64_t k = tensor_key(options.seed, o.hf_name);
      pool.parallel_for(n, 1, [&](int64_t b, int64_t e) {
        std::vector<float> row(static_cast<std::size_t>(o.cols));
        for (int64_t r = b; r < e; ++r) {
          const uint64_t first = static_cast<uint64_t>(r0 + r) * static_cast<uint64_t>(o.cols);
          for (int64_t j = 0; j < o.cols; ++j)
            row[static_cast<std::size_t>(j)] = draw(law, k, first + static_cast<uint64_t>(j));
          std::byte* dst = buf.data() + static_cast<std::size_t>(r) * row_bytes;
          if (o.dtype == DType::f32) {
            std::memcpy(dst, row.data(), row_bytes);
          } else if (o.dtype == DType::f16) {
            for (int64_t j = 0; j < o.cols; ++j) {
              const uint16_t h = f32_to_f16(row[static_cast<std::size_t>(j)]);
              std::memcpy(dst + 2 * j, &h, 2);
            }
          } else {
            kernels::cpu::quantize_row(row.data(), o.cols, o.dtype, dst, o.name.c_str());
          }
        }
      });
      offload::write_full(fd.get(), buf.data(), buf.size(), file);
      at += buf.size();
      written += buf.size();
      if (options.progress) options.progress(written, total);
    }
  }
  FERRY_EXPECT(at == total, "internal: wrote {} of {} GGUF data bytes", at, total);
  return written;
}

}  // namespace ferry::engine
