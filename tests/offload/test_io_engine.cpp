// Tests of the I/O engine: every backend reads random ranges byte-exactly; faults injected at
// the completion (EIO, short reads, EAGAIN storms, O_DIRECT refusals), truncated files and an
// unavailable io_uring give the documented error or fallback, never a hang or wrong bytes.
#include "offload/io_engine.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <ostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "offload/staging_pool.hpp"
#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/error.hpp"
#include "tests/offload/offload_cases.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::offload {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

constexpr uint64_t kChunk = 64 * 1024;
// Not a multiple of 4 KiB, so the last block of the file is partial.
constexpr uint64_t kFileBytes = 5 * 1024 * 1024 + 1234;

// The byte at offset i of a generated file: depends on i, so a byte read from the wrong offset
// does not match.
uint8_t byte_at(uint64_t i) {
  uint64_t x = (i / 8 + 1) * 0x9E3779B97F4A7C15ULL;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 32;
  return static_cast<uint8_t>(x >> ((i % 8) * 8));
}

void write_pattern_file(const fs::path& path, uint64_t nbytes) {
  std::string bytes(nbytes, '\0');
  for (uint64_t i = 0; i < nbytes; ++i) bytes[i] = static_cast<char>(byte_at(i));
  test::write_file(path, bytes);
}

// Index of the first byte of dst[0, n) that is not file byte offset + i, or -1.
int64_t first_mismatch(const std::byte* dst, uint64_t offset, uint64_t n) {
  for (uint64_t i = 0; i < n; ++i)
    if (static_cast<uint8_t>(dst[i]) != byte_at(offset + i)) return static_cast<int64_t>(i);
  return -1;
}

using test::BackendCase;
constexpr const auto& kCases = test::kBackendCases;

// Default options that keep fallback notes off stderr (the tests read describe() instead).
IoOptions quiet(IoBackendKind kind = IoBackendKind::automatic, bool direct = true) {
  IoOptions o;
  o.backend = kind;
  o.direct = direct;
  o.report_fallbacks = false;
  return o;
}

IoOptions options_for(const BackendCase& c) {
  IoOptions o;
  o.backend = c.kind;
  o.direct = c.direct;
  o.queue_depth = 4;
  o.chunk_bytes = kChunk;
  o.report_fallbacks = false;
  return o;
}

class IoEngineBackendTest : public ::testing::TestWithParam<BackendCase> {
 protected:
  void SetUp() override {
    path_ = dir_ / "data.bin";
    write_pattern_file(path_, kFileBytes);
  }
  TempDir dir_;
  fs::path path_;
};

TEST_P(IoEngineBackendTest, UsesTheBackendAskedFor) {
  IoEngine engine(options_for(GetParam()));
  EXPECT_EQ(engine.backend(), GetParam().kind) << engine.describe();
  const IoFileIndex f = engine.open(path_);
  EXPECT_EQ(engine.file_size(f), kFileBytes);
  EXPECT_EQ(engine.path(f), path_);
  EXPECT_EQ(engine.is_direct(f), GetParam().direct);
  EXPECT_EQ(engine.alignment(f), GetParam().direct ? kDirectIoAlignment : 1U);
}

