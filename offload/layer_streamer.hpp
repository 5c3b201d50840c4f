// LayerStreamer: puts each unit of weights (a layer's tensors) in memory when the compute
// needs it. Each unit has a tier: resident in host memory (read once, at construction), or
// streamed from disk into a staging slot every time it is used, D units ahead of compute.
// It knows nothing of any model: a unit is a list of checkpoint tensors, or byte slices of them
// (row chunks of a matrix too big for one staging slot), used in order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "offload/checkpoint.hpp"
#include "offload/io_engine.hpp"
#include "offload/staging_pool.hpp"
#include "runtime/core/tier.hpp"

namespace ferry {
class ThreadPool;
}  // namespace ferry

namespace ferry::offload {

// Where a unit's bytes live between uses: runtime/core/tier.hpp (the planner's vocabulary too).
using ferry::Tier;

struct StreamUnitSpec {
  std::string name;                  // "layer 3", for messages
  std::vector<std::string> tensors;  // checkpoint names, the unit's tensors in view order
  Tier tier = Tier::disk;
  // Empty: every tensor whole. Otherwise one per tensor: the bytes of it the unit holds, relative
  // to the tensor's first byte (ByteRange{} is all of it; row_range() gives rows of a matrix). A
  // tensor may be named several times with different slices. A slice must be non-empty and lie
  // inside its tensor, or building the unit throws InvalidArgument naming both. (The "= {}"
  // spares {name, tensors, tier} GCC's -Wmissing-field-initializers.)
  std::vector<ByteRange> slices = {};
};

// Rows [first_row, end_row) of a row-major checkpoint tensor, as a slice of its bytes. Every row
// of a tensor has nbytes / shape[0] bytes: rows · dtype_size for floats, packed_row_bytes(dtype,
// cols) for q8 / q4 (whose rows are self-contained). Throws InvalidArgument naming the tensor
// unless 0 <= first_row < end_row <= shape[0].
ByteRange row_range(const TensorEntry& t, int64_t first_row, int64_t end_row);

// How one unit's tensors (or slices) are read: byte ranges of files, each widened to 4 KiB
// alignment and packed one after another into the unit's buffer; neighbouring pieces whose gap
// is small are read as one range (the gap is read and ignored). In a checkpoint with checksums
// each piece is first widened to whole checksum chunks (Checkpoint::checked_range), so every
// byte handed out is verified, a slice's too; a whole-blob unit reads exactly its blob.
struct UnitLayout {
  struct Range {
    uint32_t file = 0;
    uint64_t offset_bytes = 0;  // aligned
    uint64_t nbytes = 0;        // aligned; may run past EOF
    uint64_t min_bytes = 0;     // what must really arrive
    uint64_t buffer_offset = 0;
  };
  std::vector<Range> ranges;
  std::vector<uint64_t> tensor_offsets;  // where each tensor's (slice's) first byte lands
  std::vector<uint64_t> tensor_nbytes;   // and how many bytes of it follow
  uint64_t nbytes = 0;                   // buffer size the unit needs (4 KiB multiple)
};
UnitLayout plan_unit_reads(const Checkpoint& checkpoint, const StreamUnitSpec& unit,
                           uint64_t merge_gap_bytes = 64 * 1024);
// The same for whole tensors.
UnitLayout plan_unit_reads(const Checkpoint& checkpoint, const std::vector<std::string>& tensors,
                           uint64_t merge_gap_bytes = 64 * 1024);

// The tensors (or slices) of an acquired unit, valid until it is released.
class UnitView {
 public:
  UnitView() = default;
  UnitView(const std::byte* base, const std::vector<uint64_t>* offsets)
      : base_(base), offsets_(offsets) {}
  explicit UnitView(const std::vector<const std::byte*>* pointers) : pointers_(pointers) {}
  // The first byte of the unit's i-th tensor, or of its slice.
  const std::byte* tensor(std::size_t i) const {
    return pointers_ ? (*pointers_)[i] : base_ + (*offsets_)[i];
  }
  // The unit's buffer (laid out as LayerStreamer::layout says); null for a mapped unit.
  const std::byte* base() const { return base_; }

