#include "offload/layer_streamer.hpp"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>
#include <utility>

#include "offload/detail/mapping_guard.hpp"
#include "offload/file.hpp"
#include "offload/staging_pool.hpp"
#include "runtime/core/aligned_buffer.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/trace.hpp"
#include "runtime/core/units.hpp"

namespace ferry::offload {

ByteRange row_range(const TensorEntry& t, int64_t first_row, int64_t end_row) {
  const int64_t rows = t.shape.rank > 0 ? t.shape[0] : 0;
  FERRY_EXPECT(0 <= first_row && first_row < end_row && end_row <= rows,
               "rows [{}, {}) of tensor '{}' ({} {}) are not a non-empty part of its {} rows",
               first_row, end_row, t.name, dtype_name(t.dtype), t.shape.str(), rows);
  const uint64_t row_bytes = t.nbytes / static_cast<uint64_t>(rows);
  return {static_cast<uint64_t>(first_row) * row_bytes,
          static_cast<uint64_t>(end_row - first_row) * row_bytes};
}

namespace {

// The unit's i-th slice, its length resolved and checked against the tensor.
ByteRange slice_of(const StreamUnitSpec& unit, std::size_t i, const TensorEntry& t) {
  if (unit.slices.empty()) return {0, t.nbytes};
  const ByteRange s = unit.slices[i];
  const bool to_end = s.nbytes == ByteRange::kToEnd;
  FERRY_EXPECT(s.offset_bytes < t.nbytes && (to_end || s.nbytes <= t.nbytes - s.offset_bytes),
               "{}: slice [{}, {}) of tensor '{}' ({} {}, {} bytes) runs past the tensor's end",
               unit.name, s.offset_bytes,
               to_end ? std::string("end") : fmt::format("{}", s.offset_bytes + s.nbytes), t.name,
               dtype_name(t.dtype), t.shape.str(), t.nbytes);
  FERRY_EXPECT(s.nbytes > 0, "{}: slice [{}, {}) of tensor '{}' is empty", unit.name,
               s.offset_bytes, s.offset_bytes, t.name);
  const uint64_t nbytes = to_end ? t.nbytes - s.offset_bytes : s.nbytes;
  return {s.offset_bytes, nbytes};
}

}  // namespace

UnitLayout plan_unit_reads(const Checkpoint& checkpoint, const StreamUnitSpec& unit,
                           uint64_t merge_gap_bytes) {
  FERRY_EXPECT(unit.slices.empty() || unit.slices.size() == unit.tensors.size(),
               "{}: {} slices for {} tensors; give one per tensor, or none for whole tensors",
               unit.name, unit.slices.size(), unit.tensors.size());
  // A piece is read as [begin, end) (its checksum chunks included); its data starts at `data`.
  struct Piece {
    uint32_t file;
    uint64_t begin, end, data;
    std::size_t tensor;
  };
  UnitLayout layout;
  std::vector<Piece> pieces;
  pieces.reserve(unit.tensors.size());
  layout.tensor_nbytes.reserve(unit.tensors.size());
  for (std::size_t i = 0; i < unit.tensors.size(); ++i) {
    const TensorEntry& t = checkpoint.at(unit.tensors[i]);
    const ByteRange slice = slice_of(unit, i, t);
    const uint64_t data = t.offset_bytes + slice.offset_bytes;
    const ByteRange read = checkpoint.checked_range(t.file_index, data, slice.nbytes);
    pieces.push_back({t.file_index, read.offset_bytes, read.offset_bytes + read.nbytes, data, i});
    layout.tensor_nbytes.push_back(slice.nbytes);
  }
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) {
    return a.file != b.file ? a.file < b.file : a.begin < b.begin;
  });

  layout.tensor_offsets.assign(unit.tensors.size(), 0);
  std::size_t i = 0;
  while (i < pieces.size()) {
    // Grow a run of pieces of one file whose gaps are small enough to read through.
    std::size_t j = i + 1;
    uint64_t end = pieces[i].end;
    while (j < pieces.size() && pieces[j].file == pieces[i].file &&
           pieces[j].begin <= end + merge_gap_bytes) {
      end = std::max(end, pieces[j].end);
      ++j;
    }
    const AlignedRange a = aligned_superset(pieces[i].begin, end - pieces[i].begin);
    UnitLayout::Range r;
    r.file = pieces[i].file;
    r.offset_bytes = a.offset_bytes;
    r.nbytes = a.nbytes;
    r.min_bytes = a.min_bytes();
    r.buffer_offset = layout.nbytes;
    for (std::size_t k = i; k < j; ++k)
      layout.tensor_offsets[pieces[k].tensor] = r.buffer_offset + (pieces[k].data - a.offset_bytes);
    layout.nbytes += a.nbytes;  // a multiple of the alignment, so the next range stays aligned
    layout.ranges.push_back(r);
    i = j;
  }
  return layout;
}

