// ferry plan: will the model fit, how fast will it run, and what to change if it does not —
// answered before loading, from config.json alone (weights, when present, give exact sizes).
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "offload/checkpoint.hpp"
#include "planner/machine.hpp"
#include "planner/plan.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/planning.hpp"
#include "runtime/model/model_config.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

namespace fs = std::filesystem;

namespace {

// Whether dir holds weights (any checkpoint file); without, the plan uses config.json alone.
bool has_weights(const fs::path& dir) {
  if (!fs::is_directory(dir)) return false;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    const std::string ext = e.path().extension().string();
    if (ext == ".safetensors" || ext == ".bin" || ext == ".pt" || ext == ".pth" ||
        ext == ".ferry" || name.find(".index.json") != std::string::npos)
      return true;
  }
  return false;
}

// "2.5GB/s", "500MB/s", "2.5e9" → bytes per second.
double parse_rate(std::string text, const char* flag) {
  if (text.size() > 2 && text.substr(text.size() - 2) == "/s") text.resize(text.size() - 2);
  try {
    const uint64_t v = parse_size(text);
    FERRY_EXPECT(v > 0, "zero");
    return static_cast<double>(v);
  } catch (const Error&) {
    throw InvalidArgument(
        fmt::format("{} '{}' is not a rate; write it like 2.5GB/s, 500MB/s or 12e9", flag, text));
  }
}

struct PlanFlags {
  std::string model;
  std::string profile;
  std::string device;
  std::string max_ram;
  std::string max_vram;
  std::string disk_bw;
  std::string cpu_bw;
  std::string h2d_bw;
  std::string gpu_bw;
  std::string dtype;
  std::string out;
  int64_t ctx = 0;
  int batch = 1;
  std::size_t slots = 0;
  bool json = false;
  bool explain = false;
  bool no_measure = false;
  bool reprobe = false;
};

}  // namespace

planner::Plan read_plan_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InvalidArgument(fmt::format("cannot open the plan {}", path));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(
        fmt::format("the plan {} is not valid JSON ({}); write plans with "
                    "`ferry plan --json -o FILE`",
                    path, e.what()));
  }
  try {
    return planner::plan_from_json(j);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(fmt::format("{}: {}", path, e.what()));
  }
}

