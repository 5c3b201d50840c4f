#include "runtime/engine/cpu_backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "kernels/common/kv_paging.hpp"
#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"

namespace ferry::engine {

namespace cpu = kernels::cpu;

CpuBackend::CpuBackend(WeightProvider& weights, EngineOptions options, ThreadPool& pool)
    : config_(weights.config()),
      weights_(weights),
      pool_(pool),
      cache_(config_, options.max_seqs,
             options.context > 0 ? options.context : model::default_context(config_),
             options.kv_pool_tokens) {
  // GPT-J's interleaved rotary computes its frequencies in the kernel; every other model's come
  // from the description (rope_theta, scaling, a GGUF file's frequency factors).
  if (config_.rope_style == model::RopeStyle::half || config_.is_llama_family())
    inv_freq_ = config_.rope_inv_freq();
}

std::string CpuBackend::name() const {
  return fmt::format("cpu ({}, {} threads)", cpu::simd_level(), pool_.size());
}

std::string CpuBackend::describe() const {
  const offload::LayerStreamer* s = host_streamer();
  return s ? s->describe() : std::string("weights from the caller's provider");
}

double CpuBackend::load_s() const {
  const offload::LayerStreamer* s = host_streamer();
  return s ? s->stats().load_s : 0;
}

std::vector<float*> CpuBackend::activations(std::span<const std::size_t> floats) {
  if (buffers_.size() < floats.size()) buffers_.resize(floats.size());
  std::vector<float*> out;
  for (std::size_t i = 0; i < floats.size(); ++i) {
    if (buffers_[i].size() < floats[i]) buffers_[i].resize(floats[i]);
    out.push_back(floats[i] > 0 ? buffers_[i].data() : nullptr);
  }
  return out;
}

void CpuBackend::begin_pass(std::span<const int32_t> positions) {
  positions_.assign(positions.begin(), positions.end());
}

void CpuBackend::norm(model::NormKind kind, const float* x, int64_t rows, int64_t n,
                      const float* gamma, const float* beta, float eps, float* y) {
  if (kind == model::NormKind::rms_norm) {
    cpu::rms_norm(x, rows, n, gamma, eps, y);
  } else {
    cpu::layer_norm(x, rows, n, gamma, beta, eps, y);
  }
}

void CpuBackend::linear(const float* x, int64_t rows, const MatrixView& w, const float* bias,
                        float* y) {
  if (!w.chunks) {
    cpu::linear(x, rows, w.cols, w.data, w.dtype, w.rows, bias, y, pool_);
    return;
  }
  // Streamed in row chunks: each part gives output columns [row0, row0 + part rows). One row of
  // x (decoding) writes them in place; more rows go through a buffer of at most kPartOutFloats
  // (a block of x's rows at a time) and are scattered.
  constexpr int64_t kPartOutFloats = int64_t{1} << 20;
  for (const ChunkedMatrix::Part& p : w.chunks->parts) {
    const void* data = weights_.part(p);
    const float* b = bias ? bias + p.row0 : nullptr;
    if (rows == 1) {
      cpu::linear(x, 1, w.cols, data, w.dtype, p.rows, b, y + p.row0, pool_);
      continue;
    }
    const int64_t block = std::clamp<int64_t>(kPartOutFloats / p.rows, 1, rows);
    part_out_.resize(static_cast<std::size_t>(block * p.rows));
    for (int64_t r0 = 0; r0 < rows; r0 += block) {
      const int64_t n = std::min(block, rows - r0);
      cpu::linear(x + r0 * w.cols, n, w.cols, data, w.dtype, p.rows, b, part_out_.data(), pool_);
      for (int64_t r = 0; r < n; ++r)
        std::memcpy(y + (r0 + r) * w.rows + p.row0, part_out_.data() + r * p.rows,
                    static_cast<std::size_t>(p.rows) * sizeof(float));
    }
  }
}

void CpuBackend::rotary(float* x, int64_t rows, int64_t n_head) {
  const int64_t hd = config_.head_dim();
  if (config_.rope_style == model::RopeStyle::half) {
    cpu::rotary_half(x, rows, n_head * hd, n_head, hd, config_.rotary_dim, inv_freq_.data(),
                     positions_.data());
  } else if (!inv_freq_.empty()) {
    cpu::rotary_pairs(x, rows, n_head * hd, n_head, hd, config_.rotary_dim, inv_freq_.data(),
                      positions_.data());
  } else {
    cpu::rotary_interleaved(x, rows, n_head * hd, n_head, hd, config_.rotary_dim,
                            positions_.data());
  }
}

void CpuBackend::reserve(std::span<const SeqRows> seqs) {
  needs_.clear();
  for (const SeqRows& s : seqs) needs_.push_back({s.seq, s.n_past + s.n_new});
  cache_.reserve(needs_);
}

void CpuBackend::attend(int layer, std::span<const SeqRows> seqs, const float* q, const float* k,
                        const float* v, float* out) {
  const int64_t hd = config_.head_dim();
  const int64_t n_kv = config_.n_kv_head;
  const int64_t qd = config_.q_dim();
  const int64_t kvd = config_.kv_dim();
  const int64_t hs = cache_.head_stride();
  const int64_t bs = cache_.block_stride();
  constexpr int64_t bt = KvCache::kBlockTokens;
  // The engine reserved the blocks before the pass; a caller driving the backend directly may
  // not have (the first layer takes them then, all or none).
  if (layer == 0) reserve(seqs);
  float* kc = cache_.k(layer);
  float* vc = cache_.v(layer);
  for (const SeqRows& s : seqs) {
    const std::span<const int32_t> table = cache_.table(s.seq);
    FERRY_EXPECT(kv_blocks_for(s.n_past + s.n_new) <= static_cast<int64_t>(table.size()),
                 "the KV cache has no blocks for sequence slot {}'s tokens {} … {} in layer {}",
                 s.seq, s.n_past, s.n_past + s.n_new - 1, layer);
    // Scatter the new keys (after rotary, as Hugging Face caches them) and values into their
    // blocks, each head's row at kernels/common/kv_paging.hpp's offset.
    for (int64_t t = 0; t < s.n_new; ++t) {
      const float* krow = k + (s.row0 + t) * kvd;
      const float* vrow = v + (s.row0 + t) * kvd;
      for (int64_t h = 0; h < n_kv; ++h) {
        const int64_t at =
            kernels::kv_paged_offset(table.data(), bt, bs, hs, hd, h, s.n_past + t, 0);
        std::memcpy(kc + at, krow + h * hd, static_cast<std::size_t>(hd) * sizeof(float));
        std::memcpy(vc + at, vrow + h * hd, static_cast<std::size_t>(hd) * sizeof(float));
      }
    }
    cpu::AttentionArgs a;
    a.q = q + s.row0 * qd;
    a.q_stride = qd;
    a.k = kc;
    a.v = vc;
    a.kv_head_stride = hs;
    a.block_table = table.data();
    a.block_tokens = bt;
    a.block_stride = bs;
    a.out = out + s.row0 * qd;
    a.out_stride = qd;
    a.n_new = s.n_new;
    a.n_past = s.n_past;
    a.n_head = config_.n_head;
    a.n_kv_head = n_kv;
    a.head_dim = hd;
    cpu::attention(a, pool_);
  }
}

namespace {

// Elementwise activations over a prompt's rows (64 × 16384 values a layer for GPT-J) are worth
// the pool: on one thread GPT-J's tanh took 7% of a 64-token prompt's CPU time while the other
// core waited. Chunks of 16K values; each value's result is the same on any thread.
constexpr int64_t kActivationChunk = int64_t{1} << 14;

template <class Fn>
void split(ThreadPool& pool, int64_t n, Fn fn) {
  if (n < 2 * kActivationChunk) {
    fn(0, n);
    return;
  }
  pool.parallel_for((n + kActivationChunk - 1) / kActivationChunk, 1, [&](int64_t b, int64_t e) {
    fn(b * kActivationChunk, std::min(n, e * kActivationChunk));
  });
}

}  // namespace

void CpuBackend::gelu_new(float* x, int64_t n) {
  split(pool_, n, [&](int64_t b, int64_t e) { cpu::gelu_new(x + b, e - b); });
}

void CpuBackend::silu_mul(float* gate, const float* up, int64_t n) {
  split(pool_, n, [&](int64_t b, int64_t e) { cpu::silu_mul(gate + b, up + b, e - b); });
}

void CpuBackend::add(float* y, const float* x, int64_t n) { cpu::add(y, x, n); }

void CpuBackend::gather_rows(const float* x, std::span<const int64_t> rows, int64_t n, float* y) {
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::memcpy(y + static_cast<int64_t>(i) * n, x + rows[i] * n,
                static_cast<std::size_t>(n) * sizeof(float));
  }
}

void CpuBackend::read(const float* x, int64_t n, std::vector<float>& out) { out.assign(x, x + n); }

}  // namespace ferry::engine
