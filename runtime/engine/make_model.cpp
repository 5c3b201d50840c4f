#include "runtime/engine/make_model.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"
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
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.close();
  if (!out) throw IoError(errno, fmt::format("cannot write {}", p.string()));
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
  // ids fit GPT-J's, Llama 3's and Qwen's vocabularies (a smaller one refuses ids beyond it).
  write_text(dir / "vocab.json", text::embedded_gpt2_vocab_json());
  write_text(dir / "merges.txt", text::embedded_gpt2_merges_txt());
  uint64_t total = 0;
  for (const auto& s : specs) total += s.nbytes();
  return total;
}

}  // namespace ferry::engine
