// make-model writes checkpoints the loader reads, in every format, with weights that depend on
// the seed alone.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>

#include "runtime/core/error.hpp"
#include "runtime/core/half.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/make_model.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/text/bpe_tokenizer.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

model::ModelConfig small_config() {
  model::ModelConfig c = model::preset_config("tiny");
  c.vocab_size = 300;
  c.n_embd = 32;
  c.n_head = 4;
  c.rotary_dim = 4;
  c.n_inner = 96;
  c.n_layer = 3;
  c.n_positions = 64;
  return c;
}

std::vector<float> logits_of(const std::filesystem::path& dir) {
  LoadedModel m = load_model(dir);
  Engine e(*m.weights, {}, default_thread_pool());
  const std::vector<int32_t> ids = {1, 5, 9, 299, 0};
  SeqTokens s{0, ids};
  return e.forward({&s, 1}, LogitsFor::all);
}

TEST(MakeModel, EveryFormatGivesTheSameModel) {
  test::TempDir a, b, c;
  MakeModelOptions o;
  o.config = small_config();
  o.dtype = DType::f16;
  o.seed = 9;
  make_model(a.path(), o);
  o.format = offload::WriteFormat::torch_zip;
  make_model(b.path(), o);
  o.format = offload::WriteFormat::safetensors;
  o.max_shard_bytes = 20000;
  make_model(c.path(), o);
  EXPECT_TRUE(std::filesystem::exists(c / "model.safetensors.index.json"));

  const auto la = logits_of(a.path());
  EXPECT_EQ(la, logits_of(b.path()));
  EXPECT_EQ(la, logits_of(c.path()));
  for (float v : la) ASSERT_TRUE(std::isfinite(v));

  // The tokenizer files come along, cut to the 300-token vocabulary: every text still encodes,
  // to ids inside it, and decodes back.
  const auto tok = text::BpeTokenizer::from_model_dir(a.path());
  const std::string text = "Hello world, Zürich \xf0\x9f\x98\x80 the end";
  const auto ids = tok.encode(text);
  for (int32_t id : ids) EXPECT_LT(id, 300);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.encode(" the"), (std::vector<int32_t>{262}));  // GPT-2's merge 6 is within
  // And the config says what was written.
  const auto cfg = model::ModelConfig::from_model_dir(a.path());
  EXPECT_EQ(cfg.torch_dtype, DType::f16);
  EXPECT_EQ(cfg.n_layer, 3);
}

TEST(MakeModel, AFullVocabularyGetsGpt2sTokenizerAndATinyOneIsRefused) {
  test::TempDir a, b;
  MakeModelOptions o;
  o.config = small_config();
  o.config.vocab_size = 50400;  // GPT-J's, padded beyond GPT-2's 50257
  make_model(a.path(), o);
  const auto tok = text::BpeTokenizer::from_model_dir(a.path());
  EXPECT_EQ(tok.encode("Hello world"), (std::vector<int32_t>{15496, 995}));
  o.config.vocab_size = 200;
  EXPECT_THAT(test::error_text<InvalidArgument>([&] { make_model(b.path() / "m", o); }),
              testing::AllOf(testing::HasSubstr("256 byte tokens"),
                             testing::HasSubstr("--vocab 256")));
  EXPECT_FALSE(std::filesystem::exists(b.path() / "m"));  // refused before writing anything
}

// A GGUF file's tokenizer is cut the same way, with <|endoftext|> as its last id (its eos).
TEST(MakeModel, AGgufFileOfASmallVocabularyCarriesATokenizerThatFits) {
  test::TempDir dir;
  MakeModelOptions o;
  o.config = model::preset_config("tiny-llama");
  o.config.vocab_size = 300;
  o.config.n_layer = 1;
  const auto file = dir / "m.gguf";
  make_gguf_model(file, o, GgufMix::f32);
  const text::Tokenizer tok = read_tokenizer(file);
  const std::string text = "Hello world, Zürich the end";
  const auto ids = tok.encode(text);
  for (int32_t id : ids) EXPECT_LT(id, 300);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(read_eos_ids(file, read_model_config(file), &tok), (std::vector<int32_t>{299}));
  o.config.vocab_size = 256;  // no room for <|endoftext|>
  EXPECT_THAT(test::error_text<InvalidArgument>([&] { make_gguf_model(dir / "n.gguf", o, GgufMix::f32); }),
              testing::HasSubstr("--vocab 257"));
}

TEST(MakeModel, WeightsDependOnTheSeedOnly) {
  test::TempDir a, b;
  MakeModelOptions o;
  o.config = small_config();
  o.dtype = DType::f32;
  o.seed = 3;
  make_model(a.path(), o);
  const auto ck = offload::Checkpoint::open(a.path());
  const auto& t = ck.at("transformer.h.1.mlp.fc_in.weight");
  std::vector<float> w(static_cast<std::size_t>(t.shape.numel()));
  ck.read(t, w.data());
  for (uint64_t i : {0ull, 17ull, 3071ull})
    EXPECT_EQ(w[i], synthetic_weight(o.config, 3, t.name, i));
  EXPECT_NE(w[0], synthetic_weight(o.config, 4, t.name, 0));

  o.seed = 4;
  make_model(b.path(), o);
  EXPECT_NE(logits_of(a.path()), logits_of(b.path()));
}

TEST(MakeModel, Bf16RoundsTheSameValues) {
  test::TempDir a;
  MakeModelOptions o;
  o.config = small_config();
  o.dtype = DType::bf16;
  o.seed = 11;
  o.format = offload::WriteFormat::torch_zip;
  make_model(a.path(), o);
  const auto ck = offload::Checkpoint::open(a.path());
  const auto& t = ck.at("lm_head.weight");
  EXPECT_EQ(t.dtype, DType::bf16);
  std::vector<uint16_t> w(static_cast<std::size_t>(t.shape.numel()));
  ck.read(t, w.data());
  EXPECT_EQ(w[123], f32_to_bf16(synthetic_weight(o.config, 11, t.name, 123)));
}

}  // namespace
}  // namespace ferry::engine
