// The paged KV cache (runtime/engine/kv_cache.hpp): blocks taken as sequences grow and given
// back when they are reset or shortened, reused after, an error naming the pool when it is out
// of blocks (before anything changes); and on the CPU backend, sequences whose blocks interleave
// in the pool give the logits they give alone, bit for bit.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/engine/cpu_backend.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/kv_cache.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/planning.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

constexpr int64_t kBt = KvCache::kBlockTokens;

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

model::ModelConfig tiny_config() { return load_model(test::data_dir() / "gptj/tiny-f32").config; }

std::vector<int32_t> blocks_of(const KvCache& c, int seq) {
  const auto t = c.table(seq);
  return {t.begin(), t.end()};
}

TEST(KvCache, BlocksFollowTheLength) {
  const model::ModelConfig config = tiny_config();
  KvCache c(config, 2, 4 * kBt);
  EXPECT_EQ(c.blocks_total(), 2 * 4);  // the default pool: every slot full
  EXPECT_EQ(c.nbytes(), KvCache::bytes_needed(config, 2, 4 * kBt));
  EXPECT_EQ(c.nbytes(), static_cast<uint64_t>(c.blocks_total()) * KvCache::block_bytes(config));
  EXPECT_EQ(c.blocks_used(), 0);
  c.set_length(0, 1);
  EXPECT_EQ(c.blocks_used(), 1);
  c.set_length(0, kBt);
  EXPECT_EQ(c.blocks_used(), 1);
  c.set_length(0, kBt + 1);
  EXPECT_EQ(c.blocks_used(), 2);
  c.set_length(1, 3 * kBt);
  EXPECT_EQ(c.blocks_used(), 5);
  std::set<int32_t> all;
  for (int s = 0; s < 2; ++s)
    for (int32_t b : blocks_of(c, s)) EXPECT_TRUE(all.insert(b).second) << "block " << b;
  // Shrinking gives back the blocks beyond the new length (speculative decoding's roll-back)…
  c.set_length(1, kBt + 2);
  EXPECT_EQ(c.length(1), kBt + 2);
  EXPECT_EQ(c.table(1).size(), 2u);
  EXPECT_EQ(c.blocks_used(), 4);
  // …and a reset all of them.
  c.set_length(0, 0);
  EXPECT_EQ(c.table(0).size(), 0u);
  EXPECT_EQ(c.blocks_used(), 2);
  c.set_length(1, 0);
  EXPECT_EQ(c.blocks_used(), 0);
}

TEST(KvCache, FreedBlocksAreReused) {
  KvCache c(tiny_config(), 2, 4 * kBt, 3 * kBt);  // a pool of three blocks for two slots of four
  EXPECT_EQ(c.blocks_total(), 3);
  c.set_length(0, 3 * kBt);
  EXPECT_EQ(c.blocks_free(), 0);
  const std::vector<int32_t> held = blocks_of(c, 0);
  c.set_length(0, kBt);  // gives back the last two
  c.set_length(1, 2 * kBt);
  std::vector<int32_t> got = blocks_of(c, 1);
  std::vector<int32_t> freed(held.begin() + 1, held.end());
  std::sort(got.begin(), got.end());
  std::sort(freed.begin(), freed.end());
  EXPECT_EQ(got, freed);
  EXPECT_EQ(c.blocks_free(), 0);
}

