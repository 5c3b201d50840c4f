// ferry convert (a checkpoint → a ferry pack of f16 / int8 / int4 layers) and ferry verify (every
// checksum of a pack, read once).
#include <fmt/format.h>

#include <chrono>

#include "offload/checkpoint.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/thread_pool.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/convert.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace {
double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

Command add_convert(CLI::App& app) {
  struct Options {
    std::string model;
    std::string out;
    std::string quant = "f16";
    int group = 64;
    bool quant_embeddings = false;
    bool quant_lm_head = false;
    std::string lm_head;
    bool quiet = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "rewrite a checkpoint as a ferry pack: one aligned, checksummed blob per layer, "
      "in f16, int8 or int4");
  cmd->add_option("-m,--model", o->model,
                  "model directory (any format ferry reads) or a GGUF file")
      ->required();
  cmd->add_option("-o,--output", o->out, "pack directory to write (e.g. gpt-j-6b.ferry)")
      ->required();
  cmd->add_option("--quant", o->quant,
                  "f16 | int8 (symmetric, per output channel) | int4 (group-wise, scale and "
                  "zero point per group) | f32 | bf16 | keep (every matrix as the source stores "
                  "it: a GGUF file's blocks) | q8_0 | q4_0 | q4_k | q6_k (llama.cpp's blocks)");
  cmd->add_option("--group", o->group, "int4 group size: 64 or 128");
  cmd->add_flag("--quant-embeddings", o->quant_embeddings,
                "quantize the token embedding too (default: 16-bit)");
  cmd->add_flag("--quant-lm-head", o->quant_lm_head, "quantize lm_head too (default: 16-bit)");
  cmd->add_option("--lm-head", o->lm_head,
                  "lm_head in a format of its own, any --quant but keep (e.g. int8 beside int4 "
                  "matrices, about what llama.cpp's Q4_0 and Q4_K_M files keep in Q6_K)");
  cmd->add_flag("-q,--quiet", o->quiet, "no progress on stderr");
  return [o] {
    engine::ConvertOptions co;
    co.keep = o->quant == "keep";
    co.format = co.keep ? model::WeightFormat{DType::f16} : model::WeightFormat::parse(o->quant, o->group);
    co.quant_embeddings = o->quant_embeddings;
    co.quant_lm_head = o->quant_lm_head;
    if (!o->lm_head.empty()) {
      FERRY_EXPECT(o->lm_head != "keep",
                   "--lm-head keep: lm_head is kept as stored only with --quant keep; give a "
                   "format (f16, int8, int4, q8_0, ...) or leave --lm-head out");
      co.lm_head_format = model::WeightFormat::parse(o->lm_head, o->group);
    }
    Progress progress("convert", o->quiet);
    co.progress = [&](uint64_t done, uint64_t total) { progress.update(done, total); };
    const double t0 = now_s();
    const engine::ConvertResult r = engine::convert_model(o->model, o->out, co);
    progress.finish();
    if (!o->quiet)
      eprint("ferry: wrote {} ({}, {} of weights from {}) in {:.1f} s\n", r.pack_file.string(),
             co.format.name(), format_bytes(r.pack_bytes), format_bytes(r.source_bytes),
             now_s() - t0);
    return 0;
  };
}

Command add_verify(CLI::App& app) {
  struct Options {
    std::string model;
    bool quiet = false;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd =
      app.add_subcommand("verify", "read a ferry pack once and check every blob's checksums");
  cmd->add_option("-m,--model", o->model, "pack directory or .ferry file")->required();
  cmd->add_flag("-q,--quiet", o->quiet, "no progress on stderr");
  return [o] {
    const auto ck = offload::Checkpoint::open(o->model);
    Progress progress("verify", o->quiet);
    const double t0 = now_s();
    const uint64_t checked =
        ck.verify_all([&](uint64_t done, uint64_t total) { progress.update(done, total); },
                      &default_thread_pool());
    progress.finish();
    fmt::print("{}: ok, {} checked in {:.1f} s\n", o->model, format_bytes(checked), now_s() - t0);
    return 0;
  };
}

}  // namespace ferry::tools