UnitLayout plan_unit_reads(const Checkpoint& checkpoint, const std::vector<std::string>& tensors,
                           uint64_t merge_gap_bytes) {
  return plan_unit_reads(checkpoint, StreamUnitSpec{"unit", tensors}, merge_gap_bytes);
}

namespace {

enum class UnitState { idle, in_flight, held };

// Reads one byte of every page of a unit that was just read into its resident memory. The
// bytes arrived by DMA (O_DIRECT), which leaves a virtual machine's shadow page tables without
// this process's mapping of those pages: the CPU's first access to each page then exits to the
// hypervisor. On this project's VMs that costs about 4 us a page (1 GB/s), and without this the
// first forward pass paid it inside its products: GPT-J-6B's first 64-token f16 prompt took
// 16.7 s, and the second one the same process ran 5 s (bench: two layers, 524 ms then 187 ms a
// layer). Touched here, it is paid during the load, while the next units' reads are in flight;
// on bare metal it is a read of 1/64 of the bytes from RAM.
void touch_pages(const std::byte* p, std::size_t nbytes) {
  static const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const volatile std::byte* v = p;
  for (std::size_t off = 0; off < nbytes; off += page) static_cast<void>(v[off]);
}

// A whole checkpoint file mapped read-only, for the mapped tier.
class FileMapping {
 public:
  explicit FileMapping(const CheckpointFile& f) : nbytes_(f.size_bytes) {
    const UniqueFd fd = open_read(f.path);
    void* p = ::mmap(nullptr, nbytes_, PROT_READ, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) throw IoError(errno, fmt::format("cannot map {}", f.path.string()));
    data_ = static_cast<const std::byte*>(p);
    guard_.emplace(p, nbytes_, f.path.string());
  }
  FileMapping(FileMapping&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), nbytes_(o.nbytes_), guard_(std::move(o.guard_)) {
    o.guard_.reset();
  }
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  FileMapping& operator=(FileMapping&&) = delete;
  ~FileMapping() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), nbytes_);
  }
  const std::byte* data() const { return data_; }

 private:
  const std::byte* data_ = nullptr;
  uint64_t nbytes_ = 0;
  // The file truncated under the mapping is an error naming it, not a bare SIGBUS.
  std::optional<detail::MappingGuard> guard_;
};