TEST(KvCache, OutOfBlocksIsAnErrorThatTakesNothing) {
  KvCache c(tiny_config(), 3, 64, 2 * kBt);
  c.set_length(0, kBt);
  // Three sequences that want a block each, with one free: none gets any.
  const std::vector<KvCache::Need> needs = {{1, 1}, {2, 1}, {0, kBt + 1}};
  const std::string msg = error_of([&] { c.reserve(needs); });
  EXPECT_NE(msg.find("KV cache is full"), std::string::npos) << msg;
  EXPECT_NE(msg.find("3 more blocks of " + std::to_string(kBt) + " tokens but only 1 of"),
            std::string::npos)
      << msg;
  EXPECT_NE(msg.find("pool's 2 (" + std::to_string(2 * kBt) + " tokens)"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("--kv-tokens"), std::string::npos) << msg;
  EXPECT_EQ(c.blocks_used(), 1);
  EXPECT_EQ(c.table(1).size(), 0u);
  EXPECT_EQ(c.table(0).size(), 1u);
  EXPECT_EQ(c.length(0), kBt);
  // One of them fits.
  c.reserve(1, 1);
  EXPECT_EQ(c.blocks_free(), 0);
  EXPECT_EQ(c.length(1), 0);  // reserved, not yet written
  EXPECT_THROW(c.set_length(2, 1), InvalidArgument);
  EXPECT_THROW(c.set_length(0, 65), InvalidArgument);  // past the context
  EXPECT_THROW(c.set_length(3, 1), InvalidArgument);   // no such slot
  EXPECT_THROW(KvCache(tiny_config(), 1, 64, -1), InvalidArgument);
}

// A pool of tokens smaller than a block is still one block; an explicit pool ignores the slots.
TEST(KvCache, PoolSizes) {
  // Each slot rounded up to whole blocks.
  EXPECT_EQ(KvCache::pool_blocks(4, 3 * kBt + 1, 0), 4 * 4);
  EXPECT_EQ(KvCache::pool_blocks(4, 100, 1), 1);
  EXPECT_EQ(KvCache::pool_blocks(4, 100, 2 * kBt + 1), 3);
  const model::ModelConfig config = tiny_config();
  EXPECT_EQ(KvCache::block_bytes(config),
            static_cast<uint64_t>(config.n_layer) * 2 * kBt * config.kv_dim() * sizeof(float));
}

// The planner counts the pool's bytes: every slot full by default, else the tokens asked for
// (whole blocks), with no per-context-token figure then (a shorter context frees nothing).
TEST(KvCache, PlanCountsThePool) {
  const model::ModelConfig config = tiny_config();
  PlanOptions po;
  po.context = 64;
  po.max_seqs = 4;
  const planner::PlanRequest full = plan_request(config, nullptr, planner::Machine{}, po, "tiny");
  EXPECT_EQ(full.kv_bytes, KvCache::bytes_needed(config, 4, 64));
  EXPECT_EQ(full.kv_bytes, 4 * kv_blocks_for(64) * KvCache::block_bytes(config));
  EXPECT_GT(full.kv_bytes_per_context_token, 0u);
  po.kv_pool_tokens = 40;
  const planner::PlanRequest pooled = plan_request(config, nullptr, planner::Machine{}, po, "tiny");
  EXPECT_EQ(pooled.kv_bytes, kv_blocks_for(40) * KvCache::block_bytes(config));
  EXPECT_EQ(pooled.kv_bytes_per_context_token, 0u);
}

// Runs batches on an engine, returning each pass's logits.
std::vector<std::vector<float>> run(Engine& e, const std::vector<std::vector<SeqTokens>>& passes,
                                    LogitsFor which = LogitsFor::last) {
  std::vector<std::vector<float>> out;
  for (const auto& b : passes) out.push_back(e.forward(b, which));
  return out;
}

std::vector<int32_t> tokens(int n, int32_t salt) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back((salt * 37 + i * 11) % 500);
  return t;
}