TEST_P(IoEngineBackendTest, RandomRangesAreByteExact) {
  IoEngine engine(options_for(GetParam()));
  const IoFileIndex f = engine.open(path_);
  std::mt19937_64 rng(42);
  struct Wanted {
    AlignedRange range;
    AlignedBuffer buffer;
  };
  for (int batch = 0; batch < 20; ++batch) {
    std::vector<Wanted> wanted;
    std::vector<ReadRequest> requests;
    for (int i = 0; i < 8; ++i) {
      uint64_t offset = rng() % kFileBytes;
      uint64_t n = rng() % (5 * kChunk);
      switch (i) {
        case 0:  // an aligned range crossing chunk boundaries
          offset = (rng() % 40) * kDirectIoAlignment;
          n = 3 * kChunk + 8 * kDirectIoAlignment;
          break;
        case 1:  // the tail of the file, up to EOF
          offset = kFileBytes - 1 - rng() % (2 * kChunk);
          n = kFileBytes - offset;
          break;
        case 2:  // zero-length
          n = 0;
          break;
        default:
          break;
      }
      n = std::min(n, kFileBytes - offset);
      const AlignedRange r = aligned_superset(offset, n);
      ASSERT_EQ(r.offset_bytes % kDirectIoAlignment, 0U);
      ASSERT_EQ(r.nbytes % kDirectIoAlignment, 0U);
      AlignedBuffer buffer(std::max<uint64_t>(r.nbytes, 1), kDirectIoAlignment);
      requests.push_back({f, r.offset_bytes, r.nbytes, buffer.data(), r.min_bytes()});
      wanted.push_back({r, std::move(buffer)});
    }
    IoTicket ticket = engine.submit(requests);
    ticket.wait();
    EXPECT_TRUE(ticket.poll());
    for (const Wanted& w : wanted) {
      const auto* got = w.buffer.as<std::byte>() + w.range.skip_bytes;
      const uint64_t offset = w.range.offset_bytes + w.range.skip_bytes;
      EXPECT_EQ(first_mismatch(got, offset, w.range.wanted_nbytes), -1)
          << "range at " << offset << " of " << w.range.wanted_nbytes << " bytes";
    }
  }
}

TEST_P(IoEngineBackendTest, ManyTicketsInFlightAtOnce) {
  IoEngine engine(options_for(GetParam()));
  const IoFileIndex f = engine.open(path_);
  constexpr uint64_t kSlice = 1024 * 1024;
  std::vector<AlignedBuffer> buffers;
  std::vector<IoTicket> tickets;
  for (uint64_t offset = 0; offset < kFileBytes; offset += kSlice) {
    const AlignedRange r = aligned_superset(offset, std::min(kSlice, kFileBytes - offset));
    buffers.emplace_back(r.nbytes, kDirectIoAlignment);
    const ReadRequest req{f, r.offset_bytes, r.nbytes, buffers.back().data(), r.min_bytes()};
    tickets.push_back(engine.submit({&req, 1}));
  }
  for (std::size_t i = tickets.size(); i-- > 0;) tickets[i].wait();  // out of order on purpose
  for (std::size_t i = 0; i < buffers.size(); ++i) {
    const uint64_t offset = i * kSlice;
    EXPECT_EQ(
        first_mismatch(buffers[i].as<std::byte>(), offset, std::min(kSlice, kFileBytes - offset)),
        -1);
  }
}

TEST_P(IoEngineBackendTest, UnalignedReadsWhereThePageCacheIsUsed) {
  if (GetParam().direct) GTEST_SKIP() << "O_DIRECT needs aligned reads";
  IoEngine engine(options_for(GetParam()));
  const IoFileIndex f = engine.open(path_);
  // An odd destination address proves the buffered path makes no alignment assumption.
  std::vector<std::byte> storage(300'001);
  const ReadRequest req{f, 777'777, 300'000, storage.data() + 1};
  engine.read({&req, 1});
  EXPECT_EQ(first_mismatch(storage.data() + 1, 777'777, 300'000), -1);
}

TEST_P(IoEngineBackendTest, ReadPastEofIsTruncatedUnlessAllowed) {
  IoEngine engine(options_for(GetParam()));
  const IoFileIndex f = engine.open(path_);
  const uint64_t offset = kFileBytes / kDirectIoAlignment * kDirectIoAlignment - kChunk;
  const uint64_t n = 2 * kChunk;  // ends past EOF
  AlignedBuffer buffer(n, kDirectIoAlignment);
  ReadRequest req{f, offset, n, buffer.data()};
  try {
    engine.read({&req, 1});
    ADD_FAILURE() << "a read past EOF succeeded";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path_.string()), std::string::npos) << e.what();
  }
  req.min_bytes = kFileBytes - offset;
  engine.read({&req, 1});
  EXPECT_EQ(first_mismatch(buffer.as<std::byte>(), offset, kFileBytes - offset), -1);
}

