// attention: the fast and portable kernels (online softmax over key blocks) against the
// reference and against a naive double-precision softmax(q·kᵀ/sqrt(d))·v, with a KV cache holding
// past tokens, several new tokens (causality), strides with padding, and contexts that span
// several key blocks with a maximum that rises from block to block; and grouped-query attention
// (n_kv_head < n_head) against the same problem with every KV head repeated for its query heads,
// as Hugging Face's repeat_kv does.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/common/kv_paging.hpp"
#include "kernels/cpu/ops.hpp"
#include "runtime/core/error.hpp"
#include "tests/kernels/cpu/kernel_test_util.hpp"

namespace ferry::kernels::cpu {
namespace {

using test::kUnitRoundoff;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct Problem {
  int64_t n_past = 0;
  int64_t n_new = 0;
  int64_t n_head = 0;
  int64_t head_dim = 0;
  int64_t n_kv_head = 0;  // 0: one KV head per query head
  int64_t capacity = 0;  // cache rows per head; rows ≥ n_past + n_new hold NaN and must not be read
  int64_t q_stride = 0;
  int64_t out_stride = 0;
  std::vector<float> q;  // padding between rows holds NaN
  std::vector<float> k;
  std::vector<float> v;

  int64_t kv_head_stride() const { return capacity * head_dim; }
  int64_t kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }

  AttentionArgs args(float* out) const {
    AttentionArgs a;
    a.q = q.data();
    a.q_stride = q_stride;
    a.k = k.data();
    a.v = v.data();
    a.kv_head_stride = kv_head_stride();
    a.out = out;
    a.out_stride = out_stride;
    a.n_new = n_new;
    a.n_past = n_past;
    a.n_head = n_head;
    a.head_dim = head_dim;
    a.n_kv_head = n_kv_head;
    return a;
  }
  std::size_t out_size() const { return static_cast<std::size_t>(n_new * out_stride); }
};

// Random q, k, v. q is scaled so the softmax is peaked, and key j is scaled by 1 + key_growth·j
// so later blocks of keys hold larger scores and the online softmax must rescale. The cache
// holds n_kv_head heads (n_head when 0).
Problem make_problem(std::mt19937& rng, int64_t n_past, int64_t n_new, int64_t n_head,
                     int64_t head_dim, float key_growth, int64_t n_kv_head = 0) {
  Problem p;
  p.n_past = n_past;
  p.n_new = n_new;
  p.n_head = n_head;
  p.head_dim = head_dim;
  p.n_kv_head = n_kv_head;
  p.capacity = n_past + n_new + 5;
  p.q_stride = n_head * head_dim + 3;
  p.out_stride = n_head * head_dim + 2;
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  p.q.assign(static_cast<std::size_t>(n_new * p.q_stride), kNaN);
  for (int64_t t = 0; t < n_new; ++t) {
    for (int64_t d = 0; d < n_head * head_dim; ++d) {
      p.q[static_cast<std::size_t>(t * p.q_stride + d)] = 3.0f * dist(rng);
    }
  }
  const auto cache = static_cast<std::size_t>(p.kv_heads() * p.kv_head_stride());
  p.k.assign(cache, kNaN);
  p.v.assign(cache, kNaN);
  for (int64_t h = 0; h < p.kv_heads(); ++h) {
    for (int64_t j = 0; j < n_past + n_new; ++j) {
      for (int64_t d = 0; d < head_dim; ++d) {
        const auto at = static_cast<std::size_t>(h * p.kv_head_stride() + j * head_dim + d);
        p.k[at] = dist(rng) * (1.0f + key_growth * static_cast<float>(j));
        p.v[at] = dist(rng);
      }
    }
  }
  return p;
}

// HF's repeat_kv: the same problem with KV head g copied to query heads g·group … (g+1)·group - 1
// and no grouping left.
Problem repeat_kv(const Problem& p) {
  Problem r = p;
  r.n_kv_head = 0;
  const int64_t group = p.n_head / p.kv_heads();
  const auto head = static_cast<std::size_t>(p.kv_head_stride());
  r.k.assign(static_cast<std::size_t>(p.n_head) * head, kNaN);
  r.v.assign(r.k.size(), kNaN);
  for (int64_t h = 0; h < p.n_head; ++h) {
    const auto from = static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h / group) * head);
    const auto to = static_cast<std::ptrdiff_t>(static_cast<std::size_t>(h) * head);
    const auto len = static_cast<std::ptrdiff_t>(head);
    std::copy(p.k.begin() + from, p.k.begin() + from + len, r.k.begin() + to);
    std::copy(p.v.begin() + from, p.v.begin() + from + len, r.v.begin() + to);
  }
  return r;
}

