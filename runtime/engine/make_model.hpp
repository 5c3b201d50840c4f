// make_model: writes a random-weight checkpoint of any family ferry runs (GPT-J, Llama, Mistral,
// Qwen2, Qwen3) in Hugging Face's layout (config.json, the GPT-2 tokenizer files, weights as
// safetensors or a torch zip), streaming it to disk so any size (Llama-3-8B's 16 GB) is written
// with a few MiB of memory. The weights are a
// pure function of (seed, tensor name, element index), so a given seed always gives the same
// model whatever the format or shard size.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>

#include "offload/checkpoint_writer.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::engine {

struct MakeModelOptions {
  model::ModelConfig config;
  DType dtype = DType::f16;
  offload::WriteFormat format = offload::WriteFormat::safetensors;
  uint64_t seed = 0;
  uint64_t max_shard_bytes = 0;  // 0: one file
  offload::WriteProgress progress;
};

// Returns the bytes of weights written.
uint64_t make_model(const std::filesystem::path& dir, const MakeModelOptions& options);

// llama.cpp's file types make_gguf_model writes: every matrix in one type (f32, f16, q8_0,
// q4_0, q6_k) or a mix as llama-quantize makes it (q4_k_m, q5_k_m: Q4_K/Q5_K, with Q6_K for the
// output, and for attn_v and ffn_down in the layers llama.cpp's use_more_bits picks).
enum class GgufMix { f32, f16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k };
GgufMix parse_gguf_mix(std::string_view name);  // "q4_k_m", ...; throws naming the choices

// Writes the same random model as a GGUF file at `file` (architecture llama, qwen2, qwen3 or gptj,
// llama.cpp's tensor names and metadata, GPT-2's tokenizer padded to the vocabulary), its
// matrices quantized as `mix` says, so llama.cpp and ferry can run one file side by side. Returns
// the bytes of tensor data written.
uint64_t make_gguf_model(const std::filesystem::path& file, const MakeModelOptions& options,
                         GgufMix mix);

// The value make_model gives element `index` of tensor `name` (before rounding to dtype).
float synthetic_weight(const model::ModelConfig& config, uint64_t seed, const std::string& name,
                       uint64_t index);

}  // namespace ferry::engine
