// Tests of the streaming checkpoint writers: round trips through Checkpoint::open, the exact
// on-disk layouts (safetensors header, torch.save's zip and pickle), sharding, chunking,
// determinism and failure behaviour.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/checkpoint_writer.hpp"
#include "offload/detail/torch_writer_pickle.hpp"
#include "offload/detail/writer_crc32.hpp"
#include "offload/detail/writer_internal.hpp"
#include "runtime/core/error.hpp"
#include "tests/offload/offload_cases.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using test::pattern_byte;
using test::read_file;
using test::TempDir;

std::string expected_bytes(const TensorSpec& t) {
  std::string s(t.nbytes(), '\0');
  for (uint64_t i = 0; i < s.size(); ++i) s[i] = static_cast<char>(pattern_byte(t.name, i));
  return s;
}

struct FillCall {
  std::string name;
  uint64_t first_byte = 0;
  std::size_t nbytes = 0;
  bool operator==(const FillCall&) const = default;
};

std::ostream& operator<<(std::ostream& os, const FillCall& c) {
  return os << c.name << "@" << c.first_byte << "+" << c.nbytes;
}

// Fills with pattern_byte and records every call.
class PatternFiller {
 public:
  TensorFiller filler() {
    return [this](const TensorSpec& spec, uint64_t first_byte, std::span<std::byte> dst) {
      calls_.push_back({spec.name, first_byte, dst.size()});
      for (std::size_t k = 0; k < dst.size(); ++k) {
        dst[k] = std::byte{pattern_byte(spec.name, first_byte + k)};
      }
    };
  }
  const std::vector<FillCall>& calls() const { return calls_; }

 private:
  std::vector<FillCall> calls_;
};

// A miniature GPT-J's tensors, all of one dtype.
std::vector<TensorSpec> tiny_gptj(DType dt) {
  return {
      {"transformer.wte.weight", dt, {100, 16}},
      {"transformer.h.0.ln_1.weight", dt, {16}},
      {"transformer.h.0.ln_1.bias", dt, {16}},
      {"transformer.h.0.attn.q_proj.weight", dt, {16, 16}},
      {"transformer.h.0.mlp.fc_in.weight", dt, {64, 16}},
      {"transformer.h.0.mlp.fc_in.bias", dt, {64}},
      {"transformer.h.0.mlp.fc_out.weight", dt, {16, 64}},
      {"transformer.h.1.ln_1.weight", dt, {16}},
      {"transformer.h.1.attn.q_proj.weight", dt, {16, 16}},
      {"transformer.ln_f.weight", dt, {16}},
      {"lm_head.weight", dt, {100, 16}},
      {"lm_head.bias", dt, {100}},
  };
}

// Mixed dtypes, a scalar, a rank-4 tensor, an odd-sized f16 one (so later offsets are not
// 4-byte aligned in safetensors) and an empty one.
std::vector<TensorSpec> mixed_tensors() {
  return {
      {"a.f32", DType::f32, {7, 3}},         {"b.f16", DType::f16, {5}},
      {"c.bf16", DType::bf16, {2, 3, 4}},    {"d.scalar", DType::f32, {}},
      {"e.rank4", DType::f16, {2, 1, 3, 2}}, {"f.empty", DType::f32, {0, 4}},
      {"g.after_empty", DType::bf16, {9}},
  };
}

std::vector<const TensorSpec*> pointers_to(const std::vector<TensorSpec>& specs) {
  std::vector<const TensorSpec*> p;
  p.reserve(specs.size());
  for (const TensorSpec& t : specs) p.push_back(&t);
  return p;
}

uint64_t total_bytes(const std::vector<TensorSpec>& specs) {
  uint64_t n = 0;
  for (const TensorSpec& t : specs) n += t.nbytes();
  return n;
}

// Opens dir with ferry's reader and checks every tensor: name, order, dtype, shape, bytes.
void expect_round_trip(const fs::path& dir, const std::vector<TensorSpec>& specs,
                       CheckpointFormat format) {
  const Checkpoint ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.format(), format);
  EXPECT_EQ(ckpt.total_bytes(), total_bytes(specs));
  ASSERT_EQ(ckpt.tensors().size(), specs.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    const TensorEntry& e = ckpt.tensors()[i];
    EXPECT_EQ(e.name, s.name) << "tensor #" << i << " out of order";
    const TensorEntry& found = ckpt.at(s.name);
    EXPECT_EQ(found.dtype, s.dtype) << s.name;
    EXPECT_EQ(found.shape, s.shape) << s.name << " " << found.shape.str();
    ASSERT_EQ(found.nbytes, s.nbytes()) << s.name;
    std::string got(found.nbytes, '\0');
    ckpt.read(found, got.data());
    EXPECT_EQ(got, expected_bytes(s)) << s.name;
  }
}

std::set<std::string> files_in(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// --- A zip reader written from the spec, independent of the writer and of ferry's reader ---

uint64_t le(std::string_view s, std::size_t off, int nbytes) {
  if (off + static_cast<std::size_t>(nbytes) > s.size()) {
    throw std::out_of_range("zip structure runs past the end of the file");
  }
  uint64_t v = 0;
  for (int i = nbytes - 1; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(s[off + i]);
  return v;
}

// Bit-at-a-time CRC-32, the definition the table-driven one must agree with.
uint32_t reference_crc32(std::string_view s) {
  uint32_t c = 0xFFFFFFFF;
  for (const char ch : s) {
    c ^= static_cast<uint8_t>(ch);
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320U & (0U - (c & 1U)));
  }
  return ~c;
}

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t nbytes = 0;
  uint64_t header_offset = 0;
  uint64_t data_offset = 0;
  bool central_zip64 = false;  // the central record has a zip64 extra field
  uint32_t local_crc = 0;      // CRC and sizes in the local header (zero when deferred)
  uint32_t local_size = 0;
  uint16_t fb_padding = 0xFFFF;  // payload length of the local "FB" field (0xFFFF: absent)
  std::string descriptor;        // the data descriptor after the payload
};

