// Ferry packs end to end, the format's side: a pack streamed equals it resident, a layer is one
// aligned read, conversion is deterministic, and a damaged pack is caught with an error naming the
// layer. (How far packs move the logits: test_quant_accuracy.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>

#include "offload/checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/runtime/engine/quant_pack_util.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

namespace fs = std::filesystem;
using namespace quant_test;

// Streamed through staging slots, a pack gives the logits it gives resident, bit for bit.
TEST(QuantPack, StreamedEqualsResident) {
  const fs::path src = test::data_dir() / "gptj/sharded-f32";
  const auto prompts = fixture_prompts("sharded-f32");
  for (const std::string q : {"f16", "int8", "int4"}) {
    test::TempDir dir;
    convert(src, dir.path(), q);
    EXPECT_EQ(all_logits(dir.path(), prompts, offload::Tier::host),
              all_logits(dir.path(), prompts, offload::Tier::disk))
        << q;
  }
}

// A pack's header holds the config it was converted with; an edited config.json beside it once
// overrode the header silently. Now the disagreement is refused, naming the key.
TEST(QuantPack, AnEditedConfigBesideThePackIsRefused) {
  test::TempDir dir;
  convert(test::data_dir() / "gptj/sharded-f32", dir.path(), "f16");
  nlohmann::json cfg = nlohmann::json::parse(test::read_file(dir / "config.json"));
  cfg["layer_norm_epsilon"] = 0.001;
  test::write_file(dir / "config.json", cfg.dump());
  const std::string msg = test::error_text<FormatError>([&] { load_model(dir.path()); });
  EXPECT_NE(msg.find("layer_norm_epsilon"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the pack's header says"), std::string::npos) << msg;
}

// A streamed layer is one read of exactly its blob.
TEST(QuantPack, OneLayerIsOneAlignedRead) {
  test::TempDir dir;
  convert(test::data_dir() / "gptj/tiny-f32", dir.path(), "int4");
  const auto config = model::ModelConfig::from_model_dir(dir.path());
  const auto ck = offload::Checkpoint::open(dir.path());
  EXPECT_EQ(ck.format(), offload::CheckpointFormat::ferry_pack);
  const auto units = model_units(config, Placement::all(config, offload::Tier::disk));
  for (const auto& u : units) {
    const offload::UnitLayout l = offload::plan_unit_reads(ck, u.tensors);
    ASSERT_EQ(l.ranges.size(), 1u) << u.name;
    EXPECT_EQ(l.ranges[0].offset_bytes % 4096, 0u) << u.name;
  }
  EXPECT_EQ(offload::LayerStreamer::unit_bytes(ck, units)[0],
            model::packed_block_bytes(config, model::WeightFormat::parse("int4")));
}

TEST(QuantPack, ConversionIsDeterministic) {
  test::TempDir a, b;
  const fs::path src = test::data_dir() / "gptj/tiny-f16-bin-sharded";
  convert(src, a.path(), "int4", 128, true);
  convert(src, b.path(), "int4", 128, true);
  const std::string pa = test::read_file(a / "model.ferry");
  EXPECT_EQ(pa, test::read_file(b / "model.ferry"));
  EXPECT_EQ(test::read_file(a / "config.json"), test::read_file(src / "config.json"));
  // A pack converts again (to f16 here), through the same reader.
  test::TempDir c;
  convert(a.path(), c.path(), "f16");
  EXPECT_NO_THROW(all_logits(c.path(), {{1, 2, 3}}));
}

// The message of what f throws (a test failure when it throws nothing).
template <class F>
std::string error_of(F&& f) {
  return test::error_text<Error>(std::forward<F>(f));
}

// Flips one bit in the middle of a tensor's bytes.
void flip_bit(const fs::path& pack, const std::string& tensor) {
  const auto ck = offload::Checkpoint::open(pack);
  const offload::TensorEntry& t = ck.at(tensor);
  std::fstream f(pack / "model.ferry", std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(t.offset_bytes + t.nbytes / 2);
  f.seekg(at);
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(at);
  f.write(&c, 1);
}

TEST(QuantPack, AFlippedBitNamesTheLayerWhenLoadedOrStreamed) {
  const fs::path src = test::data_dir() / "gptj/tiny-f32";
  test::TempDir dir;
  convert(src, dir.path(), "int8");
  flip_bit(dir.path(), "transformer.h.1.mlp.fc_in.weight");
  for (auto tier : {offload::Tier::host, offload::Tier::disk}) {
    const std::string msg = error_of([&] { all_logits(dir.path(), {{1, 2, 3}}, tier); });
    EXPECT_NE(msg.find("layer 1 is corrupt"), std::string::npos) << msg;
    EXPECT_NE(msg.find("transformer.h.1.mlp.fc_in.weight"), std::string::npos) << msg;
  }
  // Verification off trusts the bytes.
  const auto off = offload::Checkpoint::open(dir.path(), offload::VerifyMode::off);
  std::vector<std::byte> bytes(off.at("transformer.h.1.mlp.fc_in.weight").nbytes);
  EXPECT_NO_THROW(off.read(off.at("transformer.h.1.mlp.fc_in.weight"), bytes.data()));
  // ferry verify finds it too.
  const auto ck2 = offload::Checkpoint::open(dir.path());
  const std::string msg = error_of([&] { ck2.verify_all(); });
  EXPECT_NE(msg.find("layer 1 is corrupt"), std::string::npos) << msg;

  // A damaged embedding row is caught on the row's read.
  test::TempDir dir2;
  convert(src, dir2.path(), "int8");
  flip_bit(dir2.path(), "transformer.wte.weight");
  const std::string m2 = error_of([&] { all_logits(dir2.path(), {{1, 500, 999}}); });
  EXPECT_NE(m2.find("embedding is corrupt"), std::string::npos) << m2;
}

// Writes value over element i of tensor name in a copied fixture's model.safetensors (f32).
void poke_f32(const fs::path& dir, const std::string& name, uint64_t i, float value) {
  const auto ck = offload::Checkpoint::open(dir);
  const offload::TensorEntry& t = ck.at(name);
  ASSERT_EQ(t.dtype, DType::f32);
  std::fstream f(ck.files()[t.file_index].path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(t.offset_bytes + i * 4));
  f.write(reinterpret_cast<const char*>(&value), 4);
}

fs::path copy_tiny(const test::TempDir& dir) {
  const fs::path src = test::data_dir() / "gptj/tiny-f32";
  fs::copy_file(src / "config.json", dir / "config.json");
  fs::copy_file(src / "model.safetensors", dir / "model.safetensors");
  return dir.path();
}

// Seen: NaN weights gave `run` tokens sampled from NaN logits (exit 0), `logits` printed nan
// (invalid JSON), `perplexity` "nan ± nan", and `convert --quant f16` carried them into a pack.
// Now a NaN or an infinity is an error naming the layer and the tensor, resident or streamed,
// and convert refuses it for every format.
TEST(QuantPack, NonFiniteWeightsAreErrorsNamingTheLayerAndTensor) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  test::TempDir block;
  poke_f32(copy_tiny(block), "transformer.h.1.mlp.fc_in.weight", 5, nan);
  for (auto tier : {offload::Tier::host, offload::Tier::disk}) {
    const std::string msg = test::error_text<FormatError>(
        [&] { all_logits(block.path(), {{1, 2, 3}}, tier); });
    EXPECT_NE(msg.find("layer 1 computed a NaN"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'transformer.h.1.mlp.fc_in.weight' holds nan at element 5"),
              std::string::npos)
        << msg;
  }
  for (const std::string q : {"f16", "bf16", "f32", "int8", "int4"}) {
    test::TempDir out;
    const std::string msg = error_of([&] { convert(block.path(), out.path(), q); });
    EXPECT_NE(msg.find("transformer.h.1.mlp.fc_in.weight"), std::string::npos) << q << msg;
  }
  test::TempDir head;
  poke_f32(copy_tiny(head), "transformer.ln_f.weight", 3, inf);
  std::string msg = test::error_text<FormatError>([&] { all_logits(head.path(), {{1, 2}}); });
  EXPECT_NE(msg.find("the head"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'transformer.ln_f.weight' holds inf at element 3"), std::string::npos)
      << msg;
  test::TempDir embedding;
  poke_f32(copy_tiny(embedding), "transformer.wte.weight", 2 * 64 + 1, -inf);  // token 2
  msg = test::error_text<FormatError>([&] { all_logits(embedding.path(), {{1, 2}}); });
  EXPECT_NE(msg.find("embedding"), std::string::npos) << msg;
  EXPECT_NO_THROW(all_logits(embedding.path(), {{1, 3}}));  // the damaged row is not read
}

TEST(QuantPack, ConvertRefusesBadRequests) {
  const fs::path src = test::data_dir() / "gptj/tiny-f32";
  test::TempDir dir;
  std::string msg = error_of([&] { convert(src, dir.path(), "int3"); });
  EXPECT_NE(msg.find("--quant int3"), std::string::npos) << msg;
  msg = error_of([&] { convert(src, dir.path(), "int4", 32); });
  EXPECT_NE(msg.find("--group 32"), std::string::npos) << msg;
  msg = error_of([&] { convert("/nonexistent/model", dir.path(), "int8"); });
  EXPECT_NE(msg.find("/nonexistent/model"), std::string::npos) << msg;
  msg = error_of([&] { convert(src, src, "int8"); });
  EXPECT_NE(msg.find("input directory"), std::string::npos) << msg;
}

// lm_head in a format of its own: int8 beside int4 matrices (about what llama.cpp's Q4_0 files
// keep in Q6_K), recorded in the pack's header, and its logits between the all-int4 pack's and the
// int4 pack with a 16-bit lm_head's distance from the f32 source.
TEST(QuantPack, LmHeadInAFormatOfItsOwn) {
  const fs::path src = test::data_dir() / "gptj/sharded-f32";
  const auto prompts = fixture_prompts("sharded-f32");
  test::TempDir mixed;
  ConvertOptions o;
  o.format = model::WeightFormat::parse("int4");
  o.lm_head_format = model::WeightFormat::parse("int8");
  convert_model(src, mixed.path(), o);
  const auto ck = offload::Checkpoint::open(mixed.path());
  EXPECT_EQ(ck.at("lm_head.weight").dtype, DType::q8);
  EXPECT_EQ(ck.at("transformer.h.0.mlp.fc_in.weight").dtype, DType::q4_g64);
  EXPECT_EQ(ck.at("transformer.wte.weight").dtype, DType::f16);

  test::TempDir all4;
  test::TempDir head16;
  convert(src, all4.path(), "int4", 64, true);
  convert(src, head16.path(), "int4");
  const std::vector<float> want = all_logits(src, prompts);
  const auto distance = [&](const fs::path& dir) {
    const std::vector<float> got = all_logits(dir, prompts);
    double d = 0;
    for (std::size_t i = 0; i < got.size(); ++i) d += std::fabs(got[i] - want[i]);
    return d;
  };
  const double d_mixed = distance(mixed.path());
  EXPECT_LT(d_mixed, distance(all4.path()));
  EXPECT_GT(d_mixed, 0.0);
  EXPECT_LT(d_mixed, 1.5 * distance(head16.path()));

  // keep copies every matrix as stored: a head format beside it is refused, naming both.
  test::TempDir kept;
  ConvertOptions k;
  k.keep = true;
  k.lm_head_format = model::WeightFormat::parse("int8");
  const std::string msg = error_of([&] { convert_model(src, kept.path(), k); });
  EXPECT_NE(msg.find("--lm-head int8"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--quant keep"), std::string::npos) << msg;
}

}  // namespace
}  // namespace ferry::engine
