// Draft models for speculative decoding (speculative.hpp): what `--draft` names, and the
// quantized packs of a model that `self-int4` / `self-int8` draft with, converted once into
// ferry's cache directory (never into the model's own folder) and reused.
#pragma once

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::engine {

// What `--draft` names.
struct DraftSpec {
  enum class Kind { lookup, self, model };
  Kind kind = Kind::lookup;
  std::string quant;           // self: "int4" or "int8"
  std::filesystem::path path;  // model: the draft model (a directory, ferry pack or GGUF file)

  // "lookup", "self-int4", "self-int8", or the path of a model. Throws InvalidArgument naming
  // the accepted values when the text is none of them and no such path exists.
  static DraftSpec parse(std::string_view text);
  std::string describe() const;  // "lookup", "self-int4", "model PATH"
};

// Where ferry keeps self-draft packs: <cache>/drafts, beside the probe cache ($FERRY_CACHE_DIR,
// $XDG_CACHE_HOME/ferry or ~/.cache/ferry); none when FERRY_CACHE_DIR=off or there is no home.
std::optional<std::filesystem::path> drafts_cache_dir();

// The pack directory for `model` in `quant` under cache_dir: named by the model's name, the
// quantization and a hash of the model's absolute path, total size and latest modification time,
// so a changed model gets a fresh pack.
std::filesystem::path self_draft_dir(const std::filesystem::path& model, std::string_view quant,
                                     const std::filesystem::path& cache_dir);

// The self-draft pack of `model` (what `ferry convert --quant QUANT` makes: the blocks' matrices
// in quant, the embedding and lm_head 16-bit), converting it first if the cache lacks it (under a
// lock, so two runs convert once; written to a staging directory and renamed, so an interrupted
// conversion leaves nothing). on_convert is called before a conversion starts, with the
// destination. Throws InvalidArgument when there is no cache directory, saying how to make the
// pack by hand.
std::filesystem::path ensure_self_draft(
    const std::filesystem::path& model, std::string_view quant,
    std::optional<std::filesystem::path> cache_dir = drafts_cache_dir(),
    const std::function<void(const std::filesystem::path&)>& on_convert = {});

// Speculation's trade, from the plan's figures: a target pass scoring k + 1 positions reads the
// streamed bytes once (disk and PCIe time as for one token) and computes k + 1 rows; the drafter
// spends its time per drafted token; a draft matches the target with probability `acceptance`,
// so a round yields (1 − a^(k+1)) / (1 − a) tokens.
struct SpeculationCosts {
  double disk_s = 0;  // one target pass's busy time on each link (planner::Prediction)
  double h2d_s = 0;
  double compute_s = 0;  // of one row
  // Each extra row's compute, as a fraction of one row's: the m > 1 product reuses each weight
  // block from cache, so a row costs its arithmetic, not another read of the weights.
  double extra_row_compute = 0.25;
  double draft_s_per_token = 0;  // 0 for prompt lookup
  double acceptance = 0;         // in [0, 1]
};

struct SpeculationChoice {
  int k = 0;  // 0: no speculation
  double tokens_per_pass = 1;
  double s_per_token = 0;
};

// Predictions for k = 0 … max_k, in order.
std::vector<SpeculationChoice> predict_speculation(const SpeculationCosts& costs, int max_k);
// The k (or 0) of least predicted s/token; the lower k on ties.
SpeculationChoice best_speculation(const std::vector<SpeculationChoice>& choices);

// The acceptance rate speculation plans with, and where it came from.
struct Acceptance {
  double rate = 0;
  std::string source;  // "learned from 3 runs …" or "default guess for self-int4"
};
// The guess before any run: 0.6 for self-int4, 0.8 for self-int8, 0.3 for lookup, 0.5 for a
// draft model.
double default_acceptance(const DraftSpec& spec);
// The probe cache's key for (target, drafter): "accept <target path> <drafter>".
std::string acceptance_key(const std::filesystem::path& target, const DraftSpec& spec);
// The learned rate under acceptance_key, else the default guess.
Acceptance planned_acceptance(const std::filesystem::path& target, const DraftSpec& spec);
// Records a run's acceptance rate (the median of the last runs is kept).
void learn_acceptance(const std::filesystem::path& target, const DraftSpec& spec, double rate);

}  // namespace ferry::engine