// Three sequences growing in turn, one sequence per pass, so that their blocks interleave in
// the pool (and the second's blocks are ones the first gave back), give the logits each gives
// alone on a fresh engine, bit for bit.
TEST(KvCache, InterleavedSequencesEqualEachAlone) {
  LoadedModel m = load_model(test::data_dir() / "gptj/sharded-f32");
  EngineOptions opts;
  opts.max_seqs = 3;
  opts.context = 64;
  opts.kv_pool_tokens = 5 * kBt;  // all used at the end, of 6 for three full slots
  Engine shared(*m.weights, opts, default_thread_pool());
  const std::vector<int32_t> a = tokens(40, 1), b = tokens(50, 2), c = tokens(23, 3);
  const std::vector<int32_t> junk = tokens(33, 4);
  // A sequence that takes three blocks and gives them back, so that the others reuse them.
  SeqTokens j{2, junk};
  shared.forward({&j, 1}, LogitsFor::last);
  shared.reset(2);
  // Prompts in chunks of 7 then 5 tokens, taking turns.
  struct Piece {
    int seq;
    const std::vector<int32_t>* all;
    int64_t from, n;
  };
  std::vector<Piece> order;
  const std::vector<int32_t>* seqs[3] = {&a, &b, &c};
  std::vector<int64_t> at(3, 0);
  for (bool more = true; more;) {
    more = false;
    for (int s = 0; s < 3; ++s) {
      const auto size = static_cast<int64_t>(seqs[s]->size());
      if (at[static_cast<std::size_t>(s)] >= size) continue;
      const int64_t n = std::min<int64_t>(at[static_cast<std::size_t>(s)] % 2 ? 5 : 7,
                                          size - at[static_cast<std::size_t>(s)]);
      order.push_back({s, seqs[s], at[static_cast<std::size_t>(s)], n});
      at[static_cast<std::size_t>(s)] += n;
      more = true;
    }
  }
  std::vector<std::vector<std::vector<float>>> got(3);
  for (const Piece& p : order) {
    SeqTokens t{p.seq, {p.all->data() + p.from, static_cast<std::size_t>(p.n)}};
    got[static_cast<std::size_t>(p.seq)].push_back(shared.forward({&t, 1}, LogitsFor::all));
  }
  // The tables interleave: no sequence holds consecutive blocks only.
  const auto& cache = dynamic_cast<const CpuBackend&>(shared.backend()).kv_cache();
  std::vector<int32_t> t0(cache.table(0).begin(), cache.table(0).end());
  EXPECT_FALSE(std::is_sorted(t0.begin(), t0.end()) &&
               t0.back() - t0.front() == static_cast<int32_t>(t0.size()) - 1);
  EXPECT_EQ(shared.kv_usage().blocks_used,
            kv_blocks_for(40) + kv_blocks_for(50) + kv_blocks_for(23));
  EXPECT_EQ(shared.kv_usage().blocks_total, 5);

  for (int s = 0; s < 3; ++s) {
    Engine alone(*m.weights, {1, 64}, default_thread_pool());
    std::size_t i = 0;
    for (const Piece& p : order) {
      if (p.seq != s) continue;
      SeqTokens t{0, {p.all->data() + p.from, static_cast<std::size_t>(p.n)}};
      const std::vector<float>& want = alone.forward({&t, 1}, LogitsFor::all);
      ASSERT_EQ(got[static_cast<std::size_t>(s)][i++], want)
          << "sequence " << s << " at " << p.from;
    }
  }
}

// Batches of several sequences, each growing by a different amount per pass, on a pool whose
// blocks they share, give the logits the same batches give on a cache of contiguous slots (one
// sequence per slot region: a pool as large as every slot full, used in slot order), bit for
// bit; and each sequence's last-token logits equal its run alone within rounding (a product
// over more rows sums in another order).
TEST(KvCache, BatchesWithInterleavedGrowthEqualSingleRuns) {
  LoadedModel m = load_model(test::data_dir() / "gptj/sharded-f32");
  const std::vector<std::vector<int32_t>> prompts = {tokens(9, 5), tokens(20, 6), tokens(3, 7)};
  const auto make_passes = [&](std::vector<std::vector<int32_t>>& store) {
    // Prefill all three at once, then steps where each adds 1, 2 or 3 tokens.
    std::vector<std::vector<SeqTokens>> passes(1);
    for (int s = 0; s < 3; ++s) passes[0].push_back({s, prompts[static_cast<std::size_t>(s)]});
    store.clear();
    store.reserve(64);
    for (int step = 0; step < 12; ++step) {
      std::vector<SeqTokens> b;
      for (int s = 0; s < 3; ++s) {
        if ((step + s) % 4 == 3) continue;  // a sequence sits a pass out now and then
        store.push_back(tokens(1 + (step + s) % 3, 10 * step + s));
        b.push_back({s, store.back()});
      }
      passes.push_back(b);
    }
    return passes;
  };
  std::vector<std::vector<int32_t>> store;
  const auto passes = make_passes(store);
  EngineOptions paged;
  paged.max_seqs = 3;
  paged.context = 64;
  paged.kv_pool_tokens = 5 * kBt;  // less than three full slots (6 blocks); 4 are used
  Engine e(*m.weights, paged, default_thread_pool());
  const auto got = run(e, passes);
  EXPECT_EQ(e.kv_usage().blocks_used, 4);  // 27, 38 and 21 tokens

  // The same batches on a fresh engine whose pool is every slot full: blocks handed out in
  // another order.
  EngineOptions full = paged;
  full.kv_pool_tokens = 0;
  Engine f(*m.weights, full, default_thread_pool());
  {
    // Shift its free list: a sequence takes and gives back two blocks first.
    const std::vector<int32_t> junk = tokens(2 * kBt, 9);
    SeqTokens j{1, junk};
    f.forward({&j, 1}, LogitsFor::last);
    f.reset(1);
  }
  EXPECT_EQ(run(f, passes), got);

  // Each sequence alone, token for token the same history.
  const auto vocab = static_cast<std::size_t>(m.config.vocab_size);
  for (int s = 0; s < 3; ++s) {
    Engine alone(*m.weights, {1, 64}, default_thread_pool());
    for (std::size_t p = 0; p < passes.size(); ++p) {
      for (std::size_t i = 0; i < passes[p].size(); ++i) {
        if (passes[p][i].seq != s) continue;
        SeqTokens t{0, passes[p][i].tokens};
        const std::vector<float>& want = alone.forward({&t, 1}, LogitsFor::last);
        for (std::size_t v = 0; v < vocab; ++v)
          ASSERT_NEAR(got[p][i * vocab + v], want[v], 1e-5f) << "sequence " << s << " pass " << p;
      }
    }
  }
}

