// How much top-1 agreement a quantized model can keep at a given bit rate, measured on a model:
// the int8 / int4 packs ferry writes, next to the same model with Gaussian noise added to the
// same weights (the six matrices of every block) at chosen relative sizes, among them the
// smallest error any quantizer can reach at the packs' bit rates.
//
// The floor: for weights drawn i.i.d. from a Gaussian (how random models, the fixtures among
// them, are initialised), no code of R bits per weight has a mean squared error below
// σ²·2^(−2R) (the Gaussian distortion–rate function), i.e. a relative RMS error ρ = ‖ŵ − w‖/‖w‖
// of at least 2^(−R). int4 in groups of G costs R = 4 + 32/G bits per weight (an f16 scale and
// minimum per group), int8 per row R = 8 + 32/k. The noise runs show what top-1 agreement the
// model keeps at such a ρ, so the table says whether a target is reachable at a bit rate at all.
// (A quantizer that knows the inputs, GPTQ-style, weighs the error by the inputs' covariance;
// with the fixtures' nearly isotropic activations that moves little.)
//
// Every variant is scored with the perplexity evaluator against the source model (f32) on the
// same random ids, as `ferry perplexity --reference` does: top-1 agreement and mean KL.
//   quant_floor MODEL_DIR [--positions 1500] [--ctx 128]
// Prints a table (and one JSON object per line with --json). Never asserts.
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/ops.hpp"
#include "offload/checkpoint.hpp"
#include "offload/checkpoint_writer.hpp"
#include "runtime/core/quant.hpp"
#include "runtime/engine/convert.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/perplexity.hpp"

namespace {

namespace fs = std::filesystem;
using namespace ferry;
using namespace ferry::engine;

bool is_block_matrix(const std::string& name) {
  if (name.find(".h.") == std::string::npos) return false;
  for (const char* end : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight",
                          "fc_in.weight", "fc_out.weight"})
    if (name.size() >= std::strlen(end) && name.ends_with(end)) return true;
  return false;
}

// A tensor as f32 values, whatever its stored dtype (packed rows dequantized, a row at a time).
std::vector<float> read_f32(const offload::Checkpoint& ck, const offload::TensorEntry& t) {
  std::vector<std::byte> raw(t.nbytes);
  ck.read(t, raw.data());
  const int64_t n = t.shape.numel();
  std::vector<float> out(static_cast<std::size_t>(n));
  const int64_t rows = is_quantized(t.dtype) ? t.shape[0] : 1;
  const int64_t cols = n / rows;
  const uint64_t row_bytes = packed_row_bytes(t.dtype, cols);
  for (int64_t r = 0; r < rows; ++r)
    kernels::cpu::convert_to_f32(raw.data() + static_cast<uint64_t>(r) * row_bytes, t.dtype, cols,
                                 out.data() + r * cols);
  return out;
}

