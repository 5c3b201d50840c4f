// Streaming one big matrix in row slices against streaming it whole: a 1 GiB bf16 tensor (a
// Llama-3 lm_head is 1.05 GB) read by the LayerStreamer as one unit, and as 64 / 16 / 4 MiB slices
// through 3 staging slots (and 64 MiB ones through 5). The roofline is bench-io's io_uring O_DIRECT
// rate on the same file (counter roofline_bw, from offload::bench_io), itself judged against fio
// (bench/io_vs_fio.sh). disk_bw is what the streamer's reads delivered (bytes acquired ÷ time with
// a read in flight); bytes_per_second is the wall rate of acquire/release with no compute between
// them.
//
// The file is written once to $FERRY_BENCH_DIR (default: the system temp directory) as
// slices.safetensors and removed at exit. Run: build/bench/bench_stream_slices
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "offload/bench_io.hpp"
#include "offload/checkpoint.hpp"
#include "offload/checkpoint_writer.hpp"
#include "offload/layer_streamer.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ferry;
using namespace ferry::offload;

constexpr int64_t kRows = 32768;
constexpr int64_t kCols = 16384;  // bf16: 32 KiB a row, 1 GiB in all
constexpr uint64_t kRowBytes = kCols * 2;

struct BenchFile {
  fs::path dir;
  Checkpoint checkpoint;
  double roofline_bw = 0;

  static fs::path make() {
    const char* env = std::getenv("FERRY_BENCH_DIR");
    const fs::path dir = fs::path(env != nullptr ? env : fs::temp_directory_path().string()) /
                         "ferry-bench-stream-slices";
    WriteOptions o;
    write_checkpoint(
        dir, {{"lm_head.weight", DType::bf16, Shape{kRows, kCols}}},
        [](const TensorSpec&, uint64_t first, std::span<std::byte> dst) {
          for (std::size_t i = 0; i < dst.size(); ++i)
            dst[i] = static_cast<std::byte>((first + i) * 2654435761u >> 24);
        },
        o);
    return dir;
  }
  BenchFile() : dir(make()), checkpoint(Checkpoint::open(dir)) {
    BenchIoOptions o;
    o.engines = {IoBackendKind::uring};
    const auto r = bench_io(checkpoint.files()[0].path, o);
    roofline_bw = r.empty() ? 0 : r[0].bytes_per_s;
  }
  ~BenchFile() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  BenchFile(const BenchFile&) = delete;
  BenchFile& operator=(const BenchFile&) = delete;
};

BenchFile& bench_file() {
  static BenchFile f;
  return f;
}

// Streams units (cyclically, as the engine does token after token) and reports the rates.
void stream(benchmark::State& state, const std::vector<StreamUnitSpec>& units, std::size_t slots) {
  BenchFile& f = bench_file();
  std::string why;
  evict_from_page_cache(f.checkpoint.files()[0].path, why);
  StreamerOptions o;
  o.slot_count = slots;
  LayerStreamer s(f.checkpoint, units, o);
  for (auto _ : state) {
    for (std::size_t u = 0; u < units.size(); ++u) {
      benchmark::DoNotOptimize(s.acquire(u).tensor(0));
      s.release(u);
    }
  }
  const StreamerStats& st = s.stats();
  state.SetBytesProcessed(static_cast<int64_t>(st.bytes_acquired));
  state.counters["disk_bw"] = st.read_busy_s > 0 ? st.bytes_acquired / st.read_busy_s : 0;
  state.counters["roofline_bw"] = f.roofline_bw;
  state.counters["slot_MiB"] = static_cast<double>(s.staging_bytes()) / slots / (1 << 20);
  state.counters["stalls"] = static_cast<double>(st.stalls);
  state.SetLabel(s.describe());
}

void BM_StreamWhole(benchmark::State& state) {
  stream(state, {{"lm_head", {"lm_head.weight"}}}, 2);
}
BENCHMARK(BM_StreamWhole)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3);

// state.range(0): MiB a slice; state.range(1): staging slots.
void BM_StreamSlices(benchmark::State& state) {
  const TensorEntry& t = bench_file().checkpoint.at("lm_head.weight");
  const int64_t rows = state.range(0) * (1 << 20) / static_cast<int64_t>(kRowBytes);
  std::vector<StreamUnitSpec> units;
  for (int64_t r = 0; r < kRows; r += rows)
    units.push_back({fmt::format("lm_head rows {}", r),
                     {t.name},
                     Tier::disk,
                     {row_range(t, r, std::min(r + rows, kRows))}});
  stream(state, units, static_cast<std::size_t>(state.range(1)));
}
BENCHMARK(BM_StreamSlices)
    ->Args({64, 3})
    ->Args({16, 3})
    ->Args({4, 3})
    ->Args({64, 5})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3);

}  // namespace

BENCHMARK_MAIN();