TEST_P(IoEngineBackendTest, FileTruncatedAfterOpeningGivesAClearError) {
  if (GetParam().kind == IoBackendKind::mmap) GTEST_SKIP() << "mmap raises SIGBUS (bench only)";
  IoEngine engine(options_for(GetParam()));
  const IoFileIndex f = engine.open(path_);
  ASSERT_EQ(::truncate(path_.c_str(), 1024 * 1024 + 100), 0);
  const AlignedRange r = aligned_superset(0, kFileBytes);
  AlignedBuffer buffer(r.nbytes, kDirectIoAlignment);
  const ReadRequest req{f, r.offset_bytes, r.nbytes, buffer.data(), r.min_bytes()};
  try {
    engine.read({&req, 1});
    ADD_FAILURE() << "reading a truncated file succeeded";
  } catch (const FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path_.string()), std::string::npos) << what;
    EXPECT_NE(what.find("truncated"), std::string::npos) << what;
    EXPECT_NE(what.find("ends at byte 1048676"), std::string::npos) << what;
  }
}

TEST_P(IoEngineBackendTest, InjectedEioNamesFileOffsetAndErrnoAndLeaksNothing) {
  constexpr uint64_t kBadOffset = 3 * 1024 * 1024 + 5;
  IoOptions options = options_for(GetParam());
  options.test.on_completion = [](const IoFaultSite& site, int64_t result) -> int64_t {
    return site.offset_bytes <= kBadOffset && kBadOffset < site.offset_bytes + site.nbytes ? -EIO
                                                                                           : result;
  };
  IoEngine engine(options);
  const IoFileIndex f = engine.open(path_);
  const AlignedRange whole = aligned_superset(0, kFileBytes);
  StagingPool pool({.slot_count = 2, .slot_bytes = whole.nbytes, .pinner = nullptr});
  {
    const std::vector<MemoryRegion> regions = pool.regions();
    RegisteredBuffers registered = engine.register_buffers(regions);
    StagingLease lease = pool.acquire();
    const ReadRequest req{f, whole.offset_bytes, whole.nbytes, lease.data(), whole.min_bytes()};
    IoTicket ticket = engine.submit({&req, 1});
    try {
      ticket.wait();
      ADD_FAILURE() << "the injected EIO was not reported";
    } catch (const IoError& e) {
      const std::string what = e.what();
      EXPECT_EQ(e.code().value(), EIO);
      EXPECT_NE(what.find(path_.string()), std::string::npos) << what;
      // The failed piece is the chunk holding the bad byte.
      const uint64_t piece = kBadOffset / kChunk * kChunk;
      EXPECT_NE(what.find("at offset " + std::to_string(piece)), std::string::npos) << what;
      EXPECT_NE(what.find(std::strerror(EIO)), std::string::npos) << what;
    }
    EXPECT_TRUE(ticket.poll());            // nothing of the batch is in flight any more
    EXPECT_THROW(ticket.wait(), IoError);  // and the error stays
  }
  EXPECT_EQ(pool.free_slots(), pool.slot_count());
  // The registration was dropped with its handle: all of it can be registered again, and
  // reads that avoid the bad byte work.
  const std::vector<MemoryRegion> regions = pool.regions();
  RegisteredBuffers again = engine.register_buffers(regions);
  EXPECT_EQ(again.registered(), GetParam().kind == IoBackendKind::uring) << again.why();
  StagingLease lease = pool.acquire();
  const ReadRequest ok{f, 0, 2 * 1024 * 1024, lease.data()};
  engine.read({&ok, 1});
  EXPECT_EQ(first_mismatch(lease.data(), 0, 2 * 1024 * 1024), -1);
}