struct ZipArchive {
  std::vector<ZipEntry> entries;
  bool has_zip64_end = false;
  bool end_record_saturated = false;  // EOCD fields say "see the zip64 record"
  std::string bytes;
  std::string payload(const ZipEntry& e) const { return bytes.substr(e.data_offset, e.nbytes); }
};

ZipArchive parse_zip(const fs::path& path) {
  ZipArchive z;
  z.bytes = read_file(path);
  const std::string_view s = z.bytes;
  if (s.size() < 22) throw std::runtime_error("too short for a zip");
  const std::size_t eocd = s.size() - 22;  // no archive comment
  EXPECT_EQ(le(s, eocd, 4), 0x06054b50U);
  uint64_t count = le(s, eocd + 10, 2);
  uint64_t cd_bytes = le(s, eocd + 12, 4);
  uint64_t cd_offset = le(s, eocd + 16, 4);
  z.end_record_saturated = count == 0xFFFF && cd_bytes == 0xFFFFFFFF && cd_offset == 0xFFFFFFFF;
  if (eocd >= 20 && le(s, eocd - 20, 4) == 0x07064b50U) {
    const uint64_t z64 = le(s, eocd - 20 + 8, 8);
    EXPECT_EQ(le(s, z64, 4), 0x06064b50U);
    EXPECT_EQ(z64 + 56, eocd - 20) << "zip64 end record must sit just before its locator";
    z.has_zip64_end = true;
    count = le(s, z64 + 32, 8);
    cd_bytes = le(s, z64 + 40, 8);
    cd_offset = le(s, z64 + 48, 8);
  }
  EXPECT_EQ(cd_offset + cd_bytes, z.has_zip64_end ? eocd - 76 : eocd);
  std::size_t p = cd_offset;
  for (uint64_t i = 0; i < count; ++i) {
    ZipEntry e;
    EXPECT_EQ(le(s, p, 4), 0x02014b50U);
    e.flags = static_cast<uint16_t>(le(s, p + 8, 2));
    e.method = static_cast<uint16_t>(le(s, p + 10, 2));
    e.crc = static_cast<uint32_t>(le(s, p + 16, 4));
    uint64_t compressed = le(s, p + 20, 4);
    e.nbytes = le(s, p + 24, 4);
    const std::size_t name_len = le(s, p + 28, 2);
    const std::size_t extra_len = le(s, p + 30, 2);
    const std::size_t comment_len = le(s, p + 32, 2);
    e.header_offset = le(s, p + 42, 4);
    e.name = std::string(s.substr(p + 46, name_len));
    for (std::size_t x = p + 46 + name_len; x < p + 46 + name_len + extra_len;) {
      const uint64_t id = le(s, x, 2);
      const std::size_t len = le(s, x + 2, 2);
      if (id == 1) {
        e.central_zip64 = true;
        std::size_t f = x + 4;
        // Present in this order, each only when its 32-bit field holds the sentinel.
        for (uint64_t* field : {&e.nbytes, &compressed, &e.header_offset}) {
          if (*field == 0xFFFFFFFF) {
            *field = le(s, f, 8);
            f += 8;
          }
        }
        EXPECT_EQ(f, x + 4 + len) << e.name << ": zip64 field length";
      }
      x += 4 + len;
    }
    EXPECT_EQ(compressed, e.nbytes) << e.name;
    p += 46 + name_len + extra_len + comment_len;

    const std::size_t h = e.header_offset;
    EXPECT_EQ(le(s, h, 4), 0x04034b50U) << e.name;
    EXPECT_EQ(le(s, h + 6, 2), e.flags) << e.name;
    e.local_crc = static_cast<uint32_t>(le(s, h + 14, 4));
    e.local_size = static_cast<uint32_t>(le(s, h + 22, 4));
    const std::size_t local_name_len = le(s, h + 26, 2);
    const std::size_t local_extra_len = le(s, h + 28, 2);
    EXPECT_EQ(s.substr(h + 30, local_name_len), e.name);
    for (std::size_t x = h + 30 + local_name_len; x < h + 30 + local_name_len + local_extra_len;) {
      const std::size_t len = le(s, x + 2, 2);
      if (s.substr(x, 2) == "FB") {
        e.fb_padding = static_cast<uint16_t>(len);
        EXPECT_EQ(s.substr(x + 4, len), std::string(len, 'Z')) << e.name;
      }
      x += 4 + len;
    }
    e.data_offset = h + 30 + local_name_len + local_extra_len;
    const std::size_t descriptor_len = (e.flags & 0x8) == 0 ? 0 : (e.central_zip64 ? 24 : 16);
    e.descriptor = std::string(s.substr(e.data_offset + e.nbytes, descriptor_len));
    z.entries.push_back(std::move(e));
  }
  return z;
}