struct Row {
  std::string variant;
  double bits = 0;  // per block-matrix weight (0: not a code)
  double rho = 0;   // ‖ŵ − w‖ / ‖w‖ over the block matrices
  double kl = 0;
  double top1 = 0;
  int64_t tokens = 0;
};

}  // namespace

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: quant_floor MODEL_DIR [--positions N] [--ctx N] [--json]\n");
    return 2;
  }
  const fs::path src = argv[1];
  int64_t positions = 1500;
  int64_t ctx = 128;
  bool json = false;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") json = true;
    if (a == "--positions" && i + 1 < argc) positions = std::stol(argv[++i]);
    if (a == "--ctx" && i + 1 < argc) ctx = std::stol(argv[++i]);
  }
  const auto config = model::ModelConfig::from_model_dir(src);
  ctx = std::min<int64_t>(ctx, config.n_positions);
  std::mt19937 id_rng(1);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(config.vocab_size) - 1);
  std::vector<int32_t> ids(static_cast<std::size_t>(positions));
  for (auto& t : ids) t = id(id_rng);

  const auto host = [&](const fs::path& dir) {
    LoadOptions o;
    o.placement = Placement::all(model::ModelConfig::from_model_dir(dir), offload::Tier::host, 2);
    return load_model(dir, o);
  };
  EngineOptions eo;
  eo.context = ctx;
  LoadedModel ref_model = host(src);
  Engine ref(*ref_model.weights, eo, default_thread_pool());
  const auto score = [&](const fs::path& dir, Row row) {
    LoadedModel m = host(dir);
    Engine eng(*m.weights, eo, default_thread_pool());
    PerplexityOptions po;
    po.context = ctx;
    const PerplexityReport r = evaluate_perplexity(eng, ids, po, &ref);
    row.tokens = r.model.tokens;
    row.kl = r.vs_reference->mean_kl(r.model.tokens);
    row.top1 = static_cast<double>(r.vs_reference->top1_agree) / static_cast<double>(row.tokens);
    return row;
  };

  // The source's tensors, as f32.
  const auto ck = offload::Checkpoint::open(src);
  std::vector<offload::TensorSpec> specs;
  std::map<std::string, std::vector<float>> values;
  double w_sq = 0;
  int64_t k_min = INT64_MAX;
  for (const auto& t : ck.tensors()) {
    specs.push_back({t.name, DType::f32, t.shape});
    values[t.name] = read_f32(ck, t);
    if (is_block_matrix(t.name)) {
      for (float v : values[t.name]) w_sq += static_cast<double>(v) * v;
      k_min = std::min<int64_t>(k_min, t.shape[1]);
    }
  }

  const fs::path work = fs::temp_directory_path() / fmt::format("quant_floor_{}", ::getpid());
  fs::create_directories(work);
  std::vector<Row> rows;

  // ferry's packs.
  struct Pack {
    const char* name;
    const char* quant;
    int group;
  };
  for (const Pack p : {Pack{"pack int8", "int8", 64}, Pack{"pack int4 g64", "int4", 64},
                       Pack{"pack int4 g128", "int4", 128}}) {
    const fs::path dir = work / p.quant / std::to_string(p.group);
    ConvertOptions co;
    co.format = model::WeightFormat::parse(p.quant, p.group);
    convert_model(src, dir, co);
    const auto pk = offload::Checkpoint::open(dir);
    double err = 0;
    for (const auto& t : pk.tensors()) {
      if (!is_block_matrix(t.name)) continue;
      const auto q = read_f32(pk, t);
      const auto& w = values.at(t.name);
      for (std::size_t i = 0; i < q.size(); ++i) {
        const double d = static_cast<double>(q[i]) - w[i];
        err += d * d;
      }
    }
    const double bits = std::string(p.quant) == "int8" ? 8.0 + 32.0 / static_cast<double>(k_min)
                                                       : 4.0 + 32.0 / p.group;
    rows.push_back(score(dir, {p.name, bits, std::sqrt(err / w_sq)}));
  }

  // Gaussian noise on the block matrices: each row's noise scaled to the row's RMS.
  const double rd8 = std::exp2(-(8.0 + 32.0 / static_cast<double>(k_min)));
  std::vector<std::pair<std::string, double>> levels = {
      {"noise at the 8-bit floor", rd8},
      {"noise at the 4.5-bit floor (g64)", std::exp2(-4.5)},
      {"noise at the 4.25-bit floor (g128)", std::exp2(-4.25)}};
  for (const double rho : {0.002, 0.004, 0.008, 0.016, 0.03, 0.06, 0.1})
    levels.push_back({fmt::format("noise ρ = {}", rho), rho});
  int seed = 0;
  for (const auto& [name, rho] : levels) {
    std::mt19937 rng(static_cast<unsigned>(100 + seed++));
    std::normal_distribution<double> z(0.0, 1.0);
    std::map<std::string, std::vector<float>> noisy;
    for (const auto& [n, w] : values) {
      if (!is_block_matrix(n)) continue;
      const auto& t = ck.at(n);
      const int64_t cols = t.shape[1];
      auto out = w;
      for (int64_t r = 0; r < t.shape[0]; ++r) {
        double s = 0;
        for (int64_t j = 0; j < cols; ++j)
          s += static_cast<double>(w[r * cols + j]) * w[r * cols + j];
        const double rms = std::sqrt(s / static_cast<double>(cols));
        for (int64_t j = 0; j < cols; ++j)
          out[r * cols + j] = static_cast<float>(w[r * cols + j] + rho * rms * z(rng));
      }
      noisy[n] = std::move(out);
    }
    const fs::path dir = work / fmt::format("noise{}", seed);
    fs::create_directories(dir);
    fs::copy_file(src / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);
    offload::write_checkpoint(
        dir, specs,
        [&](const offload::TensorSpec& s, uint64_t first, std::span<std::byte> dst) {
          const auto it = noisy.find(s.name);
          const auto& v = it != noisy.end() ? it->second : values.at(s.name);
          std::memcpy(dst.data(), reinterpret_cast<const std::byte*>(v.data()) + first, dst.size());
        },
        {});
    rows.push_back(score(dir, {name, 0, rho}));
  }
  fs::remove_all(work);

  std::printf("%s: %lld positions (random ids, windows of %lld), against its own weights in f32\n",
              src.filename().c_str(), static_cast<long long>(rows[0].tokens),
              static_cast<long long>(ctx));
  std::printf("%-36s %10s %10s %12s %8s\n", "variant", "bits/w", "rel. err", "KL", "top-1");
  for (const Row& r : rows) {
    std::printf("%-36s %10s %10.5f %12.3e %7.1f%%\n", r.variant.c_str(),
                r.bits > 0 ? fmt::format("{:.2f}", r.bits).c_str() : "", r.rho, r.kl,
                100.0 * r.top1);
    if (json)
      std::printf("%s\n",
                  fmt::format("{{\"model\": \"{}\", \"variant\": \"{}\", \"bits\": {:.3f}, "
                              "\"rel_err\": {:.6f}, \"kl\": {:.4e}, \"top1\": {:.4f}}}",
                              src.filename().string(), r.variant, r.bits, r.rho, r.kl, r.top1)
                      .c_str());
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "quant_floor: %s\n", e.what());
  return 1;
}