struct Unit {
  StreamUnitSpec spec;
  UnitLayout layout;
  AlignedBuffer resident;                // resident tiers only
  std::vector<const std::byte*> mapped;  // mapped tier: each tensor's address in its mapping
  // Streamed tiers: the slot and the reads filling it. The ticket is declared after the lease
  // so that it is destroyed first: its destructor waits for reads still writing into the slot.
  std::optional<StagingLease> lease;
  IoTicket ticket;
  UnitState state = UnitState::idle;
  std::chrono::steady_clock::time_point submitted_at;
};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct LayerStreamer::Impl {
  const Checkpoint& checkpoint;
  StreamerOptions options;
  // Destruction runs bottom-up: units (tickets wait, leases return), then the buffer
  // registration, the pool's memory, and last the engine the tickets belong to.
  IoEngine engine;
  std::vector<IoFileIndex> files;     // checkpoint file index → engine file index
  std::vector<FileMapping> mappings;  // one per checkpoint file, when any unit is mapped
  std::unique_ptr<StagingPool> pool;
  RegisteredBuffers registration;
  std::vector<Unit> units;
  std::deque<std::size_t> in_flight;
  StreamerStats stats;
  uint64_t resident_bytes = 0;

  Impl(const Checkpoint& ck, StreamerOptions opts)
      : checkpoint(ck), options(opts), engine(opts.io) {}

  // Trace points, called only while tracing: a unit's read (or resident load) on the I/O
  // queue's track, from submit to completion; a wait on the compute track; slots in use.
  void trace_read(std::size_t index, trace::SpanKind kind,
                  std::chrono::steady_clock::time_point submitted,
                  std::chrono::steady_clock::time_point completed) const noexcept try {
    const Unit& u = units[index];
    trace::Tracer& t = trace::tracer();
    const uint32_t track = t.track(trace::TrackKind::io_queue, 0,
                                   fmt::format("I/O queue 0 ({})", to_string(engine.backend())));
    t.span(track, kind, static_cast<int32_t>(index),
           fmt::format("{} {}", trace::span_kind_name(kind), u.spec.name), submitted, completed,
           u.layout.nbytes);
  } catch (...) {  // a trace point never takes the run down
  }
  void trace_wait(std::size_t index, std::chrono::steady_clock::time_point begin) const noexcept
      try {
    trace::tracer().span(trace::compute_track(), trace::SpanKind::wait, static_cast<int32_t>(index),
                         "wait " + units[index].spec.name, begin, std::chrono::steady_clock::now());
  } catch (...) {
  }
  void trace_slots() const noexcept try {
    if (pool)
      trace::tracer().counter("staging slots in use",
                              static_cast<double>(pool->slot_count() - pool->free_slots()));
  } catch (...) {
  }

  std::vector<ReadRequest> requests_for(const Unit& u, std::byte* base) const {
    std::vector<ReadRequest> reqs;
    reqs.reserve(u.layout.ranges.size());
    for (const auto& r : u.layout.ranges) {
      ReadRequest q;
      q.file = files[r.file];
      q.offset_bytes = r.offset_bytes;
      q.nbytes = r.nbytes;
      q.dst = base + r.buffer_offset;
      q.min_bytes = r.min_bytes;
      reqs.push_back(q);
    }
    return reqs;
  }

  // Checks a unit's bytes, just read into base, against the checkpoint's checksums (a ferry
  // pack's; other formats have none). Throws FormatError naming the unit's blob and tensor.
  void verify(const Unit& u, const std::byte* base) {
    if (!checkpoint.has_checksums()) return;
    const double t0 = now_s();
    for (const auto& r : u.layout.ranges)
      checkpoint.verify(r.file, r.offset_bytes, base + r.buffer_offset, r.min_bytes,
                        options.verify_pool);
    stats.verify_s += now_s() - t0;
  }

  // The time the disk was busy with streamed reads: the union of their [submitted, completed]
  // intervals, taken in acquire order (which is submission order), so that bytes_read ÷
  // read_busy_s is the rate the disk delivered, not diluted by the time slots were full.
  std::chrono::steady_clock::time_point busy_until{};
  void count_read_busy(std::chrono::steady_clock::time_point submitted,
                       std::chrono::steady_clock::time_point completed) {
    const auto begin = std::max(submitted, busy_until);
    if (completed > begin)
      stats.read_busy_s += std::chrono::duration<double>(completed - begin).count();
    busy_until = std::max(busy_until, completed);
  }

  void start(std::size_t index, StagingLease lease) {
    Unit& u = units[index];
    u.lease.emplace(std::move(lease));
    const auto reqs = requests_for(u, u.lease->data());
    u.submitted_at = std::chrono::steady_clock::now();
    if (trace::enabled()) trace_slots();
    u.ticket = engine.submit(reqs);
    u.state = UnitState::in_flight;
    in_flight.push_back(index);
    stats.bytes_read += u.layout.nbytes;
    ++stats.units_streamed;
  }

  // Drops a unit's slot; its reads (if any) finish first, their outcome no longer wanted.
  void reset(std::size_t index) noexcept {
    Unit& u = units[index];
    u.ticket = IoTicket();
    u.lease.reset();
    u.state = UnitState::idle;
    in_flight.erase(std::remove(in_flight.begin(), in_flight.end(), index), in_flight.end());
    if (trace::enabled()) trace_slots();
  }

  // Starts the disk units after `after`, in cyclic order (or up to the last unit when the
  // prefetch is not cyclic), while slots are free.
  void prefetch_after(std::size_t after) {
    if (!pool) return;
    const std::size_t n = units.size();
    for (std::size_t k = 1; k <= n; ++k) {
      if (!options.cyclic_prefetch && after + k >= n) return;
      const std::size_t v = (after + k) % n;
      Unit& u = units[v];
      if (u.spec.tier != Tier::disk || u.state != UnitState::idle) continue;
      std::optional<StagingLease> lease = pool->try_acquire();
      if (!lease) return;
      start(v, std::move(*lease));
    }
  }
};

std::vector<uint64_t> LayerStreamer::unit_bytes(const Checkpoint& checkpoint,
                                                const std::vector<StreamUnitSpec>& units,
                                                uint64_t merge_gap_bytes) {
  std::vector<uint64_t> out;
  out.reserve(units.size());
  for (const auto& u : units) out.push_back(plan_unit_reads(checkpoint, u, merge_gap_bytes).nbytes);
  return out;
}