 private:
  const std::byte* base_ = nullptr;
  const std::vector<uint64_t>* offsets_ = nullptr;
  const std::vector<const std::byte*>* pointers_ = nullptr;  // mapped units
};

struct StreamerOptions {
  // Staging slots for disk-tier units: one being computed plus up to slot_count - 1 in flight
  // (the prefetch depth). At least 2 when any unit streams, so reading overlaps compute.
  std::size_t slot_count = 2;
  IoOptions io = IoOptions::from_env();
  uint64_t merge_gap_bytes = 64 * 1024;
  // Keeps the staging slots resident; the CUDA backend passes cudaHostRegister so the slots are
  // also the source of its asynchronous copies. Null leaves them unlocked.
  std::shared_ptr<HostMemoryPinner> pinner = std::make_shared<MlockPinner>();
  // After the last unit the prefetch goes on with the first (the next token's). A one-pass
  // reader (the CUDA backend loading its device-resident layers) turns it off.
  bool cyclic_prefetch = true;
  // Hashes a unit's checksum chunks on this pool's threads (a ferry pack's; resident loads and
  // streamed units alike) when set; acquire() must then not be called from inside its
  // parallel_for. Null hashes on the calling thread.
  ThreadPool* verify_pool = nullptr;
};

// Counters of what the streamer did, for the run summary and the planner's feedback.
struct StreamerStats {
  uint64_t bytes_read = 0;  // by streamed units (resident loads excluded)
  uint64_t units_streamed = 0;
  uint64_t stalls = 0;  // acquires that had to wait for I/O
  double stall_s = 0;   // time spent waiting
  // Wall time with at least one streamed read outstanding (up to the last acquire), so
  // bytes_of_acquired / read_busy_s is the disk's delivered rate.
  double read_busy_s = 0;
  uint64_t bytes_acquired = 0;  // bytes of streamed units whose reads completed and were used
  uint64_t units_acquired = 0;
  double load_s = 0;    // reading the resident units at construction
  double verify_s = 0;  // checking a ferry pack's checksums (resident loads and streams)
};

class LayerStreamer {
 public:
  LayerStreamer(const Checkpoint& checkpoint, std::vector<StreamUnitSpec> units,
                StreamerOptions options);
  ~LayerStreamer();
  LayerStreamer(const LayerStreamer&) = delete;
  LayerStreamer& operator=(const LayerStreamer&) = delete;

  // Bytes a unit needs in memory (resident) or in a slot (streamed), before constructing one:
  // its layout's nbytes, so only a slice's bytes (widened as plan_unit_reads says) count.
  static std::vector<uint64_t> unit_bytes(const Checkpoint& checkpoint,
                                          const std::vector<StreamUnitSpec>& units,
                                          uint64_t merge_gap_bytes = 64 * 1024);

  std::size_t unit_count() const;
  Tier tier(std::size_t unit) const;

  // Blocks until the unit's bytes are in memory, then starts reading the disk units that come
  // after it (cyclically: after the last unit comes the first, as in the next token) into the
  // free slots. Throws IoError / FormatError from a failed read; the slot is released then.
  UnitView acquire(std::size_t unit);
  // The unit's slot (if streamed) goes back to the pool, and is refilled with a prefetch.
  void release(std::size_t unit);

  // Where unit's tensors (slices) sit in its buffer (UnitView::base()), and the buffer's size.
  const UnitLayout& layout(std::size_t unit) const;
  // The host memory of every resident (host- or device-tier) unit, e.g. to register it for DMA.
  std::vector<MemoryRegion> resident_regions() const;

  uint64_t resident_bytes() const;  // host memory of resident units
  uint64_t staging_bytes() const;   // slot_count × slot size (0 when nothing streams)
  std::size_t slot_count() const;
  const StreamerStats& stats() const;
  // "2 of 30 units resident (1.2 GiB), 28 streamed through 3 slots of 385 MiB; io_uring …"
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::offload