// The conventions torch.save's writer follows for every entry (checked against a real torch
// file below): stored, flags 0x0808, CRC and sizes deferred to a data descriptor, an "FB"
// field padding the payload to 64 bytes, zip64 end records always present.
void expect_torch_conventions(const ZipArchive& z, bool forced_zip64) {
  EXPECT_TRUE(z.has_zip64_end) << "torch always writes the zip64 end records";
  EXPECT_EQ(z.end_record_saturated, forced_zip64);
  for (const ZipEntry& e : z.entries) {
    EXPECT_EQ(e.method, 0) << e.name << " must be stored";
    EXPECT_EQ(e.flags, 0x0808) << e.name;
    EXPECT_EQ(e.data_offset % 64, 0U) << e.name << " payload is not 64-byte aligned";
    EXPECT_LT(e.fb_padding, 64U) << e.name << " lacks the FB padding field";
    EXPECT_EQ(e.central_zip64, forced_zip64) << e.name;
    EXPECT_EQ(e.local_crc, 0U) << e.name;
    EXPECT_EQ(e.local_size, 0U) << e.name;
    EXPECT_EQ(e.crc, reference_crc32(z.payload(e))) << e.name;
    // The data descriptor repeats CRC and sizes, 8-byte sizes in zip64 form.
    std::string d;
    for (int k = 0; k < 4; ++k) d += static_cast<char>((0x08074b50U >> (8 * k)) & 0xFF);
    for (int k = 0; k < 4; ++k) d += static_cast<char>((e.crc >> (8 * k)) & 0xFF);
    for (int rep = 0; rep < 2; ++rep) {
      for (int k = 0; k < (forced_zip64 ? 8 : 4); ++k) {
        d += static_cast<char>((e.nbytes >> (8 * k)) & 0xFF);
      }
    }
    EXPECT_EQ(e.descriptor, d) << e.name;
  }
}

// Checks a .bin written for specs: torch's conventions, entry names and order, contents.
void expect_torch_layout(const fs::path& path, const std::vector<TensorSpec>& specs,
                         bool forced_zip64) {
  const ZipArchive z = parse_zip(path);
  expect_torch_conventions(z, forced_zip64);
  const std::string top = path.stem().string() + "/";
  std::vector<std::string> names = {top + "data.pkl", top + "byteorder"};
  for (std::size_t i = 0; i < specs.size(); ++i) names.push_back(top + "data/" + std::to_string(i));
  names.push_back(top + "version");
  ASSERT_EQ(z.entries.size(), names.size());
  for (std::size_t i = 0; i < names.size(); ++i) EXPECT_EQ(z.entries[i].name, names[i]);
  for (std::size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(z.payload(z.entries[2 + i]), expected_bytes(specs[i])) << specs[i].name;
  }
  EXPECT_EQ(z.payload(z.entries[1]), "little");
  EXPECT_EQ(z.payload(z.entries.back()), "3\n");
  EXPECT_EQ(z.payload(z.entries[0]), detail::torch_state_dict_pickle(pointers_to(specs)));
}

std::string hex_decode(std::string_view hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16));
  }
  return out;
}

// ------------------------------------------------------------------------------------------

TEST(WriterCrc32, MatchesTheDefinition) {
  EXPECT_EQ(detail::crc32_update(0, std::as_bytes(std::span("123456789", 9))), 0xCBF43926U);
  EXPECT_EQ(detail::crc32_update(0, {}), 0U);
  std::string data(1000, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + i / 13);
  const auto bytes = std::as_bytes(std::span(data));
  // Every split point (the 8-byte loop and the byte tail both) gives the one-shot value.
  for (std::size_t cut = 0; cut <= 40; ++cut) {
    detail::Crc32 crc;
    crc.update(bytes.subspan(0, cut));
    crc.update(bytes.subspan(cut));
    EXPECT_EQ(crc.value(), reference_crc32(data)) << "split at " << cut;
  }
  for (std::size_t len = 0; len < 24; ++len) {
    EXPECT_EQ(detail::crc32_update(0, bytes.subspan(3, len)),
              reference_crc32(std::string_view(data).substr(3, len)));
  }
}

// The golden bytes are CPython 3.11's pickle.Pickler(protocol=2) output for the same state
// dict, made with stand-in torch classes whose __reduce_ex__ returns what torch.Tensor's
// does and a persistent_id returning torch.save's ('storage', type, key, 'cpu', numel).
// Covers BININT1/BININT2/BININT/LONG1, TUPLE1..3, MARK-TUPLE, EMPTY_TUPLE and memo reuse.
TEST(TorchPickle, MatchesCPythonBytes) {
  const std::vector<TensorSpec> specs = {
      {"a.weight", DType::f32, {3, 2}},     {"scalar", DType::f16, {}},
      {"big", DType::bf16, {70000, 40000}}, {"r4", DType::f32, {2, 0, 3, 1}},
      {"r3", DType::f16, {300, 1, 2}},
  };
  const std::vector<const TensorSpec*> ptrs = pointers_to(specs);
  const std::string golden = hex_decode(
      "800263636f6c6c656374696f6e730a4f726465726564446963740a710029527101285808000000612e7765696768"
      "74710263746f7263682e5f7574696c730a5f72656275696c645f74656e736f725f76320a71032828580700000073"
      "746f72616765710463746f7263680a466c6f617453746f726167650a710558010000003071065803000000637075"
      "71074b06747108514b004b034b028671094b024b0186710a8968002952710b74710c52710d58060000007363616c"
      "6172710e68032828680463746f7263680a48616c6653746f726167650a710f580100000031711068074b01747111"
      "514b002929896800295271127471135271145803000000626967711568032828680463746f7263680a42466c6f61"
      "74313653746f726167650a7116580100000032711768078a05009ce4a600747118514b004a701101004d409c8671"
      "194d409c4b0186711a8968002952711b74711c52711d58020000007234711e680328286804680558010000003371"
      "1f68074b00747120514b00284b024b004b034b01747121284b034b034b014b017471228968002952712374712452"
      "7125580200000072337126680328286804680f580100000034712768074d5802747128514b004d2c014b014b0287"
      "71294b024b024b0187712a8968002952712b74712c52712d752e");
  EXPECT_EQ(detail::torch_state_dict_pickle(ptrs), golden);
}

