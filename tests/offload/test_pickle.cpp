// The safe pickle interpreter on its own: real torch output, hostile programs, limits.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "offload/detail/pickle.hpp"
#include "offload/detail/source.hpp"
#include "offload/detail/zip.hpp"
#include "runtime/core/error.hpp"
#include "tests/offload/checkpoint_builders.hpp"
#include "tests/offload/error_text.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload::detail {
namespace {

using ::testing::HasSubstr;
using namespace std::string_literals;

std::string pickle_error(const std::string& bytes) {
  return test::error_text<FormatError>([&] { (void)parse_torch_pickle(bytes, "t.pkl"); });
}

TEST(Pickle, ReadsRealTorchOutput) {
  const std::string file = test::read_file(test::data_dir() / "gptj/tiny-f32/pytorch_model.bin");
  const ReadAt read_at = buffer_read_at(file, "pytorch_model.bin");
  const ZipDirectory dir = ZipDirectory::read(file.size(), read_at, "pytorch_model.bin");
  const ZipEntry* pkl = dir.find("pytorch_model/data.pkl");
  ASSERT_NE(pkl, nullptr);
  const std::vector<PickledTensor> t =
      parse_torch_pickle(dir.read_entry(*pkl, read_at, kMaxPickleBytes), "data.pkl");
  ASSERT_FALSE(t.empty());
  EXPECT_EQ(t[0].name, "transformer.wte.weight");
  EXPECT_EQ(t[0].storage_type, "FloatStorage");
  EXPECT_EQ(t[0].dtype, DType::f32);
  EXPECT_EQ(t[0].storage_key, "0");
  EXPECT_EQ(t[0].storage_numel, 64000u);
  EXPECT_EQ(t[0].storage_offset, 0u);
  EXPECT_EQ(t[0].size, (std::vector<int64_t>{1000, 64}));
  EXPECT_EQ(t[0].stride, (std::vector<int64_t>{64, 1}));
  const TorchTensorLayout l = torch_tensor_layout(t[0], "x");
  EXPECT_EQ(l.shape, (Shape{1000, 64}));
  EXPECT_EQ(l.nbytes, 256000u);
}

TEST(Pickle, ParameterWrappersAndMetadataAreAccepted) {
  // torch.nn.Parameter pickles through _rebuild_parameter; a state dict's _metadata arrives by
  // BUILD; protocol 4 adds FRAME, SHORT_BINUNICODE, MEMOIZE and STACK_GLOBAL.
  test::PickleWriter w;
  w.proto(4).raw(std::string("\x95\x10\0\0\0\0\0\0\0", 9));
  w.raw(
       "\x8c\x0b"
       "collections")
      .op('\x94')
      .raw("\x8c\x0bOrderedDict")
      .op('\x94')
      .op('\x93');
  w.op(')').op('R').op('\x94').mark();
  w.raw("\x8c\x01w").global("torch._utils", "_rebuild_parameter").mark();
  w.global("torch._utils", "_rebuild_tensor_v2").mark();
  w.mark().str("storage").global("torch", "BFloat16Storage").str("k").str("cpu").integer(4);
  w.tuple().op('Q').integer(0).ints_tuple({2, 2}).ints_tuple({2, 1}).op('\x88');
  w.op('}').op('N').tuple().op('R');  // 7 arguments: metadata None
  w.op('\x88').op('}').tuple().op('R');
  w.op('u');
  w.op('}').str("_metadata").op('}').op('s').op('b');
  w.stop();
  const std::vector<PickledTensor> t = parse_torch_pickle(w.bytes(), "t.pkl");
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].name, "w");
  EXPECT_EQ(t[0].dtype, DType::bf16);
  EXPECT_EQ(t[0].size, (std::vector<int64_t>{2, 2}));
}