TEST_P(IoEngineBackendTest, ShortReadsAreResubmitted) {
  IoOptions options = options_for(GetParam());
  std::atomic<int> shortened{0};
  options.test.on_completion = [&](const IoFaultSite& site, int64_t result) -> int64_t {
    // Every first try returns a little over half, unaligned: O_DIRECT must resume aligned.
    if (site.attempt == 0 && result > 1) {
      ++shortened;
      return result / 2 + 1;
    }
    return result;
  };
  IoEngine engine(options);
  const IoFileIndex f = engine.open(path_);
  const AlignedRange r = aligned_superset(12345, kFileBytes - 12345);
  AlignedBuffer buffer(r.nbytes, kDirectIoAlignment);
  const ReadRequest req{f, r.offset_bytes, r.nbytes, buffer.data(), r.min_bytes()};
  engine.read({&req, 1});
  EXPECT_GT(shortened.load(), 0);
  EXPECT_EQ(first_mismatch(buffer.as<std::byte>() + r.skip_bytes, 12345, r.wanted_nbytes), -1);
}

TEST_P(IoEngineBackendTest, EagainStormStillGivesTheRightBytes) {
  IoOptions options = options_for(GetParam());
  std::atomic<int> refused{0};
  options.test.on_completion = [&](const IoFaultSite& site, int64_t result) -> int64_t {
    if (site.attempt < 6) {
      ++refused;
      return site.attempt % 2 == 0 ? -EAGAIN : -EINTR;
    }
    return result;
  };
  IoEngine engine(options);
  const IoFileIndex f = engine.open(path_);
  const AlignedRange r = aligned_superset(0, 1024 * 1024 + 17);
  AlignedBuffer buffer(r.nbytes, kDirectIoAlignment);
  const ReadRequest req{f, r.offset_bytes, r.nbytes, buffer.data(), r.min_bytes()};
  engine.read({&req, 1});
  EXPECT_GE(refused.load(), 6 * static_cast<int>(r.nbytes / kChunk));
  EXPECT_EQ(first_mismatch(buffer.as<std::byte>(), 0, r.wanted_nbytes), -1);
}

TEST_P(IoEngineBackendTest, EndlessEagainFailsInsteadOfHanging) {
  IoOptions options = options_for(GetParam());
  options.test.on_completion = [](const IoFaultSite&, int64_t) -> int64_t { return -EAGAIN; };
  IoEngine engine(options);
  const IoFileIndex f = engine.open(path_);
  AlignedBuffer buffer(kDirectIoAlignment, kDirectIoAlignment);
  const ReadRequest req{f, 8192, kDirectIoAlignment, buffer.data()};
  try {
    engine.read({&req, 1});
    ADD_FAILURE() << "an endless EAGAIN storm was not reported";
  } catch (const IoError& e) {
    EXPECT_EQ(e.code().value(), EAGAIN);
    EXPECT_NE(std::string(e.what()).find("at offset 8192"), std::string::npos) << e.what();
  }
}

TEST_P(IoEngineBackendTest, DroppedTicketAndEngineDrainInFlightReads) {
  AlignedBuffer buffer(kFileBytes / kDirectIoAlignment * kDirectIoAlignment, kDirectIoAlignment);
  IoTicket kept;
  {
    IoEngine engine(options_for(GetParam()));
    const IoFileIndex f = engine.open(path_);
    const ReadRequest req{f, 0, buffer.size(), buffer.data()};
    { IoTicket dropped = engine.submit({&req, 1}); }  // waits in its destructor
    kept = engine.submit({&req, 1});
  }  // the engine drains before it goes
  EXPECT_TRUE(kept.poll());
  kept.wait();
  EXPECT_EQ(first_mismatch(buffer.as<std::byte>(), 0, buffer.size()), -1);
}

INSTANTIATE_TEST_SUITE_P(Backends, IoEngineBackendTest, ::testing::ValuesIn(kCases),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

class IoEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_ / "data.bin";
    write_pattern_file(path_, kFileBytes);
  }
  TempDir dir_;
  fs::path path_;
};

TEST_F(IoEngineTest, AlignedSupersetCoversTheRange) {
  const AlignedRange r = aligned_superset(5000, 10000);
  EXPECT_EQ(r.offset_bytes, 4096U);
  EXPECT_EQ(r.skip_bytes, 904U);
  EXPECT_EQ(r.nbytes, 12288U);  // [4096, 16384) covers [5000, 15000)
  EXPECT_EQ(r.wanted_nbytes, 10000U);
  EXPECT_EQ(r.min_bytes(), 10904U);
  const AlignedRange aligned = aligned_superset(8192, 4096);
  EXPECT_EQ(aligned.offset_bytes, 8192U);
  EXPECT_EQ(aligned.nbytes, 4096U);
  EXPECT_EQ(aligned.skip_bytes, 0U);
  const AlignedRange empty = aligned_superset(5000, 0);
  EXPECT_EQ(empty.nbytes, 0U);
  EXPECT_THROW(aligned_superset(0, 1, 3000), InvalidArgument);
}

