// Backend: the operations the model program (engine.hpp) is written over, and the weights they
// read. A backend owns where things live — activations, the KV cache, the weights' residency —
// and how each operation runs there: the CPU backend (cpu_backend.hpp) on host memory and the
// thread pool, the CUDA backend (runtime/cuda/cuda_backend.hpp) on device memory and streams.
// Every pointer a backend hands out or takes is in its own memory; the program never reads one.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "runtime/core/dtype.hpp"
#include "runtime/model/layout.hpp"
#include "runtime/model/model_config.hpp"

namespace ferry::offload {
class LayerStreamer;
struct StreamerStats;
}  // namespace ferry::offload

namespace ferry::engine {

// A matrix streamed in row chunks (a unit too big for a staging slot): its parts in order, each
// rows [row0, row0 + rows) of the matrix in tensor `tensor` of streamer unit `unit`.
struct ChunkedMatrix {
  struct Part {
    std::size_t unit = 0;
    std::size_t tensor = 0;
    int64_t row0 = 0;
    int64_t rows = 0;
  };
  std::vector<Part> parts;
};

// A row-major weight matrix as stored in the checkpoint: [rows, cols] of dtype. When `chunks`
// is set, data is null and the rows arrive a part at a time (WeightProvider::part), in order.
struct MatrixView {
  const void* data = nullptr;
  DType dtype = DType::f32;
  int64_t rows = 0;
  int64_t cols = 0;
  const ChunkedMatrix* chunks = nullptr;
};

// One unit's weights by role (model/layout.hpp): matrices in their stored dtype, norms and
// biases as f32. A role the model does not have is a null pointer.
struct UnitWeights {
  std::array<MatrixView, model::kWeightRoleCount> matrices{};
  std::array<const float*, model::kWeightRoleCount> vectors{};

  const MatrixView& matrix(model::WeightRole r) const {
    return matrices[static_cast<std::size_t>(r)];
  }
  const float* vector(model::WeightRole r) const { return vectors[static_cast<std::size_t>(r)]; }
  void set(model::WeightRole r, MatrixView m) { matrices[static_cast<std::size_t>(r)] = m; }
  void set(model::WeightRole r, const float* v) { vectors[static_cast<std::size_t>(r)] = v; }
};

// The rows of one sequence in a pass: rows row0 … row0 + n_new - 1 of the activations are its
// new tokens, at positions n_past … n_past + n_new - 1.
struct SeqRows {
  int seq = 0;
  int64_t row0 = 0;
  int64_t n_new = 0;
  int64_t n_past = 0;
};

// How much of the KV cache is in use, for admission decisions and /metrics: the cache holds
// blocks_total blocks of block_tokens tokens (every layer's keys and values for those tokens),
// blocks_used of them held by sequences; bytes_total is the whole pool's memory.
struct KvUsage {
  int64_t block_tokens = 0;
  int64_t blocks_total = 0;
  int64_t blocks_used = 0;
  uint64_t bytes_total = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const model::ModelConfig& config() const = 0;
  // "cpu (avx2, 2 threads)", "cuda (NVIDIA H100 …)": for logs and plans.
  virtual std::string name() const = 0;

  // Where the weights live, in one line: the host streamer's placement on the CPU; VRAM
  // residency, device slots and the host side on CUDA.
  virtual std::string describe() const = 0;
  // Seconds that reading the resident weights took when the backend was made.
  virtual double load_s() const = 0;
  // The streamer that reads host- and disk-tier units on the host; null when there is none
  // (every unit in VRAM, or weights that come from elsewhere).
  virtual const offload::LayerStreamer* host_streamer() const = 0;
  // Its counters (bytes read, stalls, the disk's busy time), or null.
  const offload::StreamerStats* streamer_stats() const;
  // The accelerator the operations run on, the name its learned rates are kept under
  // ("NVIDIA T4 (sm_75)"); empty when they run on the host.
  virtual std::string device_name() const { return {}; }