TEST(Pickle, IntegerEncodings) {
  test::PickleWriter w;
  w.proto(2).op('}').mark();
  w.str("w").global("torch._utils", "_rebuild_tensor_v2").mark();
  w.mark().str("storage").global("torch", "ByteStorage").str("0").str("cpu");
  w.integer(5000000000LL);  // LONG1, 8 bytes
  w.tuple().op('Q').integer(4000000000LL).mark().integer(70000).op('t').ints_tuple({1});
  w.op('\x89').op('}').tuple().op('R').op('u').stop();
  const std::vector<PickledTensor> t = parse_torch_pickle(w.bytes(), "t.pkl");
  ASSERT_EQ(t.size(), 1u);
  EXPECT_EQ(t[0].storage_numel, 5000000000u);
  EXPECT_EQ(t[0].storage_offset, 4000000000u);
  EXPECT_EQ(t[0].size[0], 70000);

  // LONG1 is two's complement: 0xff as one byte is -1, a negative offset.
  test::PickleWriter neg;
  neg.proto(2).op('}').mark().str("w").global("torch._utils", "_rebuild_tensor_v2").mark();
  neg.mark().str("storage").global("torch", "ByteStorage").str("0").str("cpu").integer(1);
  neg.tuple().op('Q').raw("\x8a\x01\xff").ints_tuple({1}).ints_tuple({1});
  neg.op('\x89').op('}').tuple().op('R').op('u').stop();
  EXPECT_THAT(pickle_error(neg.bytes()), HasSubstr("tensor storage offset -1 is negative"));
}

TEST(Pickle, UnsupportedOpcodeNamesByteAndOffset) {
  test::PickleWriter w;
  w.proto(2).op('}').op('i');  // INST: protocol 0's arbitrary-class instantiation
  EXPECT_THAT(pickle_error(w.bytes()),
              HasSubstr("t.pkl byte 3: pickle opcode 0x69 ('i') is not supported"));
}

TEST(Pickle, GlobalOsSystemIsRefused) {
  test::PickleWriter w;
  w.proto(2).global("os", "system").str("rm -rf /").op('\x85').op('R').stop();
  EXPECT_THAT(pickle_error(w.bytes()),
              HasSubstr("t.pkl byte 2: pickle references the global 'os.system', which ferry "
                        "refuses to load"));
}

TEST(Pickle, StackGlobalBuiltinsEvalIsRefused) {
  test::PickleWriter w;
  w.proto(4)
      .raw(
          "\x8c\x08"
          "builtins")
      .raw(
          "\x8c\x04"
          "eval")
      .op('\x93');
  EXPECT_THAT(pickle_error(w.bytes()),
              HasSubstr("byte 18: pickle references the global 'builtins.eval'"));
}

TEST(Pickle, TorchGlobalsOutsideTheAllowListAreRefused) {
  test::PickleWriter w;
  w.proto(2).global("torch", "load");
  EXPECT_THAT(pickle_error(w.bytes()), HasSubstr("the global 'torch.load'"));
}

TEST(Pickle, TruncatedPickle) {
  const std::string full =
      test::make_state_dict_pickle({{"w", "FloatStorage", "0", 6, 0, {2, 3}, {}}});
  EXPECT_THAT(pickle_error(full.substr(0, full.size() - 1)), HasSubstr("t.pkl ends at byte"));
  // Byte 30 starts BINUNICODE 'w'; cut inside its length field.
  EXPECT_THAT(pickle_error(full.substr(0, 33)),
              HasSubstr("t.pkl ends at byte 33 inside the opcode at byte 30 (which needs "
                        "bytes up to 35); the checkpoint is truncated or corrupt"));
}

TEST(Pickle, StructuralErrors) {
  EXPECT_THAT(pickle_error("\x80\x02."), HasSubstr("pops an empty stack"));
  EXPECT_THAT(pickle_error("\x80\x02h\x05"), HasSubstr("memo slot 5 that was never stored"));
  EXPECT_THAT(pickle_error("\x80\x02t"), HasSubstr("needs a MARK but none is set"));
  EXPECT_THAT(pickle_error("\x80\x02(0"), HasSubstr("pops an empty stack"));  // MARK not crossed
  EXPECT_THAT(pickle_error("\x80\x02N."), HasSubstr("pickle holds a None, not a state dict"));
  EXPECT_THAT(pickle_error("\x80\x06"), HasSubstr("pickle protocol 6"));
  EXPECT_THAT(pickle_error("\x80\x02}X\x01\0\0\0aK\x01s."s),
              HasSubstr("state dict entry 'a' is a int, not a tensor"));
  EXPECT_THAT(pickle_error("\x80\x02]K\x01K\x02s"), HasSubstr("SETITEM(S) on a list, not a dict"));
  EXPECT_THAT(pickle_error("\x80\x02"
                           "cfoo\x01"
                           "bar"),
              HasSubstr("without a newline-terminated name"));
}