LayerStreamer::LayerStreamer(const Checkpoint& checkpoint, std::vector<StreamUnitSpec> units,
                             StreamerOptions options)
    : impl_(std::make_unique<Impl>(checkpoint, options)) {
  Impl& s = *impl_;
  for (const auto& f : checkpoint.files()) s.files.push_back(s.engine.open(f.path));
  uint64_t slot_bytes = 0;
  s.units.reserve(units.size());
  for (auto& spec : units) {
    Unit u;
    u.layout = plan_unit_reads(checkpoint, spec, options.merge_gap_bytes);
    u.spec = std::move(spec);
    if (u.spec.tier == Tier::disk) slot_bytes = std::max(slot_bytes, u.layout.nbytes);
    s.units.push_back(std::move(u));
  }
  if (slot_bytes > 0) {
    FERRY_EXPECT(options.slot_count >= 2,
                 "streaming needs at least 2 staging slots (one computing, one reading); got {}",
                 options.slot_count);
    StagingPoolOptions po;
    po.slot_count = options.slot_count;
    po.slot_bytes = slot_bytes;
    po.pinner = options.pinner;
    s.pool = std::make_unique<StagingPool>(po);
    s.registration = s.engine.register_buffers(s.pool->regions());
  }

  // Resident units are read once, straight into their own memory through the same engine.
  const double t0 = now_s();
  // A few units in flight at a time keep the queue full without queueing the whole model.
  constexpr std::size_t kLoadsInFlight = 2;
  std::deque<std::pair<IoTicket, std::size_t>> loads;  // and the unit each reads
  uint64_t load_total_bytes = 0;
  uint64_t load_done_bytes = 0;
  for (const Unit& u : s.units)
    if (u.spec.tier != Tier::disk && u.spec.tier != Tier::mapped)
      load_total_bytes += u.layout.nbytes;
  const auto finish_load = [&](std::pair<IoTicket, std::size_t>& load) {
    load.first.wait();
    touch_pages(s.units[load.second].resident.as<std::byte>(), s.units[load.second].layout.nbytes);
    load_done_bytes += s.units[load.second].layout.nbytes;
    if (options.io.on_load_progress) options.io.on_load_progress(load_done_bytes, load_total_bytes);
    if (trace::enabled())
      s.trace_read(load.second, trace::SpanKind::load, s.units[load.second].submitted_at,
                   load.first.completed_at());
  };
  for (Unit& u : s.units) {
    if (u.spec.tier == Tier::disk || u.spec.tier == Tier::mapped) continue;
    u.resident = AlignedBuffer(u.layout.nbytes, kDirectIoAlignment);
    s.resident_bytes += u.layout.nbytes;
    if (trace::enabled()) u.submitted_at = std::chrono::steady_clock::now();
    loads.emplace_back(s.engine.submit(s.requests_for(u, u.resident.as<std::byte>())),
                       static_cast<std::size_t>(&u - s.units.data()));
    if (loads.size() > kLoadsInFlight) {
      finish_load(loads.front());
      loads.pop_front();
    }
  }
  for (auto& load : loads) finish_load(load);
  for (const Unit& u : s.units)
    if (u.resident.data() != nullptr) s.verify(u, u.resident.as<std::byte>());
  for (Unit& u : s.units) {
    if (u.spec.tier != Tier::mapped) continue;
    if (s.mappings.empty())
      for (const auto& f : checkpoint.files()) s.mappings.emplace_back(f);
    for (std::size_t i = 0; i < u.spec.tensors.size(); ++i) {
      const TensorEntry& t = checkpoint.at(u.spec.tensors[i]);
      u.mapped.push_back(s.mappings[t.file_index].data() + t.offset_bytes +
                         slice_of(u.spec, i, t).offset_bytes);
    }
  }
  s.stats.load_s = now_s() - t0;
  if (trace::enabled()) {
    trace::Tracer& t = trace::tracer();
    t.counter("resident weight bytes", static_cast<double>(s.resident_bytes));
    t.counter("staging bytes", static_cast<double>(s.pool ? s.pool->bytes_requested() : 0));
    t.counter("pinned bytes", static_cast<double>(s.pool ? s.pool->bytes_locked() : 0));
  }
  // The first streamed units start reading now, ahead of the first forward pass.
  if (!s.units.empty()) {
    const bool cyclic = s.options.cyclic_prefetch;
    s.options.cyclic_prefetch = true;  // "after the last unit" here means from the first
    s.prefetch_after(s.units.size() - 1);
    s.options.cyclic_prefetch = cyclic;
  }
}

LayerStreamer::~LayerStreamer() = default;

std::size_t LayerStreamer::unit_count() const { return impl_->units.size(); }
Tier LayerStreamer::tier(std::size_t unit) const { return impl_->units.at(unit).spec.tier; }