TEST_F(IoEngineTest, EmptyBatchesAndZeroLengthReadsCompleteAtOnce) {
  IoEngine engine(quiet());
  const IoFileIndex f = engine.open(path_);
  IoTicket empty = engine.submit({});
  EXPECT_TRUE(empty.poll());
  empty.wait();
  const ReadRequest zero{f, 4096, 0, nullptr};
  IoTicket t = engine.submit({&zero, 1});
  EXPECT_TRUE(t.poll());
  t.wait();
}

TEST_F(IoEngineTest, BadRequestsAreRefusedBeforeAnythingRuns) {
  IoEngine engine(quiet(IoBackendKind::uring));
  const IoFileIndex f = engine.open(path_);
  ASSERT_TRUE(engine.is_direct(f));
  AlignedBuffer buffer(2 * kDirectIoAlignment, kDirectIoAlignment);
  const ReadRequest unaligned{f, 100, kDirectIoAlignment, buffer.data()};
  try {
    engine.read({&unaligned, 1});
    ADD_FAILURE() << "an unaligned O_DIRECT read was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("aligned_superset"), std::string::npos) << e.what();
  }
  const ReadRequest misplaced{f, 0, kDirectIoAlignment, buffer.as<std::byte>() + 8};
  EXPECT_THROW(engine.read({&misplaced, 1}), InvalidArgument);
  const ReadRequest no_file{f + 7, 0, kDirectIoAlignment, buffer.data()};
  EXPECT_THROW(engine.read({&no_file, 1}), InvalidArgument);
  const ReadRequest no_dst{f, 0, kDirectIoAlignment, nullptr};
  EXPECT_THROW(engine.read({&no_dst, 1}), InvalidArgument);
  EXPECT_THROW(engine.open(dir_ / "missing.bin"), IoError);
}

TEST_F(IoEngineTest, UnavailableIoUringFallsBackToThePreadPool) {
  IoOptions options;
  options.report_fallbacks = false;
  options.test.uring_init_errno = ENOSYS;
  IoEngine engine(options);
  EXPECT_EQ(engine.backend(), IoBackendKind::pread);
  const std::string described = engine.describe();
  EXPECT_NE(described.find("pread pool"), std::string::npos) << described;
  EXPECT_NE(described.find("io_uring"), std::string::npos) << described;
  EXPECT_NE(described.find(std::strerror(ENOSYS)), std::string::npos) << described;
  const IoFileIndex f = engine.open(path_);
  AlignedBuffer buffer(kChunk * 3, kDirectIoAlignment);
  const ReadRequest req{f, kChunk, kChunk * 3, buffer.data()};
  engine.read({&req, 1});
  EXPECT_EQ(first_mismatch(buffer.as<std::byte>(), kChunk, kChunk * 3), -1);

  // Asked for by name, io_uring is not silently replaced.
  options.backend = IoBackendKind::uring;
  options.test.uring_init_errno = EPERM;
  try {
    IoEngine refused(options);
    ADD_FAILURE() << "io_uring was asked for by name but not available, and nothing said so";
  } catch (const IoError& e) {
    EXPECT_EQ(e.code().value(), EPERM);
    EXPECT_NE(std::string(e.what()).find("pread"), std::string::npos) << e.what();
  }
}

