// ferry bench-io: reads a file from a cold page cache with each I/O engine and prints GB/s;
// with --json the last stdout line is machine-readable (bench/io_vs_fio.sh reads it).
#include <fmt/format.h>

#include <string>
#include <vector>

#include "offload/bench_io.hpp"
#include "offload/io_engine.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

Command add_bench_io(CLI::App& app) {
  struct Options {
    std::string file;
    bool json = false;
    std::vector<std::string> engines;
    std::string size;
    uint32_t queue_depth = 0;
    std::string chunk;
    std::string batch = "64MiB";
    std::size_t batches_in_flight = 4;
    bool no_evict = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "bench-io",
      "read a file with each I/O engine (io_uring, pread pool, mmap, buffered) and "
      "print GB/s");
  cmd->add_option("FILE", o->file, "the file to read")->required();
  cmd->add_flag("--json", o->json, "also print the results as JSON on the last line");
  cmd->add_option("--engine", o->engines,
                  "engines to run, in order: uring, pread, mmap, buffered (default: all)")
      ->delimiter(',');
  cmd->add_option("--size", o->size, "read only the first SIZE bytes (e.g. 2GiB)");
  cmd->add_option("--queue-depth", o->queue_depth,
                  "reads in flight (default FERRY_IO_QUEUE_DEPTH or 16)");
  cmd->add_option("--chunk", o->chunk, "bytes per read (default FERRY_IO_CHUNK or 1MiB)");
  cmd->add_option("--batch", o->batch, "bytes per submitted batch, like one layer (64MiB)");
  cmd->add_option("--batches-in-flight", o->batches_in_flight,
                  "batches (staging slots) in flight (4)");
  cmd->add_flag("--no-evict", o->no_evict,
                "keep the page cache (measures memory copies, not the disk)");
  return [o] {
    const offload::IoOptions io = offload::IoOptions::from_env();
    offload::BenchIoOptions b;
    b.queue_depth = o->queue_depth != 0 ? o->queue_depth : io.queue_depth;
    b.chunk_bytes = o->chunk.empty() ? io.chunk_bytes : parse_size(o->chunk);
    b.batch_bytes = parse_size(o->batch);
    b.batches_in_flight = o->batches_in_flight;
    b.max_bytes = o->size.empty() ? 0 : parse_size(o->size);
    b.evict_page_cache = !o->no_evict;
    if (!o->engines.empty()) {
      b.engines.clear();
      for (const std::string& e : o->engines) {
        const offload::IoBackendKind kind = offload::parse_io_backend(e);
        FERRY_EXPECT(kind != offload::IoBackendKind::automatic,
                     "bench-io measures named engines; use uring, pread, mmap or buffered");
        b.engines.push_back(kind);
      }
    }
    const std::vector<offload::BenchIoResult> results = offload::bench_io(o->file, b);
    fmt::print("{:<9} {:>8} {:>10} {:>8}  {}\n", "engine", "GB/s", "read", "seconds", "how");
    int failed = 0;
    for (const offload::BenchIoResult& r : results) {
      if (!r.error.empty()) {
        ++failed;
        fmt::print("{:<9} {:>8} {:>10} {:>8}  failed: {}\n", offload::to_string(r.engine), "-", "-",
                   "-", r.error);
        continue;
      }
      fmt::print("{:<9} {:>8.3f} {:>10} {:>8.3f}  {}{}\n", offload::to_string(r.engine),
                 r.bytes_per_s / 1e9, format_bytes(r.nbytes), r.seconds, r.description,
                 r.evicted || o->no_evict ? "" : " (page cache NOT evicted)");
    }
    if (o->json) fmt::print("{}\n", offload::bench_io_json(results));
    return failed == static_cast<int>(results.size()) ? 1 : 0;
  };
}

}  // namespace ferry::tools
