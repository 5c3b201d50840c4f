// GGUF files against llama.cpp: the fixture's six files (F32, F16, Q8_0, Q4_0, Q4_K_M, Q6_K).
// ferry multiplies the exactly decoded weights in f32 and so is held to llama.cpp's all-f32 run
// on the same dequantized weights (last_logits_dequant_f32): within max(1e-4, 2 × llama.cpp's own
// distance from it), and the greedy tokens equal wherever the step's margin exceeds that bound.
// Resident, streamed from disk, and streamed in pieces.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "kernels/cpu/ggml_dot.hpp"
#include "kernels/cpu/ops.hpp"
#include "offload/checkpoint.hpp"
#include "runtime/engine/convert.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/make_model.hpp"
#include "runtime/engine/model_files.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

fs::path gguf_file(const std::string& type) {
  return test::data_dir() / "gguf" / "tiny-llama-bpe" / type / "model.gguf";
}

json gguf_expected(const std::string& type) {
  return json::parse(test::read_file(gguf_file(type).parent_path() / "expected.json"));
}

float max_abs_diff(std::span<const float> a, const std::vector<float>& b) {
  float m = 0;
  for (std::size_t i = 0; i < b.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Whether this process multiplies wdt with llama.cpp's q8-activation arithmetic (the default where
// AVX2 runs; FERRY_GGUF_PRODUCTS=exact turns it off — ctest runs this file both ways).
bool llama_cpp_arithmetic(DType wdt) {
  return kernels::cpu::ggml_dot::requested() && kernels::cpu::simd_level() != "portable" &&
         kernels::cpu::ggml_dot::supports(wdt);
}

void check_gguf(const std::string& type, LoadOptions options = {}) {
  const json expected = gguf_expected(type);
  const bool exact = type == "F32";
  LoadedModel m = load_model(gguf_file(type), std::move(options));
  // The fixture's matrices, by its folder's name (Q4_K_M mixes Q4_K with Q6_K, both alike here).
  const DType wdt = type == "Q8_0"     ? DType::q8_0
                    : type == "Q4_0"   ? DType::q4_0
                    : type == "Q4_K_M" ? DType::q4_k
                    : type == "Q6_K"   ? DType::q6_k
                    : type == "F16"    ? DType::f16
                                       : DType::f32;
  const bool fast = llama_cpp_arithmetic(wdt);
  ASSERT_EQ(m.config.naming, model::TensorNaming::gguf);
  const auto vocab = static_cast<std::size_t>(m.config.vocab_size);
  Engine engine(*m.weights, {}, default_thread_pool());
  int index = 0;
  for (const json& p : expected["prompts"]) {
    SCOPED_TRACE(type + " prompt " + std::to_string(index++));
    const auto ids = p["input_ids"].get<std::vector<int32_t>>();
    const auto llama_cpp = p["last_logits"].get<std::vector<float>>();
    const auto ref = exact ? llama_cpp : p["last_logits_dequant_f32"].get<std::vector<float>>();
    const float bound = std::max(1e-4f, exact ? 0.0f : 2 * max_abs_diff(llama_cpp, ref));
    engine.reset(0);
    SeqTokens s{0, ids};
    const auto& last = engine.forward({&s, 1}, LogitsFor::last);
    ASSERT_EQ(last.size(), vocab);
    EXPECT_LE(max_abs_diff(last, ref), bound);
    if (fast) {
      // llama.cpp's own arithmetic: its own logits, but for a rare rounding flip of an
      // activation (one on Q4_0's longest prompt moves a logit by 0.02).
      EXPECT_LT(max_abs_diff(last, llama_cpp), 0.025f);
    } else {
      // Without the permuted rows' rotary or with the wrong eps the logits move by 0.05 to 2:
      // the tolerance catches those even on the quantized files.
      EXPECT_LT(max_abs_diff(last, ref), 0.02f);
    }

    const auto want = p[exact ? "greedy_tokens" : "greedy_tokens_dequant_f32"]
                          .get<std::vector<int32_t>>();
    const auto margins = p[exact ? "greedy_step_margins" : "greedy_step_margins_dequant_f32"]
                             .get<std::vector<float>>();
    GenerateOptions go;
    go.max_new_tokens = static_cast<int64_t>(want.size());
    const auto got = generate(engine, 0, ids, go);
    ASSERT_EQ(got.size(), want.size());
    // The rule compares tokens while the margin exceeds `bound`; ferry's logits are
    // within a few 1e-6 of the reference, so it is held to the stricter 1e-4 (every step of these
    // fixtures but near ties, where the paths may part legitimately).
    // With llama.cpp's arithmetic the issue's own rule applies (margins beyond `bound`), and the
    // tokens are llama.cpp's greedy ones.
    const float token_bound = fast ? bound : std::min(bound, 1e-4f);
    std::size_t compared = 0;
    for (std::size_t i = 0; i < want.size(); ++i) {
      if (margins[i] <= token_bound) break;
      EXPECT_EQ(got[i], want[i]) << "greedy step " << i;
      ++compared;
    }
    if (!fast) {
      EXPECT_GE(compared, 10u);
    }
  }
}

class GgufParity : public ::testing::TestWithParam<std::string> {};

TEST_P(GgufParity, MatchesLlamaCppOnTheDequantizedWeights) { check_gguf(GetParam()); }

TEST_P(GgufParity, StreamedFromDiskMatches) {
  LoadOptions o;
  o.placement = Placement::all(read_model_config(gguf_file(GetParam())), offload::Tier::disk);
  check_gguf(GetParam(), std::move(o));
}

TEST_P(GgufParity, StreamedInPiecesMatches) {
  LoadOptions o;
  o.placement = Placement::all(read_model_config(gguf_file(GetParam())), offload::Tier::disk, 3);
  o.placement->chunk_bytes = 48 << 10;
  check_gguf(GetParam(), std::move(o));
}

INSTANTIATE_TEST_SUITE_P(Files, GgufParity,
                         ::testing::Values("F32", "F16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"));

TEST(GgufModel, DescribesTheFixture) {
  const auto c = read_model_config(gguf_file("Q4_K_M"));
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.n_embd, 256);
  EXPECT_EQ(c.n_layer, 2);
  EXPECT_EQ(c.n_head, 4);
  EXPECT_EQ(c.n_kv_head, 2);
  EXPECT_EQ(c.n_inner, 768);
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_style, model::RopeStyle::interleaved);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FLOAT_EQ(c.layer_norm_epsilon, 1e-5f);
  EXPECT_EQ(c.bos_token_id, 1021);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int32_t>{1022}));
  // The stop ids a run uses: the file's eos, and <|eot_id|> as llama.cpp finds it by its text.
  EXPECT_EQ(read_eos_ids(gguf_file("Q4_K_M"), c), (std::vector<int32_t>{1022, 1023}));
  const text::Tokenizer tok = read_tokenizer(gguf_file("Q4_K_M"));
  EXPECT_EQ(tok.vocab_size(), 1024);
  // The same from the tokenizer a caller already holds.
  EXPECT_EQ(read_eos_ids(gguf_file("Q4_K_M"), c, &tok), (std::vector<int32_t>{1022, 1023}));
}

