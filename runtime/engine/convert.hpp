// convert_model: rewrites a checkpoint of any family ferry runs (any layout ferry reads:
// safetensors, sharded, torch zip; f32, f16 or bf16; another ferry pack; a GGUF file, whose
// tokenizer goes into tokenizer.gguf beside the pack) as a ferry pack
// directory — config.json, the tokenizer files, and model.ferry with one 4 KiB-aligned, checksummed
// blob per layer — with the matrices in f16, int8 or int4. It streams a tensor at a time (memory:
// one blob plus a few MiB), and the same input and options always give the same bytes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>

#include "offload/checkpoint_writer.hpp"
#include "runtime/model/weight_format.hpp"

namespace ferry::engine {

struct ConvertOptions {
  model::WeightFormat format;     // the blocks' matrices (f32, f16, bf16, int8, int4, or a ggml
                                  // block type: q8_0, q4_0, q4_k, q6_k, ...)
  // Every matrix keeps its source dtype (a GGUF file's Q4_K/Q6_K mix, say), bytes copied as read;
  // `format` is then only the pack's label.
  bool keep = false;
  bool quant_embeddings = false;  // wte in `format` too; otherwise 16-bit
  bool quant_lm_head = false;     // lm_head in `format` too; otherwise 16-bit
  // lm_head in a format of its own (int8 beside int4 matrices, say: about what a llama.cpp Q4_0
  // or Q4_K_M file keeps in Q6_K); overrides quant_lm_head.
  std::optional<model::WeightFormat> lm_head_format;
  offload::WriteProgress progress;
};

struct ConvertResult {
  std::filesystem::path pack_file;  // <out>/model.ferry
  uint64_t pack_bytes = 0;
  uint64_t source_bytes = 0;  // the input checkpoint's tensor bytes
};

// The blob names, in file order: "vectors" (every norm and bias), "embedding", "layer 0" …
// "layer N-1", "lm_head". Each layer blob holds the block's matrices in model_units' order, so a
// streamed layer is exactly one read of its blob. A tied lm_head is written as its own tensor and
// the pack's config.json says the two are untied.
ConvertResult convert_model(const std::filesystem::path& in, const std::filesystem::path& out,
                            const ConvertOptions& options);

}  // namespace ferry::engine