TEST(Pickle, CyclesAndDeepNestingAreHarmless) {
  // A list appended to itself, then 200k nested lists: no leak, no recursion.
  std::string cyc =
      "\x80\x02]q\x00h\x00"
      "a"s;
  cyc += std::string(200000, ']');
  cyc += std::string(199999, 'a');
  cyc += "0.";
  EXPECT_THAT(pickle_error(cyc), HasSubstr("pickle holds a list, not a state dict"));
}

TEST(Pickle, OpcodeLimit) {
  const std::string many(kMaxPickleOps + 1, 'N');
  EXPECT_THAT(pickle_error(many), HasSubstr("runs more than 4194304 opcodes"));
}

// The shape of a hostile 9.8 MB pickle that grew without bound: one large tuple memoised, then
// REDUCE after REDUCE of _rebuild_tensor_v2 taking it as the size and the stride. Each call
// copied it; now the copies are charged against a budget proportional to the file.
TEST(Pickle, ALargeObjectReferencedByEveryCallIsBounded) {
  test::PickleWriter w;
  w.proto(2).ints_tuple(std::vector<int64_t>(100000, 1)).op('q').raw("\x01").op('0');
  w.global("torch._utils", "_rebuild_tensor_v2").op('q').raw("\x02").op('0');
  w.mark().str("storage").global("torch", "FloatStorage").str("0").str("cpu").integer(1);
  w.tuple().op('Q').op('q').raw("\x03").op('0');
  for (int i = 0; i < 200; ++i) {
    w.op('h').raw("\x02").mark().op('h').raw("\x03").integer(0);
    w.op('h').raw("\x01").op('h').raw("\x01").op(')').op('N').tuple().op('R').op('0');
  }
  w.op('}').stop();
  EXPECT_THAT(pickle_error(w.bytes()), HasSubstr("copies more than"));
}

TEST(Pickle, DuplicateTensorNames) {
  const std::string p = test::make_state_dict_pickle(
      {{"w", "FloatStorage", "0", 1, 0, {1}, {}}, {"w", "FloatStorage", "0", 1, 0, {1}, {}}});
  EXPECT_THAT(pickle_error(p), HasSubstr("state dict holds tensor 'w' twice"));
}

TEST(Pickle, LayoutChecks) {
  PickledTensor t;
  t.name = "w";
  t.storage_key = "0";
  t.storage_type = "FloatStorage";
  t.dtype = DType::f32;
  t.storage_numel = 100;
  t.size = {1, 2, 3, 4, 1};
  t.stride = {24, 12, 4, 1, 1};
  EXPECT_THAT(test::error_text<FormatError>([&] { (void)torch_tensor_layout(t, "f"); }),
              HasSubstr("tensor 'w' has rank 5"));
  t.size = {2, -3};
  t.stride = {3, 1};
  EXPECT_THAT(test::error_text<FormatError>([&] { (void)torch_tensor_layout(t, "f"); }),
              HasSubstr("tensor 'w' has negative size 2, -3"));
  t.size = {2, 3};
  t.stride = {1};
  EXPECT_THAT(test::error_text<FormatError>([&] { (void)torch_tensor_layout(t, "f"); }),
              HasSubstr("has 2 sizes but 1 strides"));
  t.size = {0, 5};
  t.stride = {7, 7};  // empty: no layout to check
  EXPECT_EQ(torch_tensor_layout(t, "f").nbytes, 0u);
  t.storage_offset = 10;
  t.size = {3, 4};
  t.stride = {4, 1};
  const TorchTensorLayout l = torch_tensor_layout(t, "f");
  EXPECT_EQ(l.offset_bytes, 40u);
  EXPECT_EQ(l.nbytes, 48u);
  EXPECT_EQ(l.storage_nbytes, 400u);
}

}  // namespace
}  // namespace ferry::offload::detail