// The naive double-precision result and a per-(token, head) error bound for an f32 computation.
// With s_j the scores, A = max_j Σ_d |q_d·k_jd| / sqrt(d) bounds |s_j|, and each f32 score is
// within Δs = (head_dim + 4)·u·A of exact. A softmax weight then moves by at most p_j·(2Δs + c·u)
// where c counts the roundings of exp, the denominator's n_keys additions and the block rescales;
// the weighted sum of values adds n_keys more roundings of at most max|v|. Hence
//   |out - exact| ≤ max|v|·(2Δs + (2·n_keys + 40)·u),
// with a 10% margin on top. Dropping or adding a key, or a wrong scale, moves out by ~1e-2.
struct Expected {
  std::vector<double> out;
  std::vector<double> tol;  // per output element
};

Expected naive_attention(const Problem& p) {
  EXPECT_EQ(p.kv_heads(), p.n_head) << "naive_attention takes repeat_kv's problem";
  Expected e;
  e.out.assign(p.out_size(), 0.0);
  e.tol.assign(p.out_size(), 0.0);
  const int64_t hd = p.head_dim;
  for (int64_t t = 0; t < p.n_new; ++t) {
    const int64_t n_keys = p.n_past + t + 1;
    for (int64_t h = 0; h < p.n_head; ++h) {
      const float* q = p.q.data() + t * p.q_stride + h * hd;
      const float* k = p.k.data() + h * p.kv_head_stride();
      const float* v = p.v.data() + h * p.kv_head_stride();
      std::vector<double> s(static_cast<std::size_t>(n_keys));
      double max_s = -INFINITY;
      double a = 0.0;
      double max_v = 0.0;
      for (int64_t j = 0; j < n_keys; ++j) {
        double dot = 0.0;
        double abs_dot = 0.0;
        for (int64_t d = 0; d < hd; ++d) {
          dot += static_cast<double>(q[d]) * k[j * hd + d];
          abs_dot += std::fabs(static_cast<double>(q[d]) * k[j * hd + d]);
          max_v = std::max(max_v, std::fabs(static_cast<double>(v[j * hd + d])));
        }
        s[static_cast<std::size_t>(j)] = dot / std::sqrt(static_cast<double>(hd));
        a = std::max(a, abs_dot / std::sqrt(static_cast<double>(hd)));
        max_s = std::max(max_s, s[static_cast<std::size_t>(j)]);
      }
      double denom = 0.0;
      for (double& sj : s) {
        sj = std::exp(sj - max_s);
        denom += sj;
      }
      const auto delta_s = static_cast<double>(hd + 4) * kUnitRoundoff * a;
      const double tol =
          1.1 * max_v * (2.0 * delta_s + static_cast<double>(2 * n_keys + 40) * kUnitRoundoff);
      for (int64_t d = 0; d < hd; ++d) {
        double acc = 0.0;
        for (int64_t j = 0; j < n_keys; ++j) acc += s[static_cast<std::size_t>(j)] * v[j * hd + d];
        const auto at = static_cast<std::size_t>(t * p.out_stride + h * hd + d);
        e.out[at] = acc / denom;
        e.tol[at] = tol;
      }
    }
  }
  return e;
}

bool is_output(const Problem& p, std::size_t at) {
  return static_cast<int64_t>(at) % p.out_stride < p.n_head * p.head_dim;
}

