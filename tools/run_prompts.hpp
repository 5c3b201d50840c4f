// ferry run --prompts FILE: many prompts from a JSON Lines file, decoded together by the
// continuous-batching scheduler, one JSON line out per prompt in the input's order.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/scheduler.hpp"
#include "runtime/model/model_config.hpp"
#include "runtime/text/tokenizer.hpp"

namespace ferry::tools {

// One input line: {"prompt": "text"} or {"ids": [..]}, with optional "max_tokens",
// "temperature", "top_p", "top_k", "seed" and "id".
struct PromptJob {
  int64_t line = 0;     // 1-based line of the file, for messages
  nlohmann::json id;    // the line's "id", else its line number; echoed in the output
  std::vector<int32_t> ids;
  engine::GenerateOptions options;  // eos_ids left empty: the caller knows the model's
};

// The run's defaults for what a line leaves out (-n, --temperature, --top-k, --top-p, --seed).
struct PromptDefaults {
  int64_t max_tokens = 32;
  engine::SamplingParams sampling;
};

// Reads and checks every line before anything runs. Blank lines are skipped. A bad line is an
// InvalidArgument naming the file, the line and the field: not JSON, not an object, an unknown
// field, a wrong type or range, neither or both of "prompt" and "ids", text with no tokenizer.
// Text is encoded as `ferry run -p` encodes it (the model's special tokens added).
std::vector<PromptJob> read_prompts(const std::filesystem::path& path,
                                    const text::Tokenizer* tokenizer,
                                    const PromptDefaults& defaults);

// The engine a run of these jobs needs: slots, context (the longest prompt + its tokens) and
// rows per pass. Throws InvalidArgument naming the line whose prompt and tokens outgrow the
// model's context, or whose ids are outside its vocabulary.
struct PromptsShape {
  int max_seqs = 1;
  int64_t context = 0;
  int64_t max_batch_rows = 0;  // tokens in one pass: prompt chunks beside the decoding rows
  int64_t max_logit_rows = 0;  // one per sequence
  int64_t prefill_chunk = 0;
};
PromptsShape prompts_shape(const std::vector<PromptJob>& jobs, int max_seqs,
                           const model::ModelConfig& config);

struct PromptsSummary {
  std::size_t prompts = 0;
  std::size_t failed = 0;  // ended with an engine error (their lines say so)
  engine::SchedulerStats stats;
  double seconds = 0;
};

// Runs the jobs batched on `engine` (made with at least shape.max_seqs slots and
// shape.context tokens each) and writes each result to `out` as soon as every earlier line's
// is written: {"id", "text" (with a tokenizer), "ids", "finish_reason", "prompt_tokens"}.
// `speculation` gives the drafters (draft_k, make_drafter: a session's scheduler_options());
// the scheduler's other options come from the shape.
PromptsSummary run_prompts(engine::ForwardPass& engine, std::vector<PromptJob> jobs,
                           const PromptsShape& shape, const std::vector<int32_t>& eos_ids,
                           const text::Tokenizer* tokenizer, std::FILE* out,
                           const engine::SchedulerOptions& speculation = {});

}  // namespace ferry::tools