std::vector<float> last_logits(const fs::path& model, const std::vector<int32_t>& ids) {
  LoadedModel m = load_model(model);
  Engine engine(*m.weights, {}, default_thread_pool());
  SeqTokens s{0, ids};
  const auto& last = engine.forward({&s, 1}, LogitsFor::last);
  return {last.begin(), last.end()};
}

// make-model --gguf writes the weights make_model writes: as f32 a Qwen2 file (its rows stored as
// Hugging Face stores them) gives the Hugging Face directory's logits exactly, and the quantized
// mixes type their tensors as llama-quantize does.
TEST(GgufModel, MakeModelWritesTheSameWeights) {
  test::TempDir dir;
  MakeModelOptions o;
  o.config = model::preset_config("qwen2.5-7b");
  o.config.n_layer = 2;
  o.config.n_embd = 64;
  o.config.n_head = 4;
  o.config.n_kv_head = 2;
  o.config.head_dim_ = 0;
  o.config.rotary_dim = 16;
  o.config.n_inner = 96;
  o.config.vocab_size = 50304;
  o.dtype = DType::f32;
  o.seed = 7;
  make_model(dir / "hf", o);
  make_gguf_model(dir / "m.gguf", o, GgufMix::f32);
  const std::vector<int32_t> ids = {15496, 995, 11, 314};
  EXPECT_EQ(last_logits(dir / "hf", ids), last_logits(dir / "m.gguf", ids));

  // GPT-J as a `gptj` file: partial interleaved rotary, LayerNorm and MLP biases, its own head.
  MakeModelOptions j = o;
  j.config = model::preset_config("tiny");
  make_model(dir / "gptj", j);
  make_gguf_model(dir / "gptj.gguf", j, GgufMix::f32);
  EXPECT_EQ(read_model_config(dir / "gptj.gguf").model_type, "gptj");
  EXPECT_EQ(last_logits(dir / "gptj", ids), last_logits(dir / "gptj.gguf", ids));

  o.config.n_embd = 256;
  o.config.rotary_dim = 64;
  o.config.n_inner = 512;
  o.config.n_layer = 8;
  make_gguf_model(dir / "q4.gguf", o, GgufMix::q4_k_m);
  const auto ck = offload::Checkpoint::open(dir / "q4.gguf");
  EXPECT_EQ(ck.at("token_embd.weight").dtype, DType::q4_k);
  EXPECT_EQ(ck.at("output.weight").dtype, DType::q6_k);
  EXPECT_EQ(ck.at("blk.0.attn_v.weight").dtype, DType::q6_k);  // the first eighth
  EXPECT_EQ(ck.at("blk.1.attn_v.weight").dtype, DType::q4_k);
  EXPECT_EQ(ck.at("blk.3.ffn_down.weight").dtype, DType::q6_k);  // (3 - 1) % 3 == 2
  EXPECT_EQ(ck.at("blk.7.ffn_down.weight").dtype, DType::q6_k);  // the last eighth
  EXPECT_EQ(ck.at("blk.2.attn_q.weight").dtype, DType::q4_k);
  EXPECT_EQ(ck.at("blk.2.attn_q.bias").dtype, DType::f32);
  const auto logits = last_logits(dir / "q4.gguf", ids);
  EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
}

