// The GGUF reader: the fixture files read exactly as llama.cpp wrote them (names, types, shapes,
// offsets, metadata), split sets, and every kind of bad header refused by name.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "offload/checkpoint.hpp"
#include "offload/detail/gguf.hpp"
#include "runtime/core/error.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using detail::GgufType;
using detail::GgufWriter;
using json = nlohmann::json;
using test::error_text;
using ::testing::HasSubstr;

const char* kTypes[] = {"F32", "F16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"};

fs::path fixture(const std::string& type) {
  return test::data_dir() / "gguf" / "tiny-llama-bpe" / type / "model.gguf";
}

json expected(const std::string& type) {
  return json::parse(test::read_file(fixture(type).parent_path() / "expected.json"));
}

TEST(Gguf, FixturesReadAsLlamaCppWroteThem) {
  for (const char* type : kTypes) {
    SCOPED_TRACE(type);
    const json want = expected(type)["file"];
    const Checkpoint ck = Checkpoint::open(fixture(type));
    EXPECT_EQ(ck.format(), CheckpointFormat::gguf);
    const detail::GgufHeader* h = ck.gguf_header();
    ASSERT_NE(h, nullptr);
    EXPECT_EQ(h->version, want["gguf_version"].get<uint32_t>());
    EXPECT_EQ(h->alignment, want["alignment"].get<uint64_t>());
    EXPECT_EQ(h->data_offset, want["data_section_offset"].get<uint64_t>());
    EXPECT_EQ(h->metadata["general.architecture"], "llama");
    EXPECT_EQ(h->metadata["llama.block_count"], 2);
    EXPECT_EQ(h->metadata["llama.attention.head_count_kv"], 2);
    EXPECT_EQ(h->metadata["general.file_type"], want["general.file_type"]);
    EXPECT_EQ(h->metadata_types.at("tokenizer.ggml.tokens"), "array[string]");
    EXPECT_EQ(h->metadata["tokenizer.ggml.tokens"].size(), 1024u);
    EXPECT_EQ(h->metadata["tokenizer.ggml.merges"].size(), 764u);
    ASSERT_EQ(h->tensors.size(), want["tensors"].size());
    for (std::size_t i = 0; i < h->tensors.size(); ++i) {
      const auto& t = h->tensors[i];
      const json& w = want["tensors"][i];
      EXPECT_EQ(t.name, w["name"]);
      EXPECT_EQ(detail::ggml_type_name(t.ggml_type), w["type"]);
      EXPECT_EQ(json(t.ne), w["ne"]);
      EXPECT_EQ(t.nbytes, w["bytes"].get<uint64_t>());
      EXPECT_EQ(t.offset_bytes - h->data_offset, w["offset"].get<uint64_t>());
      // Found by name, with ferry's row-major shape.
      const TensorEntry& e = ck.at(t.name);
      EXPECT_EQ(e.nbytes, t.nbytes);
      EXPECT_EQ(e.shape[0], static_cast<int64_t>(t.ne.size() == 2 ? t.ne[1] : t.ne[0]));
    }
  }
}

TEST(Gguf, ReadsTensorBytesWhereTheHeaderSays) {
  const Checkpoint ck = Checkpoint::open(fixture("F32"));
  const TensorEntry& norm = ck.at("blk.0.attn_norm.weight");
  ASSERT_EQ(norm.dtype, DType::f32);
  std::vector<float> w(256);
  ck.read(norm, w.data());
  // The fixture's norm weights are uniform in [0.9, 1.1].
  for (float v : w) {
    EXPECT_GE(v, 0.9f);
    EXPECT_LE(v, 1.1f);
  }
}

// A small valid file: a few metadata values of every type and two tensors.
struct Built {
  GgufWriter w;
  std::string bytes() const {
    std::string out = w.header();
    out.resize(out.size() + w.data_bytes(), '\x01');
    return out;
  }
};

Built small_file() {
  Built b;
  b.w.set("general.architecture", GgufType::string, "llama");
  b.w.set("an.u8", GgufType::u8, 7);
  b.w.set("an.i64", GgufType::i64, -5);
  b.w.set("an.f64", GgufType::f64, 0.25);
  b.w.set("a.bool", GgufType::boolean, true);
  b.w.set("a.list", GgufType::array, json::array({1, 2, 3}), GgufType::i32);
  b.w.set("nested", GgufType::array, json::array({json::array({"a", "b"}), json::array({"c"})}),
          GgufType::array);
  b.w.add_tensor("m", 8, {64, 3}, 3 * 2 * 34);  // Q8_0 [3, 64]
  b.w.add_tensor("v", 0, {5}, 20);
  return b;
}