TEST(TorchPickle, OneTensorUsesSetitemAndEmptyDictIsBare) {
  const TensorSpec t{"w", DType::f32, {2}};
  const TensorSpec* one[] = {&t};
  const std::string p = detail::torch_state_dict_pickle(one);
  EXPECT_EQ(p.substr(p.size() - 2), "s.");  // SETITEM, STOP (no MARK/SETITEMS for one item)
  EXPECT_EQ(p[33], 'X') << "a single item is not preceded by MARK";
  // OrderedDict() alone: PROTO, GLOBAL, BINPUT 0, EMPTY_TUPLE, REDUCE, BINPUT 1, STOP.
  EXPECT_EQ(detail::torch_state_dict_pickle({}),
            std::string("\x80\x02"
                        "ccollections\nOrderedDict\nq\x00)Rq\x01.",
                        34));
}

// The conventions the writer copies are those of a file torch.save really wrote.
TEST(CheckpointWriter, TorchConventionsHoldForARealTorchFile) {
  const fs::path real = test::data_dir() / "gptj" / "tiny-f32" / "pytorch_model.bin";
  if (!fs::exists(real)) GTEST_SKIP() << "fixture missing";
  const ZipArchive z = parse_zip(real);
  ASSERT_GT(z.entries.size(), 3U);
  EXPECT_EQ(z.entries.front().name, "pytorch_model/data.pkl");
  EXPECT_EQ(z.entries.back().name, "pytorch_model/version");
  EXPECT_EQ(z.payload(z.entries.back()), "3\n");
  expect_torch_conventions(z, /*forced_zip64=*/false);
}

TEST(CheckpointWriter, SafetensorsSingleFileRoundTrips) {
  const TempDir dir;
  const auto specs = mixed_tensors();
  PatternFiller filler;
  WriteOptions opt;
  opt.metadata = {{"format", "pt"}};
  const auto files = write_checkpoint(dir.path(), specs, filler.filler(), opt);
  ASSERT_EQ(files, std::vector<fs::path>{dir / "model.safetensors"});
  EXPECT_EQ(files_in(dir.path()), std::set<std::string>{"model.safetensors"});
  expect_round_trip(dir.path(), specs, CheckpointFormat::safetensors);
}

TEST(CheckpointWriter, SafetensorsHeaderIsTheLibrarysLayout) {
  const TempDir dir;
  const auto specs = mixed_tensors();
  PatternFiller filler;
  WriteOptions opt;
  opt.metadata = {{"format", "pt"}, {"source", "ferry"}};
  write_checkpoint(dir.path(), specs, filler.filler(), opt);
  const std::string file = read_file(dir / "model.safetensors");
  const uint64_t header_len = le(file, 0, 8);
  EXPECT_EQ((8 + header_len) % 8, 0U) << "data must start 8-byte aligned";
  const std::string header = file.substr(8, header_len);
  const std::size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - last - 1, 8U) << "padding is fewer than 8 spaces";
  EXPECT_EQ(header.find('\n'), std::string::npos) << "compact JSON, as the library writes";
  EXPECT_TRUE(header.starts_with(R"({"__metadata__":{"format":"pt","source":"ferry"},)"));
  const auto json = nlohmann::ordered_json::parse(header);
  ASSERT_EQ(json.size(), specs.size() + 1);
  uint64_t offset = 0;
  auto it = json.begin();
  ++it;  // __metadata__
  for (const TensorSpec& t : specs) {
    ASSERT_EQ(it.key(), t.name) << "tensors appear in file order";
    const auto& info = it.value();
    EXPECT_EQ(info.begin().key(), "dtype");
    EXPECT_EQ(info["dtype"], std::string(dtype_to_safetensors(t.dtype)));
    std::vector<int64_t> shape(t.shape.dims.begin(), t.shape.dims.begin() + t.shape.rank);
    EXPECT_EQ(info["shape"].get<std::vector<int64_t>>(), shape);
    EXPECT_EQ(info["data_offsets"], nlohmann::ordered_json({offset, offset + t.nbytes()}));
    EXPECT_EQ(file.substr(8 + header_len + offset, t.nbytes()), expected_bytes(t));
    offset += t.nbytes();
    ++it;
  }
  EXPECT_EQ(file.size(), 8 + header_len + offset) << "no bytes after the last tensor";
}

TEST(CheckpointWriter, SafetensorsWithoutMetadataOmitsTheKey) {
  const TempDir dir;
  const std::vector<TensorSpec> specs = {{"x", DType::f32, {3}}};
  PatternFiller filler;
  write_checkpoint(dir.path(), specs, filler.filler(), {});
  const std::string file = read_file(dir / "model.safetensors");
  EXPECT_EQ(file.substr(8, le(file, 0, 8)),
            R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}} )");  // 55 + 1 space
}

