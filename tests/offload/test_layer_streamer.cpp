// Tests of the layer streamer's slices: a unit may hold byte ranges of tensors (row chunks of a
// matrix) instead of whole tensors. Slices of safetensors, torch-zip and pack tensors hand out
// exactly their bytes through every I/O engine and every tier; a pack slice is widened to whole
// checksum chunks so that every byte computed with is verified; unit_bytes counts only a slice's
// bytes; a bad slice is refused naming its tensor.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/checkpoint_writer.hpp"
#include "offload/detail/pack_format.hpp"
#include "offload/layer_streamer.hpp"
#include "offload/pack_writer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/quant.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/offload/offload_cases.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using test::BackendCase;
using test::error_text;
using test::pattern_byte;
using test::TempDir;

void fill_pattern(std::string_view name, uint64_t first_byte, std::span<std::byte> dst) {
  for (std::size_t i = 0; i < dst.size(); ++i)
    dst[i] = static_cast<std::byte>(pattern_byte(name, first_byte + i));
}

// Index of the first of n bytes at p that is not byte offset + i of tensor name, or -1.
int64_t first_mismatch(const std::byte* p, std::string_view name, uint64_t offset, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i)
    if (static_cast<uint8_t>(p[i]) != pattern_byte(name, offset + i))
      return static_cast<int64_t>(i);
  return -1;
}

// Awkward sizes: rows of 1332 and 258 bytes, nothing a multiple of 4 KiB. In a pack they form the
// blob "layer 0" (a at 0, w at 64, b after it: six checksum chunks), and "head" holds a q8 matrix.
constexpr uint64_t kWRow = 1332;  // bytes of a row of w
const std::vector<TensorSpec> kTensors = {{"a", DType::f16, Shape{7}},
                                          {"w", DType::f32, Shape{1000, 333}},
                                          {"b", DType::bf16, Shape{517, 129}}};

fs::path write_model(const fs::path& dir, CheckpointFormat format) {
  if (format != CheckpointFormat::ferry_pack) {
    WriteOptions o;
    o.format =
        format == CheckpointFormat::torch_zip ? WriteFormat::torch_zip : WriteFormat::safetensors;
    write_checkpoint(
        dir, kTensors,
        [](const TensorSpec& t, uint64_t first, std::span<std::byte> dst) {
          fill_pattern(t.name, first, dst);
        },
        o);
    return dir;
  }
  std::vector<PackTensorSpec> layer;
  layer.reserve(kTensors.size());
  for (const auto& t : kTensors) layer.push_back({t.name, t.dtype, t.shape});
  const std::vector<PackBlobSpec> blobs = {{"layer 0", layer},
                                           {"head", {{"q", DType::q8, Shape{300, 1000}}}}};
  write_pack(dir / "model.ferry", blobs,
             [&](std::size_t b, std::size_t t, std::span<std::byte> dst) {
               fill_pattern(blobs[b].tensors[t].name, 0, dst);
             });
  return dir / "model.ferry";
}

IoOptions quiet_io(IoBackendKind kind = IoBackendKind::automatic, bool direct = true) {
  IoOptions o;
  o.backend = kind;
  o.direct = direct;
  o.queue_depth = 4;
  o.chunk_bytes = uint64_t{64} * 1024;
  o.report_fallbacks = false;
  return o;
}

StreamerOptions streamer_options(IoOptions io, std::size_t slots = 2) {
  StreamerOptions o;
  o.io = std::move(io);
  o.slot_count = slots;
  return o;
}

// The units every format is read through: unaligned starts and lengths, rows of a matrix, a
// slice to the end, several (overlapping, out of order) slices of one tensor, a whole tensor
// beside slices, and one byte.
std::vector<StreamUnitSpec> sliced_units(const Checkpoint& ck, Tier tier) {
  const TensorEntry& w = ck.at("w");
  return {
      {"rows", {"w"}, tier, {row_range(w, 3, 17)}},
      {"odd bytes", {"w", "b"}, tier, {{1, 4095}, {4097, 12345}}},
      {"to the end",
       {"a", "w"},
       tier,
       {{3, ByteRange::kToEnd}, {w.nbytes - 5000, ByteRange::kToEnd}}},
      {"three of w",
       {"w", "b", "w", "w"},
       tier,
       {row_range(w, 900, 1000), ByteRange{}, {777, 333333}, row_range(w, 0, 2)}},
      {"one byte", {"b"}, tier, {{ck.at("b").nbytes - 1, 1}}},
  };
}

