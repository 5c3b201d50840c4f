#include "runtime/engine/generate.hpp"

#include <algorithm>
#include <chrono>

#include "runtime/core/clock.hpp"
#include "runtime/core/error.hpp"

namespace ferry::engine {

void check_prompt_length(int64_t n_tokens, int64_t context) {
  FERRY_EXPECT(n_tokens <= context,
               "the prompt has {} tokens but the context is {} tokens; shorten the prompt",
               n_tokens, context);
}

void check_generate_request(std::span<const int32_t> prompt, const GenerateOptions& options,
                            int64_t context) {
  options.sampling.validate();
  FERRY_EXPECT(!prompt.empty(), "the prompt is empty; give at least one token");
  FERRY_EXPECT(options.max_new_tokens >= 0, "the number of new tokens ({}) must not be negative",
               options.max_new_tokens);
  const auto n_prompt = static_cast<int64_t>(prompt.size());
  check_prompt_length(n_prompt, context);
  FERRY_EXPECT(options.max_new_tokens == 0 || n_prompt + options.max_new_tokens - 1 <= context,
               "the prompt ({} tokens) plus {} new tokens exceeds the context of {} tokens; ask "
               "for at most {} new tokens or shorten the prompt",
               n_prompt, options.max_new_tokens, context, context - n_prompt + 1);
}

std::vector<int32_t> generate(ForwardPass& engine, int seq, std::span<const int32_t> prompt,
                              const GenerateOptions& options, const TokenCallback& on_token,
                              GenerateStats* stats) {
  check_generate_request(prompt, options, engine.context());
  const auto n_prompt = static_cast<int64_t>(prompt.size());

  engine.reset(seq);
  Sampler sampler(options.sampling);
  std::vector<int32_t> out;
  if (options.max_new_tokens == 0) return out;
  out.reserve(static_cast<std::size_t>(options.max_new_tokens));

  auto t0 = std::chrono::steady_clock::now();
  SeqTokens step{seq, prompt};
  const std::vector<float>* logits = &engine.forward({&step, 1}, LogitsFor::last);
  if (stats) {
    stats->prompt_tokens = n_prompt;
    stats->prompt_s = seconds_since(t0);
  }
  t0 = std::chrono::steady_clock::now();
  const auto vocab = static_cast<std::size_t>(engine.config().vocab_size);
  int32_t token = 0;
  for (;;) {
    token = sampler.sample({logits->data(), vocab});
    out.push_back(token);
    const bool more = on_token ? on_token(token) : true;
    if (!more ||
        std::find(options.eos_ids.begin(), options.eos_ids.end(), token) != options.eos_ids.end() ||
        static_cast<int64_t>(out.size()) >= options.max_new_tokens)
      break;
    step = SeqTokens{seq, {&token, 1}};
    logits = &engine.forward({&step, 1}, LogitsFor::last);
  }
  if (stats) {
    stats->new_tokens = static_cast<int64_t>(out.size());
    stats->decode_steps = stats->new_tokens - 1;
    stats->decode_s = seconds_since(t0);
  }
  return out;
}

}  // namespace ferry::engine