// Checks out against want (double or float) within factor·tol; padding must keep its sentinel.
template <class Want>
::testing::AssertionResult matches(const char* what, const Problem& p,
                                   const std::vector<float>& out, const Want& want,
                                   const Expected& e, double factor) {
  for (std::size_t i = 0; i < out.size(); ++i) {
    if (!is_output(p, i)) {
      if (out[i] != -7.0f)
        return ::testing::AssertionFailure() << what << ": padding " << i << " overwritten";
      continue;
    }
    const double diff = std::fabs(static_cast<double>(out[i]) - static_cast<double>(want[i]));
    if (!(diff <= factor * e.tol[i])) {
      return ::testing::AssertionFailure()
             << what << ": out[" << i << "] = " << out[i] << ", want " << want[i] << " (|diff| "
             << diff << " > " << factor * e.tol[i] << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

struct Case {
  int64_t n_past, n_new, n_head, head_dim;
  float key_growth;
};

TEST(AttentionTest, FastAndScalarMatchReferenceAndNaiveDouble) {
  ThreadPool pool(2);
  std::mt19937 rng(5);
  const Case cases[] = {
      {5, 4, 3, 20, 0.0f},      // past and several new tokens; head_dim not a multiple of 8
      {150, 1, 2, 256, 0.02f},  // GPT-J-sized decode over three key blocks, rising maxima
      {0, 70, 2, 64, 0.01f},    // a prompt with no past; later tokens span two key blocks
      {130, 3, 1, 7, -0.005f},  // falling maxima; a head smaller than one vector
      {0, 1, 4, 16, 0.0f},      // a single key
  };
  for (const Case& c : cases) {
    SCOPED_TRACE("n_past=" + std::to_string(c.n_past) + " n_new=" + std::to_string(c.n_new) +
                 " n_head=" + std::to_string(c.n_head) + " head_dim=" + std::to_string(c.head_dim));
    const Problem p = make_problem(rng, c.n_past, c.n_new, c.n_head, c.head_dim, c.key_growth);
    const Expected e = naive_attention(p);
    std::vector<float> ref_out(p.out_size(), -7.0f);
    std::vector<float> fast_out(p.out_size(), -7.0f);
    std::vector<float> scalar_out(p.out_size(), -7.0f);
    ref::attention(p.args(ref_out.data()));
    attention(p.args(fast_out.data()), pool);
    scalar::attention(p.args(scalar_out.data()), pool);
    EXPECT_TRUE(matches("ref vs double", p, ref_out, e.out, e, 1.0));
    EXPECT_TRUE(matches("fast vs double", p, fast_out, e.out, e, 1.0));
    EXPECT_TRUE(matches("scalar vs double", p, scalar_out, e.out, e, 1.0));
    EXPECT_TRUE(matches("fast vs ref", p, fast_out, ref_out, e, 2.0));
    EXPECT_TRUE(matches("scalar vs ref", p, scalar_out, ref_out, e, 2.0));
  }
}

// Grouped-query attention: 2:1 and 4:1 (Llama 3, Mistral), 7:1 (Qwen2.5-7B) and one KV head
// for all (MQA), prompt and decode, against the naive double result of the repeated problem with
// the ungrouped test's tolerance; and each kernel against itself on the repeated problem, where
// it reads the same numbers in the same order: the same bits.
TEST(AttentionTest, GroupedKvHeadsMatchRepeatedKvHeads) {
  ThreadPool pool(2);
  std::mt19937 rng(17);
  struct GqaCase {
    int64_t n_past, n_new, n_head, n_kv_head, head_dim;
    float key_growth;
  };
  const GqaCase cases[] = {
      {5, 4, 4, 2, 20, 0.0f},      // 2:1, past and several new tokens
      {150, 1, 8, 2, 128, 0.02f},  // 4:1 decode over three key blocks, rising maxima
      {0, 70, 4, 1, 64, 0.01f},    // MQA prompt spanning two key blocks
      {130, 3, 7, 1, 7, -0.005f},  // MQA, falling maxima, a head smaller than one vector
      {9, 5, 28, 4, 16, 0.0f},     // 7:1, Qwen2.5-7B's 28 query heads over 4 KV heads
  };
  using Kernel = void (*)(const AttentionArgs&, ThreadPool&);
  struct Impl {
    const char* name;
    Kernel fn;
  };
  const Impl impls[] = {{"ref", [](const AttentionArgs& a, ThreadPool&) { ref::attention(a); }},
                        {"fast", attention},
                        {"scalar", scalar::attention}};
  for (const GqaCase& c : cases) {
    SCOPED_TRACE("n_past=" + std::to_string(c.n_past) + " n_new=" + std::to_string(c.n_new) +
                 " n_head=" + std::to_string(c.n_head) + " n_kv_head=" +
                 std::to_string(c.n_kv_head) + " head_dim=" + std::to_string(c.head_dim));
    const Problem p =
        make_problem(rng, c.n_past, c.n_new, c.n_head, c.head_dim, c.key_growth, c.n_kv_head);
    const Problem repeated = repeat_kv(p);
    const Expected e = naive_attention(repeated);
    std::vector<float> ref_out(p.out_size(), -7.0f);
    ref::attention(p.args(ref_out.data()));
    for (const Impl& impl : impls) {
      std::vector<float> grouped(p.out_size(), -7.0f);
      std::vector<float> ungrouped(p.out_size(), -7.0f);
      impl.fn(p.args(grouped.data()), pool);
      impl.fn(repeated.args(ungrouped.data()), pool);
      EXPECT_TRUE(matches(impl.name, p, grouped, e.out, e, 1.0)) << "vs double";
      EXPECT_TRUE(matches(impl.name, p, grouped, ref_out, e, 2.0)) << "vs ref";
      EXPECT_EQ(0, std::memcmp(grouped.data(), ungrouped.data(), grouped.size() * sizeof(float)))
          << impl.name << ": grouped and repeated KV heads differ";
    }
  }
}

// Query heads that cannot share the KV heads evenly are refused by name.
TEST(AttentionTest, UnevenGroupsAreRefused) {
  ThreadPool pool(1);
  std::mt19937 rng(19);
  Problem p = make_problem(rng, 2, 1, 6, 8, 0.0f, 3);
  p.n_kv_head = 4;  // 6 query heads over 4 KV heads
  std::vector<float> out(p.out_size(), -7.0f);
  EXPECT_THROW(attention(p.args(out.data()), pool), InvalidArgument);
  EXPECT_THROW(scalar::attention(p.args(out.data()), pool), InvalidArgument);
}

// Token t sees cache rows 0 … n_past + t only: changing the rows of later tokens leaves the
// first token's output bit-identical and changes the last token's.
TEST(AttentionTest, IsCausal) {
  ThreadPool pool(2);
  std::mt19937 rng(11);
  Problem p = make_problem(rng, 6, 5, 2, 24, 0.0f);
  using Kernel = void (*)(const AttentionArgs&, ThreadPool&);
  const Kernel kernels[] = {attention, scalar::attention,
                            [](const AttentionArgs& a, ThreadPool&) { ref::attention(a); }};
  for (Kernel kernel : kernels) {
    Problem changed = p;
    for (int64_t h = 0; h < p.n_head; ++h) {
      for (int64_t j = p.n_past + 1; j < p.n_past + p.n_new; ++j) {
        for (int64_t d = 0; d < p.head_dim; ++d) {
          const auto at = static_cast<std::size_t>(h * p.kv_head_stride() + j * p.head_dim + d);
          changed.k[at] += 0.5f;
          changed.v[at] = -changed.v[at];
        }
      }
    }
    std::vector<float> before(p.out_size(), -7.0f);
    std::vector<float> after(p.out_size(), -7.0f);
    kernel(p.args(before.data()), pool);
    kernel(changed.args(after.data()), pool);
    const auto row = static_cast<std::size_t>(p.n_head * p.head_dim);
    EXPECT_EQ(0, std::memcmp(before.data(), after.data(), row * sizeof(float)));
    const auto last = static_cast<std::size_t>((p.n_new - 1) * p.out_stride);
    EXPECT_NE(0, std::memcmp(before.data() + last, after.data() + last, row * sizeof(float)));
  }
}

TEST(AttentionTest, ThreadCountDoesNotChangeResults) {
  ThreadPool one(1);
  ThreadPool three(3);
  std::mt19937 rng(13);
  const Problem p = make_problem(rng, 40, 9, 4, 32, 0.01f);
  std::vector<float> a(p.out_size(), -7.0f);
  std::vector<float> b(p.out_size(), -7.0f);
  attention(p.args(a.data()), one);
  attention(p.args(b.data()), three);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
  scalar::attention(p.args(a.data()), one);
  scalar::attention(p.args(b.data()), three);
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

// A paged cache (kernels/common/kv_paging.hpp): the same keys and values scattered over blocks
// in shuffled pool order, with NaN in every block and row the table does not name, give every
// kernel the bits it gives on the contiguous cache — the same numbers in the same order. Blocks
// of 16 (the engine's), 5 (a block boundary inside each 64-key block of the online softmax) and
// 64, prompt and decode, grouped KV heads.
TEST(AttentionTest, PagedCacheEqualsContiguousBitForBit) {
  ThreadPool pool(2);
  std::mt19937 rng(23);
  struct PagedCase {
    int64_t n_past, n_new, n_head, n_kv_head, head_dim, block_tokens;
  };
  const PagedCase cases[] = {
      {150, 1, 4, 2, 128, 16},  // decode over ten blocks, 2:1 grouping
      {0, 70, 2, 0, 64, 16},    // a prompt filling five blocks, the last partly
      {37, 9, 3, 0, 20, 5},     // block boundaries off the 64-key blocks
      {64, 1, 2, 1, 8, 64},     // a whole block then one key of the next
      {0, 1, 1, 0, 16, 16},     // a single key
  };
  using Kernel = void (*)(const AttentionArgs&, ThreadPool&);
  struct Impl {
    const char* name;
    Kernel fn;
  };
  const Impl impls[] = {{"ref", [](const AttentionArgs& a, ThreadPool&) { ref::attention(a); }},
                        {"fast", attention},
                        {"scalar", scalar::attention}};
  for (const PagedCase& c : cases) {
    SCOPED_TRACE("n_past=" + std::to_string(c.n_past) + " n_new=" + std::to_string(c.n_new) +
                 " block_tokens=" + std::to_string(c.block_tokens));
    const Problem p =
        make_problem(rng, c.n_past, c.n_new, c.n_head, c.head_dim, 0.01f, c.n_kv_head);
    const int64_t bt = c.block_tokens;
    const int64_t n_keys = c.n_past + c.n_new;
    const int64_t n_blocks = (n_keys + bt - 1) / bt;
    const int64_t pool_blocks = 2 * n_blocks + 3;  // blocks no table names hold NaN
    const int64_t head_stride = bt * c.head_dim;
    const int64_t block_stride = p.kv_heads() * head_stride;
    std::vector<int32_t> ids(static_cast<std::size_t>(pool_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    const std::vector<int32_t> table(ids.begin(), ids.begin() + n_blocks);
    std::vector<float> pk(static_cast<std::size_t>(pool_blocks * block_stride), kNaN);
    std::vector<float> pv(pk.size(), kNaN);
    for (int64_t h = 0; h < p.kv_heads(); ++h) {
      for (int64_t j = 0; j < n_keys; ++j) {
        for (int64_t d = 0; d < c.head_dim; ++d) {
          const auto to = static_cast<std::size_t>(
              kv_paged_offset(table.data(), bt, block_stride, head_stride, c.head_dim, h, j, d));
          const auto from = static_cast<std::size_t>(h * p.kv_head_stride() + j * c.head_dim + d);
          pk[to] = p.k[from];
          pv[to] = p.v[from];
        }
      }
    }
    for (const Impl& impl : impls) {
      std::vector<float> contiguous(p.out_size(), -7.0f);
      std::vector<float> paged(p.out_size(), -7.0f);
      impl.fn(p.args(contiguous.data()), pool);
      AttentionArgs a = p.args(paged.data());
      a.k = pk.data();
      a.v = pv.data();
      a.kv_head_stride = head_stride;
      a.block_table = table.data();
      a.block_tokens = bt;
      a.block_stride = block_stride;
      impl.fn(a, pool);
      EXPECT_EQ(0, std::memcmp(contiguous.data(), paged.data(), paged.size() * sizeof(float)))
          << impl.name << ": the paged cache gives other bits";
    }
  }
}

// kv_paged_offset (shared with the CUDA kernels) puts every (head, token, feature) of a sequence
// at its own element, inside the blocks its table names, head runs contiguous.
TEST(AttentionTest, PagedOffsetsAreDistinctAndInsideTheTable) {
  const int64_t bt = 16, hd = 8, n_kv = 3, hs = bt * hd, bs = 2 * n_kv * hs;  // k and v interleaved
  const std::vector<int32_t> table = {7, 2, 5};
  std::vector<int> hits(static_cast<std::size_t>(8 * bs), 0);
  for (int64_t h = 0; h < n_kv; ++h) {
    for (int64_t j = 0; j < 3 * bt; ++j) {
      for (int64_t d = 0; d < hd; ++d) {
        const int64_t at = kv_paged_offset(table.data(), bt, bs, hs, hd, h, j, d);
        const int32_t block = table[static_cast<std::size_t>(j / bt)];
        ASSERT_GE(at, block * bs);
        ASSERT_LT(at, block * bs + n_kv * hs);  // the k half of the block
        ++hits[static_cast<std::size_t>(at)];
        if (d > 0) {
          EXPECT_EQ(at, kv_paged_offset(table.data(), bt, bs, hs, hd, h, j, d - 1) + 1);
        }
      }
    }
  }
  for (int n : hits) ASSERT_LE(n, 1);
  EXPECT_EQ(kv_paged_offset(table.data(), bt, bs, hs, hd, 1, 17, 3), 2 * bs + hs + hd + 3);
}

}  // namespace
}  // namespace ferry::kernels::cpu