detail::GgufHeader parse(const std::string& bytes) {
  return detail::read_gguf_header(bytes.size(), detail::buffer_read_at(bytes, "t.gguf"),
                                  "t.gguf");
}

TEST(Gguf, ReadsEveryValueTypeAndNestedArrays) {
  const detail::GgufHeader h = parse(small_file().bytes());
  EXPECT_EQ(h.metadata["an.u8"], 7);
  EXPECT_EQ(h.metadata["an.i64"], -5);
  EXPECT_EQ(h.metadata["an.f64"], 0.25);
  EXPECT_EQ(h.metadata["a.bool"], true);
  EXPECT_EQ(h.metadata["a.list"], json::array({1, 2, 3}));
  EXPECT_EQ(h.metadata_types.at("a.list"), "array[i32]");
  EXPECT_EQ(h.metadata["nested"][0][1], "b");
  EXPECT_EQ(h.metadata_types.at("nested"), "array[array[string]]");
  ASSERT_EQ(h.tensors.size(), 2u);
  const auto tensors = detail::gguf_file_tensors(h, "t.gguf");
  EXPECT_EQ(tensors.tensors[0].dtype, DType::q8_0);
  EXPECT_EQ(tensors.tensors[0].shape, (Shape{3, 64}));
}

TEST(Gguf, HonoursGeneralAlignment) {
  Built b;
  b.w = GgufWriter(64);
  b.w.add_tensor("a", 0, {3}, 12);
  b.w.add_tensor("b", 0, {3}, 12);
  const detail::GgufHeader h = parse(b.bytes());
  EXPECT_EQ(h.alignment, 64u);
  EXPECT_EQ(h.data_offset % 64, 0u);
  EXPECT_EQ(h.tensors[1].offset_bytes - h.tensors[0].offset_bytes, 64u);
}

// Byte offset of the first occurrence of `what` in bytes.
std::size_t at(const std::string& bytes, std::string_view what) {
  const auto p = bytes.find(what);
  EXPECT_NE(p, std::string::npos) << what;
  return p;
}

template <class T>
void poke(std::string& bytes, std::size_t offset, T v) {
  std::memcpy(bytes.data() + offset, &v, sizeof v);
}

TEST(Gguf, RefusesBadHeadersByName) {
  const std::string good = small_file().bytes();
  auto fails = [](std::string bytes) {
    return error_text<FormatError>([&] { parse(bytes); });
  };
  {
    std::string b = good;
    b[0] = 'X';
    EXPECT_THAT(fails(b), HasSubstr("not a GGUF file"));
  }
  {
    std::string b = good;
    poke<uint32_t>(b, 4, __builtin_bswap32(3u));
    EXPECT_THAT(fails(b), HasSubstr("big-endian"));
  }
  {
    std::string b = good;
    poke<uint32_t>(b, 4, 1u);
    EXPECT_THAT(fails(b), HasSubstr("version 1"));
  }
  {
    std::string b = good;
    poke<uint32_t>(b, 4, 9u);
    EXPECT_THAT(fails(b), HasSubstr("version 9"));
  }
  for (std::size_t cut : {std::size_t{3}, std::size_t{20}, std::size_t{60}, good.size() / 2,
                          good.size() - 1}) {
    SCOPED_TRACE(cut);
    const std::string msg = fails(good.substr(0, cut));
    EXPECT_TRUE(msg.find("truncated") != std::string::npos ||
                msg.find("not a GGUF") != std::string::npos)
        << msg;
  }
  {
    // A string claiming more bytes than the file has.
    std::string b = good;
    poke<uint64_t>(b, at(b, "general.architecture") - 8, uint64_t{1} << 50);
    EXPECT_THAT(fails(b), HasSubstr("only"));
  }
  {
    // An array claiming 2^40 elements.
    std::string b = good;
    poke<uint64_t>(b, at(b, "a.list") + 6 + 4 + 4, uint64_t{1} << 40);
    EXPECT_THAT(fails(b), HasSubstr("'a.list' claims"));
  }
  {
    std::string b = good;
    poke<uint32_t>(b, at(b, "an.u8") + 5, 77u);
    EXPECT_THAT(fails(b), HasSubstr("'an.u8' has unknown value type 77"));
  }
  {
    // Tensor m's type: after its name (1 byte), rank (4), ne (16).
    std::string b = good;
    const std::size_t m = at(b, std::string("\x01\0\0\0\0\0\0\0m", 9)) + 9;
    poke<uint32_t>(b, m + 4 + 16, 11u);  // Q3_K
    EXPECT_THAT(fails(b), HasSubstr("tensor 'm' is stored as Q3_K"));
    poke<uint32_t>(b, m + 4 + 16, 99u);
    EXPECT_THAT(fails(b), HasSubstr("tensor 'm' is stored as type 99"));
    b = good;
    poke<uint64_t>(b, m + 4, 48u);  // a row of 48: not whole Q8_0 blocks
    EXPECT_THAT(fails(b), HasSubstr("not a whole number"));
    b = good;
    poke<uint64_t>(b, m + 4 + 16 + 4, 3u);  // unaligned offset
    EXPECT_THAT(fails(b), HasSubstr("not a multiple of the file's alignment"));
    b = good;
    poke<uint64_t>(b, m + 4 + 16 + 4, uint64_t{1} << 40);  // beyond the file
    EXPECT_THAT(fails(b), HasSubstr("tensor 'm'"));
    EXPECT_THAT(fails(b), HasSubstr("truncated or corrupt"));
    b = good;
    poke<uint32_t>(b, m, 7u);  // rank 7
    EXPECT_THAT(fails(b), HasSubstr("7 dimensions"));
  }
  {
    // Tensor v moved onto m's bytes.
    Built o;
    o.w.add_tensor("m", 0, {64}, 256);
    o.w.add_tensor("v", 0, {64}, 256);
    std::string b = o.bytes();
    poke<uint64_t>(b, at(b, std::string("\x01\0\0\0\0\0\0\0v", 9)) + 9 + 4 + 8 + 4, 32u);
    EXPECT_THAT(fails(b), HasSubstr("overlap"));
  }
  {
    Built d;
    d.w.add_tensor("x", 0, {4}, 16);
    d.w.add_tensor("x", 0, {4}, 16);
    EXPECT_THAT(fails(d.bytes()), HasSubstr("tensor 'x' appears twice"));
  }
  {
    std::string dup = good;
    const std::size_t k2 = at(dup, "an.f64");
    dup.replace(k2, 6, "an.i64");
    EXPECT_THAT(fails(dup), HasSubstr("'an.i64' appears twice"));
  }
  {
    std::string b = good;
    poke<uint8_t>(b, at(b, "a.bool") + 6 + 4, 5);
    EXPECT_THAT(fails(b), HasSubstr("'a.bool' is a bool with value 5"));
  }
}