// Out of blocks mid-run: forward throws before any state changes (lengths, blocks), and the
// batch runs once another sequence gives its blocks back.
TEST(KvCache, EngineOutOfBlocksChangesNothing) {
  LoadedModel m = load_model(test::data_dir() / "gptj/tiny-f32");
  EngineOptions opts;
  opts.max_seqs = 2;
  opts.context = 4 * kBt;
  opts.kv_pool_tokens = 3 * kBt;
  Engine e(*m.weights, opts, default_thread_pool());
  const std::vector<int32_t> a = tokens(2 * kBt, 1), b = tokens(kBt + 1, 2);
  SeqTokens sa{0, a};
  e.forward({&sa, 1}, LogitsFor::last);
  const KvUsage before = e.kv_usage();
  EXPECT_EQ(before.block_tokens, kBt);
  EXPECT_EQ(before.blocks_total, 3);
  EXPECT_EQ(before.blocks_used, 2);
  EXPECT_EQ(before.bytes_total, 3 * KvCache::block_bytes(m.config));
  const std::vector<int32_t> one = {5};
  const std::vector<SeqTokens> batch = {{0, one}, {1, b}};
  const std::string msg = error_of([&] { e.forward(batch, LogitsFor::last); });
  EXPECT_NE(msg.find("KV cache is full"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--kv-tokens"), std::string::npos) << msg;
  EXPECT_EQ(e.length(0), 2 * kBt);
  EXPECT_EQ(e.length(1), 0);
  EXPECT_EQ(e.kv_usage().blocks_used, 2);
  // After a reset of the first, the second fits, and gives what it gives on a fresh engine.
  e.reset(0);
  EXPECT_EQ(e.kv_usage().blocks_used, 0);
  SeqTokens sb{1, b};
  const std::vector<float> got = e.forward({&sb, 1}, LogitsFor::last);
  Engine fresh(*m.weights, {1, 64}, default_thread_pool());
  SeqTokens s0{0, b};
  EXPECT_EQ(fresh.forward({&s0, 1}, LogitsFor::last), got);
}

// Speculative decoding's roll-back: shrinking a sequence (set_length to fewer tokens) gives its
// blocks beyond back, and growing it again gives the logits of a run that never held the
// dropped tokens.
TEST(KvCache, ShrinkThenGrowEqualsNeverGrown) {
  LoadedModel m = load_model(test::data_dir() / "gptj/tiny-f32");
  Engine e(*m.weights, {1, 64}, default_thread_pool());
  const std::vector<int32_t> prompt = tokens(kBt - 2, 3), drafts = tokens(6, 4), fix = tokens(3, 5);
  SeqTokens p{0, prompt};
  e.forward({&p, 1}, LogitsFor::last);
  SeqTokens d{0, drafts};
  e.forward({&d, 1}, LogitsFor::all);  // kBt + 4 tokens: two blocks
  EXPECT_EQ(e.kv_usage().blocks_used, 2);
  e.backend().set_length(0, kBt - 2);  // every draft rejected
  EXPECT_EQ(e.kv_usage().blocks_used, 1);
  SeqTokens f{0, fix};
  const std::vector<float> got = e.forward({&f, 1}, LogitsFor::all);

  Engine clean(*m.weights, {1, 64}, default_thread_pool());
  clean.forward({&p, 1}, LogitsFor::last);
  EXPECT_EQ(clean.forward({&f, 1}, LogitsFor::all), got);
}

}  // namespace
}  // namespace ferry::engine