TEST(CheckpointWriter, TorchSingleFileRoundTripsEachFloatDtype) {
  for (const DType dt : {DType::f32, DType::f16, DType::bf16}) {
    SCOPED_TRACE(std::string(dtype_name(dt)));
    const TempDir dir;
    const auto specs = tiny_gptj(dt);
    PatternFiller filler;
    WriteOptions opt;
    opt.format = WriteFormat::torch_zip;
    const auto files = write_checkpoint(dir.path(), specs, filler.filler(), opt);
    ASSERT_EQ(files, std::vector<fs::path>{dir / "pytorch_model.bin"});
    EXPECT_EQ(files_in(dir.path()), std::set<std::string>{"pytorch_model.bin"});
    expect_torch_layout(files[0], specs, /*forced_zip64=*/false);
    expect_round_trip(dir.path(), specs, CheckpointFormat::torch_zip);
  }
}

TEST(CheckpointWriter, TorchMixedDtypesScalarAndEmptyTensors) {
  const TempDir dir;
  const auto specs = mixed_tensors();
  PatternFiller filler;
  WriteOptions opt;
  opt.format = WriteFormat::torch_zip;
  write_checkpoint(dir.path(), specs, filler.filler(), opt);
  expect_torch_layout(dir / "pytorch_model.bin", specs, false);
  expect_round_trip(dir.path(), specs, CheckpointFormat::torch_zip);
}

// Entries past 4 GiB take the zip64 paths; forcing them on a small file checks that layout
// (sentinel 32-bit fields, zip64 extras in local and central headers, 24-byte descriptors,
// saturated end record) without writing 4 GiB.
TEST(CheckpointWriter, ForcedZip64ArchiveIsReadable) {
  const TempDir dir;
  const auto specs = tiny_gptj(DType::f16);
  PatternFiller filler;
  WriteOptions opt;
  opt.format = WriteFormat::torch_zip;
  detail::WriterTuning tuning;
  tuning.force_zip64 = true;
  detail::write_checkpoint_tuned(dir.path(), specs, filler.filler(), opt, tuning);
  const fs::path file = dir / "pytorch_model.bin";
  expect_torch_layout(file, specs, /*forced_zip64=*/true);
  expect_round_trip(dir.path(), specs, CheckpointFormat::torch_zip);
}

// Sharded round trip for one format: names, index, limit, reader.
void check_sharded(WriteFormat format) {
  const TempDir dir;
  const auto specs = tiny_gptj(DType::f32);
  // wte and lm_head are 6400 bytes each, larger than the limit: each sits alone.
  const uint64_t limit = 5000;
  PatternFiller filler;
  WriteOptions opt;
  opt.format = format;
  opt.max_shard_bytes = limit;
  opt.metadata = {{"format", "pt"}};
  const auto files = write_checkpoint(dir.path(), specs, filler.filler(), opt);

  const bool st = format == WriteFormat::safetensors;
  const std::string stem = st ? "model" : "pytorch_model";
  const std::string ext = st ? ".safetensors" : ".bin";
  // Greedy in order, by hand (bytes): wte 6400 alone | 64 + 64 + 1024 = 1152 (+ fc_in.w 4096
  // would pass 5000) | 4096 + 256 | 4096 + 64 (+ 1024 would pass) | 1024 + 64 |
  // lm_head.w 6400 alone | 400.
  const std::vector<std::vector<std::string>> expected_shards = {
      {"transformer.wte.weight"},
      {"transformer.h.0.ln_1.weight", "transformer.h.0.ln_1.bias",
       "transformer.h.0.attn.q_proj.weight"},
      {"transformer.h.0.mlp.fc_in.weight", "transformer.h.0.mlp.fc_in.bias"},
      {"transformer.h.0.mlp.fc_out.weight", "transformer.h.1.ln_1.weight"},
      {"transformer.h.1.attn.q_proj.weight", "transformer.ln_f.weight"},
      {"lm_head.weight"},
      {"lm_head.bias"},
  };
  const std::size_t n = expected_shards.size();
  std::vector<fs::path> expected_files;
  std::set<std::string> expected_names;
  for (std::size_t i = 0; i < n; ++i) {
    const std::string name = fmt::format("{}-{:05d}-of-{:05d}{}", stem, i + 1, n, ext);
    expected_files.push_back(dir / name);
    expected_names.insert(name);
  }
  expected_files.push_back(dir / (stem + ext + ".index.json"));
  expected_names.insert(stem + ext + ".index.json");
  ASSERT_EQ(files, expected_files);
  EXPECT_EQ(files_in(dir.path()), expected_names) << "no .partial or other files left";

  const nlohmann::json index = nlohmann::json::parse(read_file(expected_files.back()));
  const nlohmann::json& weight_map = index.at("weight_map");
  EXPECT_EQ(index.at("metadata").at("total_size").get<uint64_t>(), total_bytes(specs));
  EXPECT_EQ(weight_map.size(), specs.size());
  for (std::size_t i = 0; i < n; ++i) {
    for (const std::string& name : expected_shards[i]) {
      EXPECT_EQ(weight_map.at(name), expected_files[i].filename().string()) << name;
    }
  }
  // The limit holds for every shard but those holding one tensor larger than it.
  std::map<std::string, uint64_t> shard_bytes;
  std::map<std::string, std::size_t> shard_tensors;
  for (const TensorSpec& t : specs) {
    const std::string file = weight_map.at(t.name).get<std::string>();
    shard_bytes[file] += t.nbytes();
    ++shard_tensors[file];
  }
  EXPECT_EQ(shard_bytes.size(), n);
  for (const auto& [file, bytes] : shard_bytes) {
    if (shard_tensors[file] > 1) {
      EXPECT_LE(bytes, limit) << file;
    }
  }
  // As transformers writes it: sorted keys, two-space indent, trailing newline.
  EXPECT_EQ(read_file(expected_files.back()), index.dump(2) + "\n");

  if (!st) {
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<TensorSpec> in_shard;
      for (const std::string& name : expected_shards[i]) {
        for (const TensorSpec& t : specs) {
          if (t.name == name) in_shard.push_back(t);
        }
      }
      SCOPED_TRACE(expected_files[i].string());
      expect_torch_layout(expected_files[i], in_shard, false);
    }
  }
  expect_round_trip(dir.path(), specs,
                    st ? CheckpointFormat::safetensors : CheckpointFormat::torch_zip);
  const Checkpoint ckpt = Checkpoint::open(dir.path());
  EXPECT_EQ(ckpt.files().size(), n);
}