  // KV cache: tokens per sequence slot, slots, and each slot's stored length.
  virtual int64_t context() const = 0;
  virtual int max_seqs() const = 0;
  virtual int64_t length(int seq) const = 0;
  virtual void set_length(int seq, int64_t n) = 0;
  // Makes room in the KV cache for each sequence's new tokens (positions n_past … n_past +
  // n_new − 1) before a pass changes anything; throws InvalidArgument, taking nothing, when the
  // cache cannot hold them all. By default nothing (a cache of fixed slots always can).
  virtual void reserve(std::span<const SeqRows> seqs) { (void)seqs; }
  // The cache's blocks in use. By default one block per slot of context() tokens, a slot in use
  // when it holds any token, and bytes unknown (0); backends with their own cache say more.
  virtual KvUsage kv_usage() const;

  // Activation buffers of the given sizes (floats), in backend memory, kept between passes and
  // grown when a pass needs more; pointers stay valid until the next call.
  virtual std::vector<float*> activations(std::span<const std::size_t> floats) = 0;
  // A pass begins: its tokens' positions (for rotary) in row order.
  virtual void begin_pass(std::span<const int32_t> positions) = 0;

  // Weights. Views stay valid until the matching release.
  virtual void embed(std::span<const int32_t> ids, float* x) = 0;  // x[i, :] = table[ids[i], :]
  virtual UnitWeights acquire_block(int layer) = 0;
  virtual void release_block(int layer) = 0;
  virtual UnitWeights acquire_head() = 0;
  virtual void release_head() = 0;

  // Operations, each over `rows` rows of the pass (y may be x where noted).
  // y = norm(x) per row of n features; beta may be null (RMSNorm has none).
  virtual void norm(model::NormKind kind, const float* x, int64_t rows, int64_t n,
                    const float* gamma, const float* beta, float eps, float* y) = 0;
  // y[rows, w.rows] = x[rows, w.cols] · wᵀ (+ bias).
  virtual void linear(const float* x, int64_t rows, const MatrixView& w, const float* bias,
                      float* y) = 0;
  // Rotary embedding of n_head heads of head_dim in each row (row stride n_head · head_dim), at
  // the positions of begin_pass, in the config's style.
  virtual void rotary(float* x, int64_t rows, int64_t n_head) = 0;
  // Stores k and v (rows of kv_dim) of each sequence's new tokens in the layer's cache, then
  // out = causal attention of q (rows of q_dim) over everything cached.
  virtual void attend(int layer, std::span<const SeqRows> seqs, const float* q, const float* k,
                      const float* v, float* out) = 0;
  virtual void gelu_new(float* x, int64_t n) = 0;
  virtual void silu_mul(float* gate, const float* up, int64_t n) = 0;  // gate = silu(gate)·up
  virtual void add(float* y, const float* x, int64_t n) = 0;           // y += x
  // y[i, :] = x[rows[i], :] for rows of n floats.
  virtual void gather_rows(const float* x, std::span<const int64_t> rows, int64_t n, float* y) = 0;
  // Copies n floats of backend memory into out (host), resized to n.
  virtual void read(const float* x, int64_t n, std::vector<float>& out) = 0;

  // Finiteness, so that a NaN or an infinity is an error naming where it arose instead of
  // tokens sampled from NaN logits. Whether activations x[0, n) are all finite; nullopt when
  // the backend cannot tell without a copy from its device (the engine then checks only the
  // logits, which come to the host anyway).
  virtual std::optional<bool> all_finite(const float* x, int64_t n) {
    (void)x;
    (void)n;
    return std::nullopt;
  }
  // The first of unit w's weights (group g's tensors) holding a NaN or an infinity, said as
  // "tensor 'NAME' holds nan at element I"; nullopt when none does or the backend cannot look.
  virtual std::optional<std::string> nonfinite_weight(const UnitWeights& w,
                                                      const model::WeightGroup& g) {
    (void)w;
    (void)g;
    return std::nullopt;
  }
};

// Host memory: the index of the first element of x[0, n) that is a NaN or an infinity, or -1.
int64_t first_nonfinite(const float* x, int64_t n);
// The same over n values of a float dtype (f32, f16, bf16); -1 for other dtypes (packed
// matrices are not looked into).
int64_t first_nonfinite(const void* data, DType dtype, int64_t n);
// Host memory: what Backend::nonfinite_weight says, for backends whose weights are on the host.
// Matrices streamed in parts (no data pointer) and packed matrices are not looked into.
std::optional<std::string> find_nonfinite_weight(const UnitWeights& w,
                                                 const model::WeightGroup& g);

}  // namespace ferry::engine