// Every tensor (slice) of the acquired unit holds the bytes its spec names.
void expect_unit_bytes(const Checkpoint& ck, const StreamUnitSpec& spec, const UnitLayout& layout,
                       const UnitView& view) {
  ASSERT_EQ(layout.tensor_nbytes.size(), spec.tensors.size());
  for (std::size_t i = 0; i < spec.tensors.size(); ++i) {
    const TensorEntry& t = ck.at(spec.tensors[i]);
    const uint64_t offset = spec.slices[i].offset_bytes;
    const uint64_t n =
        spec.slices[i].nbytes == ByteRange::kToEnd ? t.nbytes - offset : spec.slices[i].nbytes;
    EXPECT_EQ(layout.tensor_nbytes[i], n) << spec.name << " #" << i;
    EXPECT_EQ(first_mismatch(view.tensor(i), t.name, offset, n), -1) << spec.name << " #" << i;
  }
}

const CheckpointFormat kFormats[] = {CheckpointFormat::safetensors, CheckpointFormat::torch_zip,
                                     CheckpointFormat::ferry_pack};

class SliceEngineTest : public ::testing::TestWithParam<BackendCase> {};

// Every format × tier through this engine: streamed (twice round, so the cyclic prefetch refills
// slots), resident (host) and mapped.
TEST_P(SliceEngineTest, SlicesHoldTheirBytesInEveryFormatAndTier) {
  for (const CheckpointFormat format : kFormats) {
    SCOPED_TRACE(std::string(format_name(format)));
    TempDir dir;
    const Checkpoint ck = Checkpoint::open(write_model(dir.path(), format), VerifyMode::always);
    ASSERT_EQ(ck.format(), format);
    for (const Tier tier : {Tier::disk, Tier::host, Tier::mapped}) {
      SCOPED_TRACE(std::string(tier_name(tier)));
      const auto specs = sliced_units(ck, tier);
      LayerStreamer s(ck, specs, streamer_options(quiet_io(GetParam().kind, GetParam().direct)));
      ASSERT_NE(s.describe().find(to_string(GetParam().kind)), std::string::npos) << s.describe();
      for (int round = 0; round < 2; ++round) {
        for (std::size_t u = 0; u < specs.size(); ++u) {
          const UnitView view = s.acquire(u);
          expect_unit_bytes(ck, specs[u], s.layout(u), view);
          s.release(u);
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, SliceEngineTest, ::testing::ValuesIn(test::kBackendCases),
                         [](const ::testing::TestParamInfo<BackendCase>& c) {
                           return std::string(c.param.name);
                         });

// A resident unit holds only its slice's bytes (4 KiB-aligned), not its tensor's.
TEST(Slices, AResidentSliceHoldsOnlyItsBytes) {
  TempDir dir;
  const Checkpoint ck = Checkpoint::open(write_model(dir.path(), CheckpointFormat::safetensors));
  const TensorEntry& w = ck.at("w");
  const std::vector<StreamUnitSpec> specs = {{"rows", {"w"}, Tier::host, {row_range(w, 500, 510)}}};
  LayerStreamer s(ck, specs, streamer_options(quiet_io()));
  const AlignedRange want = aligned_superset(w.offset_bytes + 500 * kWRow, 10 * kWRow);
  EXPECT_EQ(s.resident_bytes(), want.nbytes);
  EXPECT_LT(s.resident_bytes(), w.nbytes / 50);
  EXPECT_EQ(s.staging_bytes(), 0u);
  EXPECT_EQ(first_mismatch(s.acquire(0).tensor(0), "w", 500 * kWRow, 10 * kWRow), -1);
}

TEST(Slices, UnitBytesCountOnlyTheSlices) {
  TempDir dir;
  const Checkpoint ck = Checkpoint::open(write_model(dir.path(), CheckpointFormat::safetensors));
  const TensorEntry& w = ck.at("w");
  const TensorEntry& b = ck.at("b");
  const std::vector<StreamUnitSpec> specs = {
      {"whole", {"w"}},
      {"slice", {"w"}, Tier::disk, {{5000, 10000}}},
      {"two far apart", {"w", "w"}, Tier::disk, {{0, 100}, {w.nbytes - 100, 100}}},
      {"slice and whole",
       {"w", "b"},
       Tier::disk,
       {{w.nbytes - 10, ByteRange::kToEnd}, ByteRange{}}},
  };
  const auto bytes = LayerStreamer::unit_bytes(ck, specs);
  ASSERT_EQ(bytes.size(), 4u);
  EXPECT_EQ(bytes[0], aligned_superset(w.offset_bytes, w.nbytes).nbytes);
  EXPECT_EQ(bytes[1], aligned_superset(w.offset_bytes + 5000, 10000).nbytes);
  // Two small pieces more than the merge gap apart are two reads of one or two aligned pages.
  const UnitLayout far = plan_unit_reads(ck, specs[2]);
  ASSERT_EQ(far.ranges.size(), 2u);
  EXPECT_EQ(bytes[2], aligned_superset(w.offset_bytes, 100).nbytes +
                          aligned_superset(w.offset_bytes + w.nbytes - 100, 100).nbytes);
  // Neighbours are merged as whole tensors are: the end of w and all of b are one read.
  const UnitLayout near = plan_unit_reads(ck, specs[3]);
  ASSERT_EQ(near.ranges.size(), 1u);
  EXPECT_EQ(bytes[3], aligned_superset(w.offset_bytes + w.nbytes - 10,
                                       b.offset_bytes + b.nbytes - (w.offset_bytes + w.nbytes - 10))
                          .nbytes);
  // The layout's byte counts are the streamer's.
  LayerStreamer s(ck, specs, streamer_options(quiet_io()));
  for (std::size_t u = 0; u < specs.size(); ++u) EXPECT_EQ(s.layout(u).nbytes, bytes[u]) << u;
  EXPECT_EQ(s.staging_bytes(), 2 * bytes[0]);
}

// Matrix rows of any dtype: packed q8 rows are packed_row_bytes(q8, cols) each.
TEST(Slices, RowRangesOfPackedMatrices) {
  TempDir dir;
  const Checkpoint ck = Checkpoint::open(write_model(dir.path(), CheckpointFormat::ferry_pack));
  const TensorEntry& q = ck.at("q");
  const uint64_t row = packed_row_bytes(DType::q8, 1000);
  EXPECT_EQ(row_range(q, 10, 20), (ByteRange{10 * row, 10 * row}));
  EXPECT_EQ(row_range(q, 0, 300), (ByteRange{0, q.nbytes}));
  EXPECT_EQ(row_range(ck.at("w"), 2, 3), (ByteRange{2 * kWRow, kWRow}));
  const std::vector<StreamUnitSpec> specs = {{"q rows", {"q"}, Tier::disk, {row_range(q, 10, 20)}}};
  LayerStreamer s(ck, specs, streamer_options(quiet_io()));
  std::vector<std::byte> want(10 * row);
  ck.read_range(q, 10 * row, want.size(), want.data());
  EXPECT_EQ(std::memcmp(s.acquire(0).tensor(0), want.data(), want.size()), 0);
}

void flip(const fs::path& file, uint64_t at) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(at));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x10);
  f.seekp(static_cast<std::streamoff>(at));
  f.write(&c, 1);
}

// A pack slice is read widened to whole checksum chunks and all of them are checked: the chosen
// behaviour is that a damaged byte anywhere in a checksum chunk the slice touches is reported,
// even outside the slice (the chunk cannot vouch for the slice's bytes otherwise); damage in a
// chunk the slice does not touch is not seen.
TEST(Slices, APackSliceIsVerifiedInWholeChecksumChunks) {
  constexpr uint64_t kChunk = detail::kPackChecksumChunk;
  TempDir dir;
  const fs::path file = write_model(dir.path(), CheckpointFormat::ferry_pack);
  uint64_t blob = 0;  // "layer 0" starts where a does
  const auto slice_spec = [](const Checkpoint& ck, Tier tier) {
    // Rows [400, 410) of w: blob bytes [532864, 546184), inside checksum chunk 2.
    return std::vector<StreamUnitSpec>{{"w rows", {"w"}, tier, {row_range(ck.at("w"), 400, 410)}}};
  };
  {
    const Checkpoint ck = Checkpoint::open(file, VerifyMode::always);
    blob = ck.at("a").offset_bytes;
    ASSERT_EQ(ck.at("w").offset_bytes, blob + 64);
    EXPECT_EQ(ck.checksum_chunk_bytes(), kChunk);
    const UnitLayout l = plan_unit_reads(ck, slice_spec(ck, Tier::disk)[0]);
    ASSERT_EQ(l.ranges.size(), 1u);
    EXPECT_EQ(l.ranges[0].offset_bytes, blob + 2 * kChunk);  // exactly chunk 2
    EXPECT_EQ(l.nbytes, kChunk);
    EXPECT_EQ(l.tensor_offsets[0], 64 + 400 * kWRow - 2 * kChunk);
    // Verification off: nothing to widen for, so only the slice's pages are read.
    const Checkpoint off = Checkpoint::open(file, VerifyMode::off);
    EXPECT_EQ(plan_unit_reads(off, slice_spec(off, Tier::disk)[0]).nbytes,
              aligned_superset(blob + 64 + 400 * kWRow, 10 * kWRow).nbytes);
    EXPECT_EQ(off.checked_range(0, blob + 100, 5), (ByteRange{blob + 100, 5}));
    // A whole-blob unit reads exactly its blob, as before slices.
    const UnitLayout whole = plan_unit_reads(ck, {"a", "w", "b"});
    ASSERT_EQ(whole.ranges.size(), 1u);
    EXPECT_EQ(whole.ranges[0].offset_bytes, blob);
    EXPECT_EQ(whole.ranges[0].min_bytes, ck.at("b").offset_bytes + ck.at("b").nbytes - blob);
  }
  const auto expect_caught = [&](const char* what) {
    SCOPED_TRACE(what);
    const Checkpoint ck = Checkpoint::open(file, VerifyMode::always);
    LayerStreamer s(ck, slice_spec(ck, Tier::disk), streamer_options(quiet_io()));
    const std::string msg = error_text<FormatError>([&] { s.acquire(0); });
    EXPECT_NE(msg.find("layer 0 is corrupt"), std::string::npos) << msg;
    EXPECT_NE(msg.find("tensor 'w'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(fmt::format("bytes [{}, {})", blob + 2 * kChunk, blob + 3 * kChunk)),
              std::string::npos)
        << msg;
    // Resident: at construction.
    EXPECT_THROW(
        [&] { LayerStreamer r(ck, slice_spec(ck, Tier::host), streamer_options(quiet_io())); }(),
        FormatError);
  };
  flip(file, blob + 540000);  // inside the slice
  expect_caught("inside the slice");
  flip(file, blob + 540000);  // undone
  flip(file, blob + 700000);  // outside the slice, in its chunk (2)
  expect_caught("outside the slice, same chunk");
  flip(file, blob + 700000);
  flip(file, blob + 1000000);  // in chunk 3, which the slice does not touch
  const Checkpoint ck = Checkpoint::open(file, VerifyMode::always);
  LayerStreamer s(ck, slice_spec(ck, Tier::disk), streamer_options(quiet_io()));
  EXPECT_EQ(first_mismatch(s.acquire(0).tensor(0), "w", 400 * kWRow, 10 * kWRow), -1);
}

// The lm_head case in small: one 64 MiB matrix streamed as 64 row chunks of 1 MiB through 3 slots,
// twice round (the cyclic prefetch wraps from the last chunk to the first).
TEST(Slices, ManySmallSlicesStreamCyclicallyThroughThreeSlots) {
  constexpr int64_t kRows = 64;
  constexpr int64_t kCols = int64_t{256} * 1024;  // f32: 1 MiB a row
  constexpr uint64_t kRowBytes = kCols * 4;
  TempDir dir;
  const fs::path file = dir / "model.ferry";
  const std::vector<PackBlobSpec> blobs = {{"lm_head", {{"h", DType::f32, Shape{kRows, kCols}}}}};
  write_pack(file, blobs,
             [](std::size_t, std::size_t, std::span<std::byte> dst) { fill_pattern("h", 0, dst); });
  const Checkpoint ck = Checkpoint::open(file, VerifyMode::always);
  std::vector<StreamUnitSpec> specs;
  for (int64_t r = 0; r < kRows; ++r)
    specs.push_back(
        {fmt::format("h rows {}", r), {"h"}, Tier::disk, {row_range(ck.at("h"), r, r + 1)}});
  // Each row is 4 whole checksum chunks, 4 KiB-aligned: a slot is one row.
  for (const uint64_t n : LayerStreamer::unit_bytes(ck, specs)) ASSERT_EQ(n, kRowBytes);
  LayerStreamer s(ck, specs, streamer_options(quiet_io(), 3));
  EXPECT_EQ(s.slot_count(), 3u);
  EXPECT_EQ(s.staging_bytes(), 3 * kRowBytes);
  for (int round = 0; round < 2; ++round) {
    for (std::size_t u = 0; u < specs.size(); ++u) {
      const UnitView v = s.acquire(u);
      ASSERT_EQ(first_mismatch(v.tensor(0), "h", u * kRowBytes, kRowBytes), -1)
          << round << " " << u;
      s.release(u);
    }
  }
  EXPECT_EQ(s.stats().units_acquired, 2u * kRows);
  EXPECT_EQ(s.stats().bytes_acquired, 2 * kRows * kRowBytes);
  // Only prefetches beyond the last acquire are read and not used: at most one a slot.
  EXPECT_LE(s.stats().units_streamed, 2u * kRows + 3);
}

TEST(Slices, BadSlicesAreRefusedNamingTheTensor) {
  TempDir dir;
  const Checkpoint ck = Checkpoint::open(write_model(dir.path(), CheckpointFormat::safetensors));
  const TensorEntry& w = ck.at("w");  // 1332000 bytes
  const auto refused = [&](const StreamUnitSpec& spec) {
    std::string a = error_text<InvalidArgument>([&] { LayerStreamer::unit_bytes(ck, {spec}); });
    const std::string b = error_text<InvalidArgument>(
        [&] { LayerStreamer s(ck, {spec}, streamer_options(quiet_io())); });
    EXPECT_EQ(a, b);
    return a;
  };
  std::string msg = refused({"layer 3", {"w"}, Tier::disk, {{1331000, 2000}}});
  EXPECT_NE(
      msg.find(
          "layer 3: slice [1331000, 1333000) of tensor 'w' (f32 [1000, 333], 1332000 bytes) runs "
          "past the tensor's end"),
      std::string::npos)
      << msg;
  msg = refused({"layer 3", {"w"}, Tier::mapped, {{1332000, ByteRange::kToEnd}}});
  EXPECT_NE(msg.find("slice [1332000, end) of tensor 'w'"), std::string::npos) << msg;
  msg = refused({"layer 3", {"w"}, Tier::host, {{UINT64_MAX - 5, 10}}});
  EXPECT_NE(msg.find("runs past the tensor's end"), std::string::npos) << msg;
  msg = refused({"layer 3", {"w"}, Tier::disk, {{10, 0}}});
  EXPECT_NE(msg.find("slice [10, 10) of tensor 'w' is empty"), std::string::npos) << msg;
  msg = refused({"layer 3", {"w", "b"}, Tier::disk, {{0, 10}}});
  EXPECT_NE(msg.find("layer 3: 1 slices for 2 tensors"), std::string::npos) << msg;
  msg = error_text<InvalidArgument>([&] { row_range(w, 990, 1001); });
  EXPECT_NE(msg.find("rows [990, 1001) of tensor 'w' (f32 [1000, 333])"), std::string::npos) << msg;
  EXPECT_THROW(row_range(w, 5, 5), InvalidArgument);
  EXPECT_THROW(row_range(w, -1, 5), InvalidArgument);
}

// A file truncated while a unit computes from its mapping (--mmap): the read past the new end
// raises SIGBUS in whatever thread touches it, which ends ferry with a message naming the file
// instead of a bare "Bus error" and a core.
TEST(MappedTierDeathTest, AFileTruncatedUnderItsMappingIsNamed) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  TempDir dir;
  const fs::path file = write_model(dir.path(), CheckpointFormat::ferry_pack);
  const Checkpoint ck = Checkpoint::open(file);
  const std::vector<StreamUnitSpec> specs = {{"layer 0", {"w"}, Tier::mapped}};
  EXPECT_EXIT(
      {
        LayerStreamer s(ck, specs, streamer_options(quiet_io()));
        const UnitView view = s.acquire(0);
        fs::resize_file(file, 0);
        volatile std::byte sink = view.tensor(0)[ck.at("w").nbytes - 1];
        (void)sink;
      },
      ::testing::ExitedWithCode(1), "shrank while ferry was computing from its memory map");
  EXPECT_TRUE(fs::exists(file));
}

}  // namespace
}  // namespace ferry::offload