TEST(CheckpointWriter, SafetensorsShardedRoundTrips) { check_sharded(WriteFormat::safetensors); }
TEST(CheckpointWriter, TorchShardedRoundTrips) { check_sharded(WriteFormat::torch_zip); }

TEST(CheckpointWriter, ShardLimitAboveTheModelWritesOneFile) {
  const TempDir dir;
  const auto specs = tiny_gptj(DType::bf16);
  PatternFiller filler;
  WriteOptions opt;
  opt.max_shard_bytes = total_bytes(specs);  // exactly fits
  const auto files = write_checkpoint(dir.path(), specs, filler.filler(), opt);
  EXPECT_EQ(files, std::vector<fs::path>{dir / "model.safetensors"});
  EXPECT_EQ(files_in(dir.path()), std::set<std::string>{"model.safetensors"});
}

TEST(CheckpointWriter, FillIsCalledInOrderWithChunkAlignedRanges) {
  for (const WriteFormat format : {WriteFormat::safetensors, WriteFormat::torch_zip}) {
    const TempDir dir;
    const std::vector<TensorSpec> specs = {
        {"a", DType::f32, {250}},  // 1000 bytes: 15 chunks of 64 and one of 40
        {"b", DType::f16, {32}},   // exactly one chunk
        {"c", DType::f32, {0}},    // no bytes, no call
        {"d", DType::bf16, {65}},  // 130 bytes: 64, 64, 2
    };
    PatternFiller filler;
    WriteOptions opt;
    opt.format = format;
    detail::WriterTuning tuning;
    tuning.chunk_bytes = 64;
    detail::write_checkpoint_tuned(dir.path(), specs, filler.filler(), opt, tuning);
    std::vector<FillCall> expected;
    for (uint64_t b = 0; b < 1000; b += 64)
      expected.push_back({"a", b, b + 64 <= 1000 ? 64U : 40U});
    expected.push_back({"b", 0, 64});
    expected.push_back({"d", 0, 64});
    expected.push_back({"d", 64, 64});
    expected.push_back({"d", 128, 2});
    EXPECT_EQ(filler.calls(), expected);
    expect_round_trip(dir.path(), specs,
                      format == WriteFormat::safetensors ? CheckpointFormat::safetensors
                                                         : CheckpointFormat::torch_zip);
  }
}

TEST(CheckpointWriter, DefaultChunksAreEightMiB) {
  const TempDir dir;
  const uint64_t elems = (uint64_t{8} << 20) / 4 + 25;  // 8 MiB + 100 bytes of f32
  const std::vector<TensorSpec> specs = {{"big", DType::f32, {static_cast<int64_t>(elems)}}};
  PatternFiller filler;
  WriteOptions opt;
  opt.format = WriteFormat::torch_zip;
  write_checkpoint(dir.path(), specs, filler.filler(), opt);
  const std::vector<FillCall> expected = {{"big", 0, std::size_t{8} << 20},
                                          {"big", uint64_t{8} << 20, 100}};
  EXPECT_EQ(filler.calls(), expected);
  expect_round_trip(dir.path(), specs, CheckpointFormat::torch_zip);
}

TEST(CheckpointWriter, OutputIsDeterministic) {
  for (const WriteFormat format : {WriteFormat::safetensors, WriteFormat::torch_zip}) {
    const TempDir a;
    const TempDir b;
    const auto specs = tiny_gptj(DType::f16);
    WriteOptions opt;
    opt.format = format;
    opt.max_shard_bytes = 3000;
    opt.metadata = {{"format", "pt"}};
    PatternFiller fa;
    PatternFiller fb;
    const auto files_a = write_checkpoint(a.path(), specs, fa.filler(), opt);
    const auto files_b = write_checkpoint(b.path(), specs, fb.filler(), opt);
    ASSERT_EQ(files_a.size(), files_b.size());
    ASSERT_GT(files_a.size(), 2U);
    for (std::size_t i = 0; i < files_a.size(); ++i) {
      EXPECT_EQ(files_a[i].filename(), files_b[i].filename());
      EXPECT_EQ(read_file(files_a[i]), read_file(files_b[i])) << files_a[i].filename();
    }
  }
}