Command add_plan(CLI::App& app) {
  auto o = std::make_shared<PlanFlags>();
  CLI::App* cmd = app.add_subcommand(
      "plan", "predict memory and speed before loading, and choose where every layer lives");
  cmd->add_option("-m,--model", o->model,
                  "model directory (config.json; weights optional) or a config.json")
      ->required();
  cmd->add_option("--profile", o->profile,
                  "plan for a named machine instead of this one: colab-t4, colab-cpu, "
                  "kaggle-p100, laptop-8g, or a JSON file of the same shape");
  cmd->add_option("--device", o->device, "cpu | cuda (default: cuda when the machine has a GPU)");
  cmd->add_option("--max-ram", o->max_ram, "host RAM ferry may use, e.g. 8GiB")
      ->envname("FERRY_MAX_RAM");
  cmd->add_option("--max-vram", o->max_vram, "VRAM ferry may use, e.g. 6GiB");
  cmd->add_option("--disk-bw", o->disk_bw, "disk read rate, e.g. 0.47GB/s (default: measured)");
  cmd->add_option("--cpu-bw", o->cpu_bw, "CPU mat-vec rate in weight bytes/s (default: measured)");
  cmd->add_option("--h2d-bw", o->h2d_bw, "host → GPU copy rate, e.g. 12.9GB/s");
  cmd->add_option("--gpu-bw", o->gpu_bw, "GPU mat-vec rate in weight bytes/s, e.g. 240GB/s");
  cmd->add_option("--dtype", o->dtype,
                  "weight dtype when there are no weights to read (default: config.json's)");
  cmd->add_option("--ctx", o->ctx, "KV cache tokens per sequence (default: n_positions)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--batch", o->batch, "sequences decoded together")->check(CLI::PositiveNumber);
  cmd->add_option("--slots", o->slots, "fix the host staging slot count (default: searched)")
      ->check(CLI::Range(2, 64));
  cmd->add_flag("--json", o->json, "print the plan as JSON");
  cmd->add_option("-o,--output", o->out, "also write the plan as JSON to FILE (for run --plan)");
  cmd->add_flag("--explain", o->explain, "compare the chosen plan with the next best two");
  cmd->add_flag("--no-measure", o->no_measure,
                "never measure this machine: use cached figures or defaults");
  cmd->add_flag("--reprobe", o->reprobe, "measure the disk and CPU again, ignoring the cache");
  return [o] {
    const fs::path model_path(o->model);
    const bool config_file = fs::is_regular_file(model_path);
    const fs::path dir = config_file ? model_path.parent_path() : model_path;
    model::ModelConfig config = config_file ? model::ModelConfig::from_file(model_path)
                                            : model::ModelConfig::from_model_dir(dir);
    std::optional<offload::Checkpoint> checkpoint;
    if (!config_file && has_weights(dir)) {
      checkpoint.emplace(offload::Checkpoint::open(dir));
      engine::check_checkpoint(config, *checkpoint);
    } else if (!o->dtype.empty()) {
      const auto dt = parse_dtype(o->dtype);
      FERRY_EXPECT(dt && is_float_weight(*dt), "--dtype '{}' is not f32, f16 or bf16", o->dtype);
      config.torch_dtype = *dt;
    }
    const offload::Checkpoint* ck = checkpoint ? &*checkpoint : nullptr;

    planner::Machine machine;
    if (!o->profile.empty()) {
      machine = planner::load_profile(o->profile);
    } else {
      engine::ProbeOptions po;
      po.measure = !o->no_measure;
      po.reprobe = o->reprobe;
      po.read_unit_bytes = engine::typical_unit_bytes(config, ck);
      machine = engine::probe_machine(ck, engine::weight_dtype(config, ck), po);
    }
    if (!o->max_ram.empty()) {
      machine.ram_bytes = {static_cast<double>(parse_size(o->max_ram)), "--max-ram"};
      machine.ram_is_explicit_cap = true;
    }
    if (!o->disk_bw.empty())
      machine.disk_bytes_per_s = {parse_rate(o->disk_bw, "--disk-bw"), "--disk-bw"};
    if (!o->cpu_bw.empty())
      machine.cpu_compute_bytes_per_s = {parse_rate(o->cpu_bw, "--cpu-bw"), "--cpu-bw"};
    const bool gpu_flags = !o->max_vram.empty() || !o->h2d_bw.empty() || !o->gpu_bw.empty();
    if (gpu_flags && !machine.gpu) {
      // A what-if GPU on a machine without one: T4-class figures unless the flags say otherwise.
      planner::GpuSpec g;
      g.name = "GPU (what-if)";
      g.vram_bytes = {15.0 * (1ull << 30), "default: a 15 GiB T4-class GPU; give --max-vram"};
      g.h2d_bytes_per_s = {12e9, "default: PCIe 3 x16; give --h2d-bw"};
      g.compute_bytes_per_s = {2.4e11, "default: a T4-class GPU; give --gpu-bw"};
      g.context_bytes = 400ull << 20;
      g.host_context_bytes = 300ull << 20;
      machine.gpu = g;
    }
    if (!o->max_vram.empty())
      machine.gpu->vram_bytes = {static_cast<double>(parse_size(o->max_vram)), "--max-vram"};
    if (!o->h2d_bw.empty())
      machine.gpu->h2d_bytes_per_s = {parse_rate(o->h2d_bw, "--h2d-bw"), "--h2d-bw"};
    if (!o->gpu_bw.empty())
      machine.gpu->compute_bytes_per_s = {parse_rate(o->gpu_bw, "--gpu-bw"), "--gpu-bw"};

    engine::PlanOptions po;
    po.context = o->ctx;
    po.max_seqs = o->batch;
    po.max_batch_rows = o->ctx > 0 ? o->ctx : config.n_positions;
    po.max_logit_rows = o->batch;
    po.forced_host_slots = o->slots;
    if (o->device.empty()) {
      po.backend = machine.gpu ? planner::Backend::cuda : planner::Backend::cpu;
    } else {
      FERRY_EXPECT(o->device == "cpu" || o->device == "cuda", "--device '{}' is not cpu or cuda",
                   o->device);
      po.backend = o->device == "cuda" ? planner::Backend::cuda : planner::Backend::cpu;
    }
    const planner::Plan plan =
        planner::make_plan(engine::plan_request(config, ck, machine, po, model_path.string()));

    const nlohmann::json j = planner::plan_to_json(plan);
    if (!o->out.empty()) {
      std::ofstream out(o->out);
      out << j.dump(2) << "\n";
      FERRY_EXPECT(static_cast<bool>(out), "could not write the plan to {}", o->out);
    }
    if (o->json) {
      fmt::print("{}\n", j.dump(2));
      return 0;
    }
    fmt::print("machine: {}\n", machine.name);
    for (const auto& line : planner::describe_machine(machine)) fmt::print("  {}\n", line);
    fmt::print("weights: {}\n", ck ? fmt::format("{} ({})", offload::format_name(ck->format()),
                                                 format_bytes(ck->total_bytes()))
                                   : fmt::format("none read: sizes from config.json as {}",
                                                 dtype_name(config.torch_dtype)));
    fmt::print("{}", plan.table());
    if (o->explain) fmt::print("{}", plan.explain());
    return 0;
  };
}

}  // namespace ferry::tools
