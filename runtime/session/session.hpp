// Session: a model opened for generation, the way `ferry run` opens it — device chosen by name,
// plan made for this machine within the budget, weights loaded, engine made, tokenizer and stop
// ids read — as one object the CLI, `ferry serve` and the Python module share, so a model is
// opened the same way everywhere.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/core/device.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/scheduler.hpp"
#include "runtime/text/tokenizer.hpp"

namespace ferry::session {

struct SessionOptions {
  std::filesystem::path model;  // a model directory, a ferry pack or a GGUF file
  std::string device = "cpu";   // a backend name: cpu | cuda
  // Budget, I/O, a replayed plan, verification: as `ferry run`'s flags set them. The shape
  // fields (context, max_seqs, max_batch_rows, max_logit_rows) are overwritten from below.
  engine::LoadOptions load;
  std::optional<uint64_t> max_vram_bytes;  // with device cuda; none: the device's free memory
  bool mmap = false;  // compute from a memory map of the checkpoint (no budget; CPU only)
  // KV tokens per sequence slot; 0: model::default_context (the model's, at most 4096).
  int64_t context = 0;
  int max_seqs = 1;
  int64_t max_batch_rows = 0;  // most tokens in one forward pass; 0: the context
  int64_t max_logit_rows = 0;  // most rows of logits one pass returns; 0: max_seqs
  // Tokens the paged KV cache holds for all sequences together. 0: every slot at full context.
  // kKvPoolAuto: the planner's choice — the pool for the number of full-context sequences
  // (1, 2, 4 … max_seqs) it predicts decode the most tokens/s within the budget, since each
  // sequence's cache takes memory resident layers could use. Sequences shorter than the context
  // share what is left, so more than that many can still run at once.
  int64_t kv_pool_tokens = 0;
  // A tokenizer to use instead of reading the model's own: one from --vocab/--merges, whose end
  // ids are then not read from it, or the model's own read already (tokenizer_is_own). Without
  // one, a model with no tokenizer files still opens (ids only).
  std::optional<text::Tokenizer> tokenizer;
  bool tokenizer_is_own = false;
  bool read_tokenizer = true;  // false: none given means none (the caller tried already)
  bool require_tokenizer = false;  // make a missing tokenizer an error instead
  // Called with (bytes read, bytes to read) while the resident weights load.
  std::function<void(uint64_t, uint64_t)> on_load_progress;
  // Speculative decoding where this session's sequences are scheduled (serve, run --prompts,
  // Python): "lookup" (n-grams of each sequence's own text; no draft model), or empty for none.
  // A draft model (self-int4, self-int8, a path) is refused here for now: the tools open one
  // themselves (tools/run_draft.hpp) and hand its drafters to the scheduler. Each sequence adds up
  // to draft_k drafts to a pass, so the passes are sized for max_seqs × (draft_k + 1) rows
  // more than asked.
  std::string draft;
  int draft_k = 4;
};

inline constexpr int64_t kKvPoolAuto = -1;

class Session {
 public:
  // Plans and loads. Throws what load_model throws (PlanError with the smallest budget that
  // works, FormatError naming a bad file), and InvalidArgument for a bad device or shape.
  explicit Session(SessionOptions options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const SessionOptions& options() const { return options_; }
  const model::ModelConfig& config() const { return model_.config; }
  engine::LoadedModel& model() { return model_; }
  const engine::LoadedModel& model() const { return model_; }
  engine::Engine& engine() { return *engine_; }
  const engine::Engine& engine() const { return *engine_; }
  int64_t context() const { return engine_->context(); }
  int max_seqs() const { return options_.max_seqs; }

  // Null when the model has no tokenizer files (and none was given).
  const text::Tokenizer* tokenizer() const { return tokenizer_ ? &*tokenizer_ : nullptr; }
  // The tokenizer, or InvalidArgument saying the model has none and how to give one.
  const text::Tokenizer& require_tokenizer() const;
  // Whether the tokenizer is the model's own (not one given in the options).
  bool own_tokenizer() const { return own_tokenizer_; }
  // The ids generation stops at, all inside the vocabulary.
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }
  // End ids the model names that its vocabulary does not have (Hugging Face's tiny GPT-J
  // configs keep GPT-2's 50256 over 1000 ids): generation can never stop at them.
  const std::vector<int32_t>& eos_ids_outside_vocab() const { return eos_outside_; }

  // A short name for the model: its directory's or file's name.
  std::string model_name() const;
  // The one-line summary of where the weights went and the plan, for logs.
  std::vector<std::string> describe() const;
  // Tokens the KV pool was asked to hold (all sequences together); 0: every slot at full
  // context.
  int64_t kv_pool_tokens() const { return kv_pool_tokens_; }
  // How an automatic pool was chosen (the planner's predictions); empty when it was given.
  const std::string& kv_choice() const { return kv_choice_; }

  // Drafts per pass for each sequence; 0 without a draft.
  int draft_k() const { return options_.draft.empty() ? 0 : options_.draft_k; }
  // Scheduler options for this session's engine: every slot, passes of at most
  // load.max_batch_rows rows, and the drafter of each slot when there is a draft.
  engine::SchedulerOptions scheduler_options() const;
  // A drafter for one sequence decoded alone (generate_speculative); null without a draft.
  std::unique_ptr<engine::Drafter> make_drafter() const;

 private:
  SessionOptions options_;
  std::unique_ptr<Device> device_;  // planned for and computed on; outlives the model
  engine::LoadedModel model_;
  std::unique_ptr<engine::Engine> engine_;
  std::optional<text::Tokenizer> tokenizer_;
  bool own_tokenizer_ = false;
  std::vector<int32_t> eos_ids_;
  std::vector<int32_t> eos_outside_;
  int64_t kv_pool_tokens_ = 0;
  std::string kv_choice_;  // how an automatic pool size was chosen, for describe()
};

// Throws InvalidArgument unless SessionOptions::draft / draft_k can be honoured (lookup, k in
// 1 … 32), so a tool can refuse before it loads anything.
void check_draft(const std::string& draft, int draft_k);

// The model's own tokenizer, or none when it has no tokenizer files (an error reading files it
// does have still throws).
std::optional<text::Tokenizer> try_read_tokenizer(const std::filesystem::path& model);

}  // namespace ferry::session
