// The CUDA engine's 16-bit tolerances, checked on the CPU: the forward pass with the GPU's
// roundings emulated (every matrix product's input rounded to f16 or bf16, the KV cache to f16
// or bf16, all else f32, as runtime/cuda/cuda_engine.cpp computes) stays well inside the bound
// tests/runtime/cuda/test_cuda_engine.cpp allows against Hugging Face's logits,
// (2·n_layer + 2)·u·max|logit| with u = 2^-11 (f16) or 2^-8 (bf16). Measured here: 10–20% of the
// bound on every fixture, so the GPU tests fail on a real defect, not on rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "runtime/core/half.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/engine/weights.hpp"
#include "tests/support/test_support.hpp"

namespace ferry::engine {
namespace {

namespace cpu = kernels::cpu;

// Largest |logit - reference| over the last position, as a fraction of the GPU test's bound.
double emulated_error_over_bound(const std::string& fixture, DType half, const nlohmann::json& p) {
  const auto dir = test::data_dir() / "gptj" / fixture;
  const auto config = model::ModelConfig::from_model_dir(dir);
  const auto ck = offload::Checkpoint::open(dir);
  StreamingWeights w(config, ck, Placement::all(config, offload::Tier::host));
  ThreadPool& pool = default_thread_pool();
  const auto round = [half](std::vector<float>& v) {
    for (float& x : v)
      x = half == DType::f16 ? f16_to_f32(f32_to_f16(x)) : bf16_to_f32(f32_to_bf16(x));
  };
  const int64_t e = config.n_embd, f = config.n_inner, nh = config.n_head, hd = config.head_dim();
  const auto ids = p["input_ids"].get<std::vector<int32_t>>();
  const auto T = static_cast<int64_t>(ids.size());
  const auto n = [](int64_t a) { return static_cast<std::size_t>(a); };
  std::vector<float> x(n(T * e)), h(n(T * e)), q(n(T * e)), k(n(T * e)), v(n(T * e)), at(n(T * e)),
      pr(n(T * e)), ff(n(T * f)), mlp(n(T * e)), kc(n(T * e)), vc(n(T * e));
  std::vector<int32_t> pos(n(T));
  for (int64_t i = 0; i < T; ++i) pos[n(i)] = static_cast<int32_t>(i);
  w.embed(ids, x.data());
  const auto linear = [&](const std::vector<float>& in, const MatrixView& m, const float* bias,
                          std::vector<float>& out) {
    cpu::linear(in.data(), T, m.cols, m.data, m.dtype, m.rows, bias, out.data(), pool);
  };
  for (int l = 0; l < config.n_layer; ++l) {
    const BlockWeights b = w.acquire_block(l);
    cpu::layer_norm(x.data(), T, e, b.ln_1_w, b.ln_1_b, config.layer_norm_epsilon, h.data());
    round(h);
    linear(h, b.q_proj, nullptr, q);
    linear(h, b.k_proj, nullptr, k);
    linear(h, b.v_proj, nullptr, v);
    cpu::rotary_interleaved(q.data(), T, e, nh, hd, config.rotary_dim, pos.data());
    cpu::rotary_interleaved(k.data(), T, e, nh, hd, config.rotary_dim, pos.data());
    for (int64_t t = 0; t < T; ++t)  // head-major cache, rounded like the GPU's f16 cache
      for (int64_t hh = 0; hh < nh; ++hh)
        for (int64_t d = 0; d < hd; ++d) {
          kc[n(hh * T * hd + t * hd + d)] = k[n(t * e + hh * hd + d)];
          vc[n(hh * T * hd + t * hd + d)] = v[n(t * e + hh * hd + d)];
        }
    round(kc);
    round(vc);
    cpu::AttentionArgs a;
    a.q = q.data();
    a.q_stride = e;
    a.k = kc.data();
    a.v = vc.data();
    a.kv_head_stride = T * hd;
    a.out = at.data();
    a.out_stride = e;
    a.n_new = T;
    a.n_head = nh;
    a.head_dim = hd;
    cpu::attention(a, pool);
    round(at);
    linear(at, b.out_proj, nullptr, pr);
    linear(h, b.fc_in, b.fc_in_b, ff);
    cpu::gelu_new(ff.data(), T * f);
    round(ff);
    linear(ff, b.fc_out, b.fc_out_b, mlp);
    cpu::add(mlp.data(), pr.data(), T * e);
    cpu::add(x.data(), mlp.data(), T * e);
    w.release_block(l);
  }
  const HeadWeights hw = w.acquire_head();
  std::vector<float> fin(n(e)), logits(n(config.vocab_size));
  cpu::layer_norm(x.data() + (T - 1) * e, 1, e, hw.ln_f_w, hw.ln_f_b, config.layer_norm_epsilon,
                  fin.data());
  round(fin);
  cpu::linear(fin.data(), 1, e, hw.lm_head.data, hw.lm_head.dtype, config.vocab_size, hw.lm_head_b,
              logits.data(), pool);
  w.release_head();
  const auto last = p["last_logits"].get<std::vector<float>>();
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < last.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(logits[i]) - last[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(last[i])));
  }
  const double u = half == DType::f16 ? 0x1p-11 : 0x1p-8;
  return diff / ((2.0 * config.n_layer + 2) * u * scale);
}

TEST(GpuTolerance, EmulatedHalfPathsStayWellInsideTheBound) {
  for (const std::string fixture : {"tiny-f32", "sharded-f32", "tiny-f16-bin-sharded"}) {
    const auto expected = nlohmann::json::parse(
        test::read_file(test::data_dir() / "gptj" / fixture / "expected.json"));
    for (DType half : {DType::f16, DType::bf16})
      for (const auto& p : expected["prompts"]) {
        const double r = emulated_error_over_bound(fixture, half, p);
        EXPECT_LT(r, 0.5) << fixture << " " << dtype_name(half);
        EXPECT_GT(r, 0.0) << fixture;  // the emulation did round
      }
  }
}

}  // namespace
}  // namespace ferry::engine
