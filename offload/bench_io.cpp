#include "offload/bench_io.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <nlohmann/json.hpp>

#include "offload/file.hpp"
#include "offload/staging_pool.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"

namespace ferry::offload {

bool evict_from_page_cache(const std::filesystem::path& path, std::string& why) {
  const UniqueFd fd = open_read(path);
  // Dirty pages are not dropped; a file just written must reach the disk first.
  if (::fdatasync(fd.get()) != 0 && errno != EINVAL && errno != EROFS) {
    why = fmt::format("fdatasync of {} failed: {}", path.string(), std::strerror(errno));
    return false;
  }
  const int rc = ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  if (rc != 0) {
    why = fmt::format("posix_fadvise(DONTNEED) on {} failed: {}", path.string(), std::strerror(rc));
    return false;
  }
  return true;
}

namespace {

BenchIoResult run_one(const std::filesystem::path& path, const BenchIoOptions& options,
                      IoBackendKind kind, StagingPool& pool) {
  BenchIoResult result;
  result.engine = kind;
  IoOptions io;
  io.backend = kind;
  io.queue_depth = options.queue_depth;
  io.chunk_bytes = options.chunk_bytes;
  io.direct = kind == IoBackendKind::uring || kind == IoBackendKind::pread;
  io.report_fallbacks = false;  // the description carries them
  if (options.evict_page_cache) {
    std::string why;
    result.evicted = evict_from_page_cache(path, why);
    if (!result.evicted) result.description = why + "; ";
  }
  try {
    IoEngine engine(io);
    const IoFileIndex file = engine.open(path);
    const uint64_t size = engine.file_size(file);
    const uint64_t total = options.max_bytes == 0 ? size : std::min(size, options.max_bytes);
    const std::vector<MemoryRegion> regions = pool.regions();
    const RegisteredBuffers registered = engine.register_buffers(regions);

    struct InFlight {
      StagingLease lease;
      IoTicket ticket;  // declared last: destroyed (waited for) before the lease goes back
    };
    std::deque<InFlight> in_flight;
    const auto start = std::chrono::steady_clock::now();
    for (uint64_t offset = 0; offset < total; offset += pool.slot_bytes()) {
      if (in_flight.size() == pool.slot_count()) {
        in_flight.front().ticket.wait();
        in_flight.pop_front();
      }
      InFlight next{pool.acquire(), {}};
      const AlignedRange r = aligned_superset(offset, std::min(pool.slot_bytes(), total - offset));
      const ReadRequest req{file, r.offset_bytes, r.nbytes, next.lease.data(), r.min_bytes()};
      next.ticket = engine.submit({&req, 1});
      in_flight.push_back(std::move(next));
    }
    while (!in_flight.empty()) {
      in_flight.front().ticket.wait();
      in_flight.pop_front();
    }
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    result.nbytes = total;
    result.seconds = elapsed.count();
    result.bytes_per_s = result.seconds > 0 ? static_cast<double>(total) / result.seconds : 0;
    result.description += engine.describe();
    if (registered.registered()) result.description += "; fixed buffers";
  } catch (const std::exception& e) {
    result.error = e.what();
    result.description += e.what();
  }
  return result;
}

}  // namespace

std::vector<BenchIoResult> bench_io(const std::filesystem::path& path,
                                    const BenchIoOptions& options) {
  FERRY_EXPECT(!options.engines.empty(), "bench-io needs at least one engine");
  FERRY_EXPECT(options.batches_in_flight >= 1 && options.batches_in_flight <= 64,
               "batches in flight {} is out of range; use 1 to 64", options.batches_in_flight);
  FERRY_EXPECT(
      options.batch_bytes >= options.chunk_bytes && options.batch_bytes % kDirectIoAlignment == 0,
      "batch size {} must be a multiple of 4 KiB and at least the chunk size {}",
      format_bytes(options.batch_bytes), format_bytes(options.chunk_bytes));
  IoOptions check;
  check.queue_depth = options.queue_depth;
  check.chunk_bytes = options.chunk_bytes;
  check.validate();
  // Fails early, with the path in the message, if the file cannot be read at all.
  const uint64_t size = file_size(open_read(path).get(), path);
  FERRY_EXPECT(size > 0, "{} is empty; bench-io needs a file with data in it", path.string());
  const uint64_t total = options.max_bytes == 0 ? size : std::min(size, options.max_bytes);
  // Staging never larger than what is read, so a small --size does not allocate 256 MiB.
  const uint64_t slot_bytes =
      std::min(options.batch_bytes,
               (total + kDirectIoAlignment - 1) / kDirectIoAlignment * kDirectIoAlignment);
  StagingPool pool({.slot_count = options.batches_in_flight,
                    .slot_bytes = slot_bytes,
                    .pinner = std::make_shared<MlockPinner>()});
  std::vector<BenchIoResult> results;
  for (const IoBackendKind kind : options.engines)
    results.push_back(run_one(path, options, kind, pool));
  return results;
}

std::string bench_io_json(const std::vector<BenchIoResult>& results) {
  nlohmann::json j = nlohmann::json::object();
  for (const BenchIoResult& r : results) {
    nlohmann::json e;
    if (r.error.empty()) {
      e["bytes_per_s"] = r.bytes_per_s;
      e["nbytes"] = r.nbytes;
      e["seconds"] = r.seconds;
      e["cache_evicted"] = r.evicted;
    } else {
      e["bytes_per_s"] = nullptr;
      e["error"] = r.error;
    }
    e["description"] = r.description;
    j[std::string(to_string(r.engine))] = std::move(e);
  }
  return j.dump();
}

}  // namespace ferry::offload