// ferry convert takes a GGUF file: kept as it is (the blocks copied, so the logits are the file's
// bit for bit) or re-packed (int8, or another block type), with the file's tokenizer beside the
// pack as tokenizer.gguf.
TEST(GgufModel, ConvertsToPacks) {
  test::TempDir dir;
  const fs::path src = gguf_file("Q4_K_M");
  ConvertOptions keep;
  keep.keep = true;
  convert_model(src, dir / "keep", keep);
  const auto ck = offload::Checkpoint::open(dir / "keep");
  EXPECT_EQ(ck.at("blk.1.ffn_down.weight").dtype, DType::q6_k);
  EXPECT_EQ(ck.at("blk.0.attn_q.weight").dtype, DType::q4_k);
  const std::vector<int32_t> ids = {1021, 0, 1023, 5, 853, 988, 711};
  EXPECT_EQ(last_logits(dir / "keep", ids), last_logits(src, ids));
  EXPECT_EQ(read_tokenizer(dir / "keep").encode("The licence", true),
            read_tokenizer(src).encode("The licence", true));
  EXPECT_EQ(read_eos_ids(dir / "keep", read_model_config(dir / "keep")),
            (std::vector<int32_t>{1022, 1023}));

  for (const char* quant : {"int8", "q8_0"}) {
    SCOPED_TRACE(quant);
    ConvertOptions o;
    o.format = model::WeightFormat::parse(quant, 64);
    convert_model(src, dir / quant, o);
    const auto a = last_logits(dir / quant, ids);
    const auto b = last_logits(src, ids);
    // 8-bit rounding of the 4- and 6-bit weights (int8: one scale per row) moves logits of ~2
    // by a few hundredths; with llama.cpp's arithmetic the activations' 8-bit rounding (q8_K
    // blocks of 256 on one side, q8_0 blocks of 32 on the other) adds about as much.
    EXPECT_LT(max_abs_diff(a, b), llama_cpp_arithmetic(DType::q8_0) ? 0.15f : 0.1f);
  }
}

}  // namespace
}  // namespace ferry::engine