TEST_F(IoEngineTest, EnvironmentChoosesAndValidates) {
  struct EnvGuard {
    ~EnvGuard() {
      for (const char* v :
           {"FERRY_IO", "FERRY_IO_QUEUE_DEPTH", "FERRY_IO_CHUNK", "FERRY_IO_DIRECT"})
        ::unsetenv(v);
    }
  } guard;
  ::setenv("FERRY_IO", "pread", 1);
  ::setenv("FERRY_IO_QUEUE_DEPTH", "8", 1);
  ::setenv("FERRY_IO_CHUNK", "2MiB", 1);
  ::setenv("FERRY_IO_DIRECT", "0", 1);
  IoOptions o = IoOptions::from_env();
  EXPECT_EQ(o.backend, IoBackendKind::pread);
  EXPECT_EQ(o.queue_depth, 8U);
  EXPECT_EQ(o.chunk_bytes, 2U * 1024 * 1024);
  EXPECT_FALSE(o.direct);
  {
    IoEngine engine(IoOptions::from_env(quiet()));
    EXPECT_EQ(engine.backend(), IoBackendKind::pread);
  }

  const auto message_of = [] {
    try {
      IoOptions::from_env();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  ::setenv("FERRY_IO", "spdk", 1);
  EXPECT_NE(message_of().find("FERRY_IO=spdk"), std::string::npos) << message_of();
  ::setenv("FERRY_IO", "auto", 1);
  ::setenv("FERRY_IO_QUEUE_DEPTH", "0", 1);
  EXPECT_NE(message_of().find("FERRY_IO_QUEUE_DEPTH=0"), std::string::npos) << message_of();
  ::setenv("FERRY_IO_QUEUE_DEPTH", "16x", 1);
  EXPECT_NE(message_of().find("FERRY_IO_QUEUE_DEPTH=16x"), std::string::npos) << message_of();
  ::setenv("FERRY_IO_QUEUE_DEPTH", "16", 1);
  ::setenv("FERRY_IO_CHUNK", "3000", 1);
  EXPECT_NE(message_of().find("multiple of 4 KiB"), std::string::npos) << message_of();
  ::setenv("FERRY_IO_CHUNK", "lots", 1);
  EXPECT_NE(message_of().find("FERRY_IO_CHUNK=lots"), std::string::npos) << message_of();
  ::setenv("FERRY_IO_CHUNK", "1MiB", 1);
  ::setenv("FERRY_IO_DIRECT", "maybe", 1);
  EXPECT_NE(message_of().find("FERRY_IO_DIRECT=maybe"), std::string::npos) << message_of();
  EXPECT_THROW(IoEngine([] {
                 IoOptions too_deep;
                 too_deep.queue_depth = 5000;
                 return too_deep;
               }()),
               InvalidArgument);
}

// Whatever this kernel's tmpfs does with O_DIRECT (refused before Linux 6.6, accepted since),
// reads from /dev/shm come back right, and a refusal is reported.
TEST_F(IoEngineTest, TmpfsReadsWorkWhetherOrNotODirectIsAllowed) {
  if (!fs::is_directory("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  const fs::path shm = fs::path("/dev/shm") / ("ferry-io-test-" + std::to_string(::getpid()));
  write_pattern_file(shm, kFileBytes);
  struct Remove {
    fs::path p;
    ~Remove() { fs::remove(p); }
  } remove{shm};
  for (const IoBackendKind kind : {IoBackendKind::uring, IoBackendKind::pread}) {
    IoEngine engine(quiet(kind));
    const IoFileIndex f = engine.open(shm);
    if (!engine.is_direct(f)) {
      EXPECT_NE(engine.describe().find("buffered reads for " + shm.string()), std::string::npos)
          << engine.describe();
    }
    const AlignedRange r = aligned_superset(4321, kFileBytes - 4321);
    AlignedBuffer buffer(r.nbytes, kDirectIoAlignment);
    const ReadRequest req{f, r.offset_bytes, r.nbytes, buffer.data(), r.min_bytes()};
    engine.read({&req, 1});
    EXPECT_EQ(first_mismatch(buffer.as<std::byte>() + r.skip_bytes, 4321, r.wanted_nbytes), -1);
  }
}

TEST_F(IoEngineTest, ODirectRefusedAtOpenFallsBackToBufferedAndSaysSo) {
  for (const IoBackendKind kind : {IoBackendKind::uring, IoBackendKind::pread}) {
    IoOptions options = quiet(kind);
    options.test.open_direct_errno = EINVAL;
    IoEngine engine(options);
    const IoFileIndex f = engine.open(path_);
    EXPECT_FALSE(engine.is_direct(f));
    EXPECT_EQ(engine.alignment(f), 1U);
    const std::string described = engine.describe();
    EXPECT_NE(described.find("buffered reads for " + path_.string()), std::string::npos)
        << described;
    EXPECT_NE(described.find("refused O_DIRECT"), std::string::npos) << described;
    // Buffered now, so an unaligned read into unaligned memory is fine.
    std::vector<std::byte> storage(100'001);
    const ReadRequest req{f, 99'999, 100'000, storage.data() + 1};
    engine.read({&req, 1});
    EXPECT_EQ(first_mismatch(storage.data() + 1, 99'999, 100'000), -1);
  }
}

TEST_F(IoEngineTest, ODirectRefusedAtReadFallsBackToBufferedAndSaysSo) {
  for (const IoBackendKind kind : {IoBackendKind::uring, IoBackendKind::pread}) {
    IoOptions options = quiet(kind);
    std::atomic<bool> refused{false};
    options.test.on_completion = [&](const IoFaultSite&, int64_t result) -> int64_t {
      // The first read on the O_DIRECT descriptor is refused, as some filesystems do.
      return refused.exchange(true) ? result : -EINVAL;
    };
    IoEngine engine(options);
    const IoFileIndex f = engine.open(path_);
    EXPECT_TRUE(engine.is_direct(f));
    const AlignedRange r = aligned_superset(0, kFileBytes);
    AlignedBuffer buffer(r.nbytes, kDirectIoAlignment);
    const ReadRequest req{f, r.offset_bytes, r.nbytes, buffer.data(), r.min_bytes()};
    engine.read({&req, 1});
    EXPECT_EQ(first_mismatch(buffer.as<std::byte>(), 0, kFileBytes), -1);
    EXPECT_FALSE(engine.is_direct(f));
    EXPECT_NE(engine.describe().find("refused O_DIRECT"), std::string::npos) << engine.describe();
  }
}

TEST_F(IoEngineTest, EinvalOnABufferedFileIsAnError) {
  IoOptions options = quiet(IoBackendKind::pread, false);
  options.test.on_completion = [](const IoFaultSite&, int64_t) -> int64_t { return -EINVAL; };
  IoEngine engine(options);
  const IoFileIndex f = engine.open(path_);
  AlignedBuffer buffer(kDirectIoAlignment, kDirectIoAlignment);
  const ReadRequest req{f, 0, kDirectIoAlignment, buffer.data()};
  try {
    engine.read({&req, 1});
    ADD_FAILURE() << "EINVAL on a buffered read was swallowed";
  } catch (const IoError& e) {
    EXPECT_EQ(e.code().value(), EINVAL);
  }
}

TEST_F(IoEngineTest, RegisteredBuffersAreUsedOrRefusedCleanly) {
  StagingPool pool({.slot_count = 2, .slot_bytes = 2 * 1024 * 1024, .pinner = nullptr});
  const std::vector<MemoryRegion> regions = pool.regions();
  for (const int refuse : {0, ENOMEM}) {
    IoOptions options = quiet(IoBackendKind::uring);
    options.test.register_buffers_errno = refuse;
    IoEngine engine(options);
    const IoFileIndex f = engine.open(path_);
    RegisteredBuffers registered = engine.register_buffers(regions);
    if (refuse != 0) {
      EXPECT_FALSE(registered.registered());
      EXPECT_NE(registered.why().find(std::strerror(ENOMEM)), std::string::npos)
          << registered.why();
      EXPECT_NE(engine.describe().find("ordinary reads"), std::string::npos) << engine.describe();
    } else {
      // Registration can fail for real (an old kernel, a low RLIMIT_MEMLOCK); reads work either
      // way, and the reason is given.
      if (registered.registered()) {
        EXPECT_EQ(registered.nbytes(), pool.bytes_requested());
      }
      EXPECT_FALSE(registered.why().empty());
    }
    StagingLease a = pool.acquire();
    StagingLease b = pool.acquire();
    // One read spanning a whole slot, and one into the middle of the other.
    const std::vector<ReadRequest> reqs = {
        {f, 0, a.nbytes(), a.data()},
        {f, 3 * 1024 * 1024, 1024 * 1024, b.data() + 4096},
    };
    engine.read(reqs);
    EXPECT_EQ(first_mismatch(a.data(), 0, a.nbytes()), -1);
    EXPECT_EQ(first_mismatch(b.data() + 4096, 3 * 1024 * 1024, 1024 * 1024), -1);
  }
  // The pread pool has no fixed buffers and says so.
  IoEngine pread_engine(quiet(IoBackendKind::pread));
  const RegisteredBuffers none = pread_engine.register_buffers(regions);
  EXPECT_FALSE(none.registered());
  EXPECT_NE(none.why().find("pread"), std::string::npos) << none.why();
}

TEST_F(IoEngineTest, UrgentBatchesGoAheadOfQueuedReads) {
  const fs::path other = dir_ / "other.bin";
  write_pattern_file(other, kFileBytes);
  for (const IoBackendKind kind : {IoBackendKind::uring, IoBackendKind::pread}) {
    IoOptions options = quiet(kind);
    options.queue_depth = 1;  // one read at a time makes the order observable
    options.chunk_bytes = kChunk;
    std::mutex mu;
    std::vector<std::string> order;
    std::atomic<bool> entered{false};
    std::atomic<bool> go{false};
    options.test.on_completion = [&](const IoFaultSite& site, int64_t result) -> int64_t {
      // Hold the first completion until the urgent batch is queued behind it.
      if (!entered.exchange(true))
        while (!go.load()) std::this_thread::yield();
      std::lock_guard lock(mu);
      order.push_back(site.path.filename().string());
      return result;
    };
    IoEngine engine(options);
    const IoFileIndex big = engine.open(path_);
    const IoFileIndex small = engine.open(other);
    AlignedBuffer big_buffer(16 * kChunk, kDirectIoAlignment);
    AlignedBuffer small_buffer(kChunk, kDirectIoAlignment);
    const ReadRequest big_req{big, 0, 16 * kChunk, big_buffer.data()};
    const ReadRequest small_req{small, kChunk, kChunk, small_buffer.data()};
    IoTicket big_ticket = engine.submit({&big_req, 1});
    while (!entered.load()) std::this_thread::yield();
    IoTicket small_ticket = engine.submit({&small_req, 1}, IoPriority::urgent);
    go = true;
    small_ticket.wait();
    big_ticket.wait();
    ASSERT_EQ(order.size(), 17U);
    EXPECT_EQ(order[0], "data.bin");
    EXPECT_EQ(order[1], "other.bin") << "the urgent read waited behind queued ones";
    EXPECT_EQ(first_mismatch(small_buffer.as<std::byte>(), kChunk, kChunk), -1);
    EXPECT_EQ(first_mismatch(big_buffer.as<std::byte>(), 0, 16 * kChunk), -1);
  }
}

TEST_F(IoEngineTest, ReadsFromSeveralThreadsAtOnce) {
  IoEngine engine([] {
    IoOptions o = quiet();
    o.queue_depth = 8;
    o.chunk_bytes = kChunk;
    return o;
  }());
  const IoFileIndex f = engine.open(path_);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<uint64_t>(t));
      for (int i = 0; i < 20; ++i) {
        const uint64_t offset = rng() % kFileBytes;
        const uint64_t n = std::min<uint64_t>(rng() % (4 * kChunk), kFileBytes - offset);
        const AlignedRange r = aligned_superset(offset, n);
        AlignedBuffer buffer(std::max<uint64_t>(r.nbytes, 1), kDirectIoAlignment);
        const ReadRequest req{f, r.offset_bytes, r.nbytes, buffer.data(), r.min_bytes()};
        engine.read({&req, 1});
        if (first_mismatch(buffer.as<std::byte>() + r.skip_bytes, offset, n) != -1) ++bad;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
}

}  // namespace
}  // namespace ferry::offload