UnitView LayerStreamer::acquire(std::size_t index) {
  Impl& s = *impl_;
  FERRY_EXPECT(index < s.units.size(), "unit {} does not exist ({} units)", index, s.units.size());
  Unit& u = s.units[index];
  if (u.spec.tier == Tier::mapped) return UnitView(&u.mapped);
  if (u.spec.tier != Tier::disk) return {u.resident.as<std::byte>(), &u.layout.tensor_offsets};
  FERRY_EXPECT(u.state != UnitState::held, "{} is acquired twice without a release", u.spec.name);

  if (u.state == UnitState::idle) {
    // Out of the prefetch order: the slots may all hold prefetched units; give them up.
    std::optional<StagingLease> lease = s.pool->try_acquire();
    if (!lease) {
      while (!s.in_flight.empty()) s.reset(s.in_flight.front());
      lease = s.pool->try_acquire();
    }
    FERRY_EXPECT(lease.has_value(),
                 "every one of the {} staging slots is held by an acquired unit; release a "
                 "unit before acquiring {}",
                 s.pool->slot_count(), u.spec.name);
    s.start(index, std::move(*lease));
  }
  // A unit whose reads are not done yet is a stall: compute waits on the disk.
  const bool stalled = !u.ticket.poll();
  const auto wait_begin = std::chrono::steady_clock::now();
  const double t0 = now_s();
  try {
    u.ticket.wait();
  } catch (...) {
    s.reset(index);
    throw;
  }
  if (stalled) {
    ++s.stats.stalls;
    s.stats.stall_s += now_s() - t0;
    if (trace::enabled()) s.trace_wait(index, wait_begin);
  }
  s.count_read_busy(u.submitted_at, u.ticket.completed_at());
  s.stats.bytes_acquired += u.layout.nbytes;
  ++s.stats.units_acquired;
  if (trace::enabled())
    s.trace_read(index, trace::SpanKind::read, u.submitted_at, u.ticket.completed_at());
  u.state = UnitState::held;
  s.in_flight.erase(std::remove(s.in_flight.begin(), s.in_flight.end(), index), s.in_flight.end());
  // The next reads go out before this unit's checksum is computed, so the disk works while the
  // CPU hashes rather than waiting for it.
  s.prefetch_after(index);
  try {
    s.verify(u, u.lease->data());
  } catch (...) {
    s.reset(index);
    throw;
  }
  return {u.lease->data(), &u.layout.tensor_offsets};
}

void LayerStreamer::release(std::size_t index) {
  Impl& s = *impl_;
  FERRY_EXPECT(index < s.units.size(), "unit {} does not exist ({} units)", index, s.units.size());
  Unit& u = s.units[index];
  if (u.spec.tier != Tier::disk || u.state != UnitState::held) return;
  s.reset(index);
  s.prefetch_after(index);
}

const UnitLayout& LayerStreamer::layout(std::size_t unit) const {
  return impl_->units.at(unit).layout;
}

std::vector<MemoryRegion> LayerStreamer::resident_regions() const {
  std::vector<MemoryRegion> out;
  for (const Unit& u : impl_->units)
    if (u.resident.data() != nullptr) out.push_back({u.resident.data(), u.resident.size()});
  return out;
}

uint64_t LayerStreamer::resident_bytes() const { return impl_->resident_bytes; }
uint64_t LayerStreamer::staging_bytes() const {
  return impl_->pool ? impl_->pool->bytes_requested() : 0;
}
std::size_t LayerStreamer::slot_count() const {
  return impl_->pool ? impl_->pool->slot_count() : 0;
}
const StreamerStats& LayerStreamer::stats() const { return impl_->stats; }

std::string LayerStreamer::describe() const {
  const Impl& s = *impl_;
  std::size_t resident = 0;
  std::size_t mapped = 0;
  for (const Unit& u : s.units) {
    resident += u.spec.tier == Tier::host || u.spec.tier == Tier::device;
    mapped += u.spec.tier == Tier::mapped;
  }
  std::string d = fmt::format("{} of {} units resident ({})", resident, s.units.size(),
                              format_bytes(s.resident_bytes));
  if (s.pool) {
    d += fmt::format(", {} streamed through {} slots of {}", s.units.size() - resident - mapped,
                     s.pool->slot_count(), format_bytes(s.pool->slot_bytes()));
    if (!s.pool->lock_note().empty()) d += fmt::format(" ({})", s.pool->lock_note());
  }
  if (mapped) d += fmt::format(", {} computed from a memory map of the files", mapped);
  return d + "; " + s.engine.describe();
}

}  // namespace ferry::offload