TEST(Gguf, ExtensionWithoutMagicIsNamed) {
  test::TempDir dir;
  test::write_file(dir / "m.gguf", "this is an html error page");
  EXPECT_THAT(error_text<FormatError>([&] { Checkpoint::open(dir / "m.gguf"); }),
              HasSubstr("not a GGUF file"));
}

void write_split(const fs::path& p, int no, int count, int total, const char* tensor) {
  Built b;
  b.w.set("split.no", GgufType::u16, no);
  b.w.set("split.count", GgufType::u16, count);
  b.w.set("split.tensors.count", GgufType::i32, total);
  if (no == 0) b.w.set("general.architecture", GgufType::string, "llama");
  b.w.add_tensor(tensor, 0, {8}, 32);
  test::write_file(p, b.bytes());
}

TEST(Gguf, OpensSplitSetsWhole) {
  test::TempDir dir;
  write_split(dir / "m-00001-of-00003.gguf", 0, 3, 3, "a");
  write_split(dir / "m-00002-of-00003.gguf", 1, 3, 3, "b");
  write_split(dir / "m-00003-of-00003.gguf", 2, 3, 3, "c");
  const Checkpoint ck = Checkpoint::open(dir / "m-00001-of-00003.gguf");
  EXPECT_EQ(ck.files().size(), 3u);
  EXPECT_EQ(ck.at("c").file_index, 2u);
  EXPECT_EQ(ck.gguf_header()->metadata["general.architecture"], "llama");
  // A directory with one split set opens it too.
  EXPECT_EQ(Checkpoint::open(dir.path()).tensors().size(), 3u);

  fs::remove(dir / "m-00002-of-00003.gguf");
  EXPECT_THAT(error_text<FormatError>([&] { Checkpoint::open(dir / "m-00001-of-00003.gguf"); }),
              HasSubstr("split file 2 of 3 is missing"));
  write_split(dir / "m-00002-of-00003.gguf", 1, 3, 4, "b");
  write_split(dir / "m-00001-of-00003.gguf", 0, 3, 4, "a");
  EXPECT_THAT(error_text<FormatError>([&] { Checkpoint::open(dir / "m-00001-of-00003.gguf"); }),
              HasSubstr("split.tensors.count says 4"));
}

}  // namespace
}  // namespace ferry::offload