TEST(CheckpointWriter, ProgressIsReportedAfterEveryTensor) {
  for (const WriteFormat format : {WriteFormat::safetensors, WriteFormat::torch_zip}) {
    const TempDir dir;
    const auto specs = tiny_gptj(DType::f32);
    PatternFiller filler;
    std::vector<std::pair<uint64_t, uint64_t>> reports;
    WriteOptions opt;
    opt.format = format;
    opt.max_shard_bytes = 5000;
    opt.progress = [&](uint64_t done, uint64_t total) { reports.emplace_back(done, total); };
    write_checkpoint(dir.path(), specs, filler.filler(), opt);
    ASSERT_EQ(reports.size(), specs.size());
    uint64_t done = 0;
    for (std::size_t i = 0; i < specs.size(); ++i) {
      done += specs[i].nbytes();
      EXPECT_EQ(reports[i], std::make_pair(done, total_bytes(specs))) << "after tensor #" << i;
    }
  }
}

TEST(CheckpointWriter, FailingFillLeavesNoCheckpointBehind) {
  for (const WriteFormat format : {WriteFormat::safetensors, WriteFormat::torch_zip}) {
    for (const uint64_t shard_limit : {uint64_t{0}, uint64_t{5000}}) {
      const TempDir dir;
      const auto specs = tiny_gptj(DType::f32);
      WriteOptions opt;
      opt.format = format;
      opt.max_shard_bytes = shard_limit;
      // Fails in the middle of the model (in a later shard when sharded).
      const TensorFiller fail = [](const TensorSpec& spec, uint64_t, std::span<std::byte> dst) {
        if (spec.name == "transformer.h.1.attn.q_proj.weight") {
          throw std::runtime_error("generator failed");
        }
        std::memset(dst.data(), 1, dst.size());
      };
      EXPECT_THROW(write_checkpoint(dir.path(), specs, fail, opt), std::runtime_error);
      EXPECT_TRUE(files_in(dir.path()).empty())
          << "left behind: " << ::testing::PrintToString(files_in(dir.path()));
    }
  }
}

TEST(CheckpointWriter, WriteErrorsAreIoErrorsNamingTheFile) {
  const TempDir dir;
  // Files may grow to 4 KiB here: every write past that fails (EFBIG, SIGXFSZ ignored), as on a
  // full disk. (The unfinished file's name is private and random, so it cannot be pointed at
  // /dev/full beforehand.)
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 4096;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const auto specs = tiny_gptj(DType::f32);
  PatternFiller filler;
  std::string what;
  int code = 0;
  try {
    write_checkpoint(dir.path(), specs, filler.filler(), {});
  } catch (const IoError& e) {
    what = e.what();
    code = e.code().value();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(code, EFBIG) << what;
  EXPECT_NE(what.find((dir / ".model.safetensors.tmp-").string()), std::string::npos) << what;
  EXPECT_TRUE(files_in(dir.path()).empty());
}

TEST(CheckpointWriter, UncreatableDirectoryIsAnIoErrorNamingIt) {
  const TempDir dir;
  test::write_file(dir / "not_a_dir", "x");
  const fs::path target = dir / "not_a_dir" / "model";
  try {
    write_checkpoint(target, tiny_gptj(DType::f32), PatternFiller().filler(), {});
    FAIL() << "wrote under a regular file";
  } catch (const IoError& e) {
    EXPECT_NE(std::string(e.what()).find(target.string()), std::string::npos) << e.what();
  }
}

TEST(CheckpointWriter, RejectsInvalidSpecsNamingThem) {
  struct Case {
    std::vector<TensorSpec> specs;
    WriteFormat format;
    std::string needle;  // must appear in the message
  };
  std::vector<Case> cases = {
      {{{"ok", DType::f32, {2}}, {"", DType::f32, {3}}}, WriteFormat::safetensors, "#1"},
      {{{"w", DType::f32, {2}}, {"v", DType::f16, {2}}, {"w", DType::f32, {2}}},
       WriteFormat::torch_zip,
       "'w'"},
      {{{"bad.dtype", static_cast<DType>(200), {2}}}, WriteFormat::safetensors, "bad.dtype"},
      {{{"bad.dtype", static_cast<DType>(200), {2}}}, WriteFormat::torch_zip, "bad.dtype"},
      {{{"neg", DType::f32, {4, -1}}}, WriteFormat::safetensors, "neg"},
      {{{"huge", DType::f32, {int64_t{1} << 40, int64_t{1} << 40}}},
       WriteFormat::torch_zip,
       "huge"},
      {{{"__metadata__", DType::f32, {1}}}, WriteFormat::safetensors, "__metadata__"},
      {{{std::string("bad\xff", 4), DType::f32, {1}}}, WriteFormat::torch_zip, "UTF-8"},
  };
  TensorSpec rank5{"rank5", DType::f32, {1, 1, 1, 1}};
  rank5.shape.rank = 5;
  cases.push_back({{rank5}, WriteFormat::torch_zip, "rank5"});
  for (const Case& c : cases) {
    const TempDir dir;
    try {
      WriteOptions opt;
      opt.format = c.format;
      write_checkpoint(dir.path(), c.specs, PatternFiller().filler(), opt);
      ADD_FAILURE() << "accepted, expected an error mentioning " << c.needle;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(c.needle), std::string::npos) << e.what();
    }
    EXPECT_TRUE(files_in(dir.path()).empty()) << c.needle;
  }
  // The name safetensors reserves is an ordinary name in a torch checkpoint.
  const TempDir dir;
  WriteOptions opt;
  opt.format = WriteFormat::torch_zip;
  const std::vector<TensorSpec> specs = {{"__metadata__", DType::f32, {1}}};
  EXPECT_NO_THROW(write_checkpoint(dir.path(), specs, PatternFiller().filler(), opt));
}

