// generate: the decoding loop — one forward pass over the prompt, then one token at a time,
// sampling each and stopping on EOS or after max_new_tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "runtime/engine/engine.hpp"
#include "runtime/engine/sampler.hpp"

namespace ferry::engine {

struct GenerateOptions {
  int64_t max_new_tokens = 32;
  std::vector<int32_t> eos_ids;  // stop after sampling any of them (it is still returned)
  SamplingParams sampling;
};

struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  double prompt_s = 0;       // wall time of the prompt pass
  int64_t decode_steps = 0;  // forward passes of one token (new_tokens - 1)
  double decode_s = 0;       // wall time of those passes and the sampling
};

// Throws InvalidArgument unless n_tokens fit a context of `context` tokens; the message says
// to shorten the input. Every entry point checks a prompt with it before sizing anything by it.
void check_prompt_length(int64_t n_tokens, int64_t context);

// Throws InvalidArgument unless a request of this prompt and options can run in a context of
// `context` tokens: a prompt of at least one token, max_new_tokens ≥ 0, valid sampling, and
// prompt + max_new_tokens − 1 positions within the context (the last sampled token is never fed
// back). generate(), speculative decoding and the scheduler check a request with it.
void check_generate_request(std::span<const int32_t> prompt, const GenerateOptions& options,
                            int64_t context);

// Called with each new token as soon as it is sampled; return false to stop early.
using TokenCallback = std::function<bool(int32_t)>;

// Runs sequence slot `seq` of the engine (reset first) on the prompt. Checks before running
// that prompt + max_new_tokens fits the engine's context.
std::vector<int32_t> generate(ForwardPass& engine, int seq, std::span<const int32_t> prompt,
                              const GenerateOptions& options, const TokenCallback& on_token = {},
                              GenerateStats* stats = nullptr);

}  // namespace ferry::engine