// A new write replaces the files of an older checkpoint of the same format that a reader
// would otherwise pick (Checkpoint::open prefers model.safetensors over an index).
TEST(CheckpointWriter, ReplacesAnOlderCheckpointsFiles) {
  const TempDir dir;
  const auto old_specs = tiny_gptj(DType::f32);
  const auto new_specs = tiny_gptj(DType::f16);
  test::write_file(dir / "pytorch_model.bin", "other format, kept");
  test::write_file(dir / "notes.txt", "unrelated, kept");

  WriteOptions single;
  write_checkpoint(dir.path(), old_specs, PatternFiller().filler(), single);
  WriteOptions sharded;
  sharded.max_shard_bytes = 1000;
  const auto files = write_checkpoint(dir.path(), new_specs, PatternFiller().filler(), sharded);
  std::set<std::string> expected = {"pytorch_model.bin", "notes.txt"};
  for (const fs::path& f : files) expected.insert(f.filename().string());
  EXPECT_EQ(files_in(dir.path()), expected);
  expect_round_trip(dir.path(), new_specs, CheckpointFormat::safetensors);

  // And back: fewer shards, then a single file, remove the extra shards and the index.
  sharded.max_shard_bytes = 3000;
  write_checkpoint(dir.path(), old_specs, PatternFiller().filler(), sharded);
  write_checkpoint(dir.path(), new_specs, PatternFiller().filler(), single);
  EXPECT_EQ(files_in(dir.path()),
            (std::set<std::string>{"pytorch_model.bin", "notes.txt", "model.safetensors"}));
  expect_round_trip(dir.path(), new_specs, CheckpointFormat::safetensors);
}

// Tensors as a safetensors file lays them out: specs in offset order, the metadata, and the
// data bytes (which a filler then copies out, so rewriting the file must reproduce it).
struct SafetensorsContent {
  std::vector<TensorSpec> specs;
  std::map<std::string, std::string> metadata;
  std::string data;
};

SafetensorsContent load_safetensors(const fs::path& path) {
  SafetensorsContent c;
  const std::string file = read_file(path);
  const uint64_t header_len = le(file, 0, 8);
  const auto header = nlohmann::ordered_json::parse(file.substr(8, header_len));
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      c.metadata = info.get<std::map<std::string, std::string>>();
      continue;
    }
    TensorSpec t;
    t.name = name;
    t.dtype = dtype_from_safetensors(info.at("dtype").get<std::string>()).value();
    for (const int64_t d : info.at("shape"))
      t.shape.dims[static_cast<std::size_t>(t.shape.rank++)] = d;
    c.specs.push_back(std::move(t));
  }
  c.data = file.substr(8 + header_len);
  return c;
}

// Rewrites the fixture checkpoints (made by the Hugging Face safetensors library and
// transformers' sharding) from their tensors: every file, index included, must come out
// byte for byte the same.
TEST(CheckpointWriter, ReproducesLibraryWrittenSafetensorsByteForByte) {
  const fs::path single = test::data_dir() / "gptj" / "tiny-f32" / "model.safetensors";
  const fs::path sharded = test::data_dir() / "gptj" / "sharded-f32";
  const std::vector<fs::path> shard_files = {sharded / "model-00001-of-00002.safetensors",
                                             sharded / "model-00002-of-00002.safetensors"};
  if (!fs::exists(single) || !fs::exists(shard_files[0])) GTEST_SKIP() << "fixtures missing";

  // Copies each tensor's bytes out of the concatenated data of the source files.
  std::vector<SafetensorsContent> sources;
  const auto copy_filler = [&sources](const TensorSpec& spec, uint64_t first_byte,
                                      std::span<std::byte> dst) {
    for (const SafetensorsContent& src : sources) {
      uint64_t offset = 0;
      for (const TensorSpec& t : src.specs) {
        if (t.name == spec.name) {
          std::memcpy(dst.data(), src.data.data() + offset + first_byte, dst.size());
          return;
        }
        offset += t.nbytes();
      }
    }
    FAIL() << "no source bytes for " << spec.name;
  };

  {
    sources = {load_safetensors(single)};
    const TempDir dir;
    WriteOptions opt;
    opt.metadata = sources[0].metadata;
    write_checkpoint(dir.path(), sources[0].specs, copy_filler, opt);
    EXPECT_TRUE(read_file(dir / "model.safetensors") == read_file(single))
        << "differs from " << single;
  }
  {
    sources = {load_safetensors(shard_files[0]), load_safetensors(shard_files[1])};
    std::vector<TensorSpec> specs = sources[0].specs;
    specs.insert(specs.end(), sources[1].specs.begin(), sources[1].specs.end());
    const TempDir dir;
    WriteOptions opt;
    opt.metadata = sources[0].metadata;
    // The first shard's tensor bytes as the limit: greedy sharding then splits where the
    // fixture's generator did.
    opt.max_shard_bytes = sources[0].data.size();
    const auto files = write_checkpoint(dir.path(), specs, copy_filler, opt);
    ASSERT_EQ(files.size(), 3U);
    for (const fs::path& f : files) {
      EXPECT_TRUE(read_file(f) == read_file(sharded / f.filename())) << "differs: " << f;
    }
  }
}

TEST(CheckpointWriter, EmptyTensorListWritesAnEmptyCheckpoint) {
  const TempDir dir;
  const auto files = write_checkpoint(dir.path(), {}, nullptr, {});
  ASSERT_EQ(files.size(), 1U);
  EXPECT_EQ(read_file(files[0]), std::string("\x08\0\0\0\0\0\0\0{}      ", 16));
}

}  // namespace
}  // namespace ferry::offload
