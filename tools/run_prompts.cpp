#include "tools/run_prompts.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <utility>

#include "runtime/core/clock.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/json_parse.hpp"

namespace ferry::tools {

namespace {

using nlohmann::json;

constexpr int64_t kMaxTokens = int64_t{1} << 24;  // as -n accepts
constexpr const char* kFields = "\"prompt\" or \"ids\", and optionally \"max_tokens\", "
                                "\"temperature\", \"top_p\", \"top_k\", \"seed\", \"id\"";

// JSON's name for a value's type, for "must be a number, not a string".
const char* type_words(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "true/false";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a fraction";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "a whole number";
    default: return "another type";
  }
}

// Checks one line's fields, naming the line and the field in every refusal.
class LineReader {
 public:
  LineReader(std::string where, const json& j) : where_(std::move(where)), j_(j) {}

  [[noreturn]] void fail(const std::string& message) const {
    throw InvalidArgument(fmt::format("{}: {}", where_, message));
  }

  const json* find(const char* key) const {
    const auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }

  std::optional<int64_t> whole(const char* key, int64_t lo, int64_t hi) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number_integer())
      fail(fmt::format("\"{}\" must be a whole number from {} to {}, not {}", key, lo, hi,
                       v->is_number() ? v->dump() : type_words(*v)));
    // Unsigned values beyond int64 compare as out of range, not wrapped.
    const bool big = v->is_number_unsigned() &&
                     v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    const int64_t x = big ? std::numeric_limits<int64_t>::max() : v->get<int64_t>();
    if (big || x < lo || x > hi)
      fail(fmt::format("\"{}\" is {} but must be from {} to {}", key, v->dump(), lo, hi));
    return x;
  }

  std::optional<double> number(const char* key) const {
    const json* v = find(key);
    if (!v) return std::nullopt;
    if (!v->is_number()) fail(fmt::format("\"{}\" must be a number, not {}", key, type_words(*v)));
    return v->get<double>();
  }

 private:
  std::string where_;
  const json& j_;
};

PromptJob read_line(const std::string& where, int64_t line_no, const std::string& line,
                    const text::Tokenizer* tokenizer, const PromptDefaults& defaults) {
  const json j = parse_json_strict(
      line, where, "each line must be one JSON object such as {\"prompt\": \"Hello\"}");
  const LineReader r(where, j);
  if (!j.is_object())
    r.fail(fmt::format("the line is {}, not a JSON object such as {{\"prompt\": \"Hello\"}}",
                       type_words(j)));
  for (const auto& item : j.items()) {
    static constexpr const char* known[] = {"prompt", "ids",  "max_tokens", "temperature",
                                            "top_p",  "top_k", "seed",      "id"};
    // Not a structured binding: clang 14 (the fuzz build's) cannot capture one in a lambda.
    const std::string& key = item.key();
    if (std::find_if(std::begin(known), std::end(known),
                     [&](const char* k) { return key == k; }) == std::end(known))
      r.fail(fmt::format("unknown field \"{}\"; a line has {}", key, kFields));
  }

  PromptJob job;
  job.line = line_no;
  job.id = j.contains("id") ? j["id"] : json(line_no);
  const json* prompt = r.find("prompt");
  const json* ids = r.find("ids");
  if (!prompt && !ids) r.fail(fmt::format("the line has no \"prompt\" and no \"ids\"; give one"));
  if (prompt && ids) r.fail("the line has both \"prompt\" and \"ids\"; give one of them");
  if (prompt) {
    if (!prompt->is_string())
      r.fail(fmt::format("\"prompt\" must be a string, not {}", type_words(*prompt)));
    if (prompt->get_ref<const std::string&>().empty()) r.fail("\"prompt\" is empty");
    if (!tokenizer)
      r.fail("\"prompt\" is text but the model has no tokenizer files; give \"ids\" instead, or "
             "--vocab and --merges");
    job.ids = tokenizer->encode(prompt->get_ref<const std::string&>(), /*add_special=*/true);
    if (job.ids.empty()) r.fail("\"prompt\" encodes to no tokens");
  } else {
    if (!ids->is_array() || ids->empty())
      r.fail(fmt::format("\"ids\" must be a non-empty array of token ids, not {}",
                         ids->is_array() ? "an empty array" : type_words(*ids)));
    for (std::size_t i = 0; i < ids->size(); ++i) {
      const json& v = (*ids)[i];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 ||
          v.get<int64_t>() > std::numeric_limits<int32_t>::max())
        r.fail(fmt::format("\"ids\"[{}] is {}, not a token id (a whole number ≥ 0)", i, v.dump()));
      job.ids.push_back(v.get<int32_t>());
    }
  }

  job.options.max_new_tokens = r.whole("max_tokens", 0, kMaxTokens).value_or(defaults.max_tokens);
  engine::SamplingParams& s = job.options.sampling;
  s = defaults.sampling;
  if (const auto t = r.number("temperature")) {
    if (!std::isfinite(*t) || *t < 0)
      r.fail(fmt::format("\"temperature\" is {} but must be 0 (greedy) or more, e.g. 0.8", *t));
    s.temperature = static_cast<float>(*t);
  }
  if (const auto p = r.number("top_p")) {
    if (!(*p > 0 && *p <= 1))
      r.fail(fmt::format("\"top_p\" is {} but must be in (0, 1], e.g. 0.9 (1 disables it)", *p));
    s.top_p = static_cast<float>(*p);
  }
  if (const auto k = r.whole("top_k", 0, std::numeric_limits<int32_t>::max()))
    s.top_k = static_cast<int>(*k);
  if (const json* seed = r.find("seed")) {
    if (!seed->is_number_unsigned() && !(seed->is_number_integer() && seed->get<int64_t>() >= 0))
      r.fail(fmt::format("\"seed\" must be a whole number ≥ 0, not {}",
                         seed->is_number_integer() ? seed->dump() : type_words(*seed)));
    s.seed = seed->get<uint64_t>();
  }
  try {
    s.validate();
  } catch (const InvalidArgument& e) {
    r.fail(e.what());
  }
  return job;
}

// The generated text as `ferry run` prints it: a continuation of the prompt, ids beyond the
// tokenizer's vocabulary (padding rows of GPT-J's) as <|id|>.
std::string text_of(const text::Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  text::StreamDecoder dec(tokenizer, /*at_start_of_text=*/false);
  std::string out;
  for (int32_t id : ids)
    out += id < tokenizer.vocab_size() ? dec.push(id) : fmt::format("<|{}|>", id);
  return out + dec.flush();
}

}  // namespace

std::vector<PromptJob> read_prompts(const std::filesystem::path& path,
                                    const text::Tokenizer* tokenizer,
                                    const PromptDefaults& defaults) {
  std::ifstream in(path, std::ios::binary);
  FERRY_EXPECT(in.good(), "cannot read the prompts file {}: {}; check the path given to --prompts",
               path.string(), std::error_code(errno, std::generic_category()).message());
  std::vector<PromptJob> jobs;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    jobs.push_back(read_line(fmt::format("{} line {}", path.string(), line_no), line_no, line,
                             tokenizer, defaults));
  }
  FERRY_EXPECT(!in.bad(), "reading the prompts file {} failed", path.string());
  FERRY_EXPECT(!jobs.empty(),
               "the prompts file {} has no prompts; write one JSON object per line, such as "
               "{{\"prompt\": \"Hello\"}}",
               path.string());
  return jobs;
}

PromptsShape prompts_shape(const std::vector<PromptJob>& jobs, int max_seqs,
                           const model::ModelConfig& config) {
  const int64_t max_context = model::max_context(config);
  PromptsShape shape;
  int64_t longest_prompt = 0;
  for (const PromptJob& job : jobs) {
    const auto n = static_cast<int64_t>(job.ids.size());
    for (std::size_t i = 0; i < job.ids.size(); ++i)
      FERRY_EXPECT(job.ids[i] < config.vocab_size,
                   "line {}: token id {} (position {} of the prompt) is outside the vocabulary "
                   "of this model (ids 0 … {})",
                   job.line, job.ids[i], i, config.vocab_size - 1);
    // As `ferry run` sizes its cache: the prompt and every new token (at least one).
    const int64_t need = n + std::max<int64_t>(job.options.max_new_tokens, 1);
    FERRY_EXPECT(n + std::max<int64_t>(job.options.max_new_tokens - 1, 0) <= max_context,
                 "line {}: the prompt ({} tokens) plus {} new tokens exceeds the model's context "
                 "of {} tokens; ask for at most {} tokens or shorten the prompt",
                 job.line, n, job.options.max_new_tokens, max_context,
                 std::max<int64_t>(max_context - n + 1, 0));
    shape.context = std::max(shape.context, std::min(need, max_context));
    longest_prompt = std::max(longest_prompt, n);
  }
  shape.max_seqs = std::max(1, std::min(max_seqs, static_cast<int>(jobs.size())));
  // Passes of up to 1024 rows (prompt chunks of up to 512 beside the decode rows): a pass over
  // streamed weights costs about the same for more rows, but each row costs activation memory
  // that the plan takes from the resident layers.
  shape.prefill_chunk = std::min<int64_t>(512, longest_prompt);
  shape.max_batch_rows =
      std::max<int64_t>(shape.max_seqs + shape.prefill_chunk - 1,
                        std::min<int64_t>(1024, shape.max_seqs * longest_prompt));
  shape.max_logit_rows = shape.max_seqs;
  return shape;
}

PromptsSummary run_prompts(engine::ForwardPass& engine, std::vector<PromptJob> jobs,
                           const PromptsShape& shape, const std::vector<int32_t>& eos_ids,
                           const text::Tokenizer* tokenizer, std::FILE* out,
                           const engine::SchedulerOptions& speculation) {
  const auto t0 = std::chrono::steady_clock::now();
  engine::SchedulerOptions so;
  so.draft_k = speculation.draft_k;
  so.make_drafter = speculation.make_drafter;
  so.batch_drafter = speculation.batch_drafter;
  so.max_seqs = shape.max_seqs;
  so.prefill_chunk = shape.prefill_chunk;
  so.max_step_rows = shape.max_batch_rows;
  so.max_queue = jobs.size();
  engine::Scheduler scheduler(engine, so);

  PromptsSummary summary;
  summary.prompts = jobs.size();
  std::vector<std::optional<std::string>> lines(jobs.size());
  std::size_t written = 0;
  auto write_ready = [&] {
    for (; written < lines.size() && lines[written]; ++written) {
      fmt::print(out, "{}\n", *lines[written]);
      lines[written].reset();
    }
    std::fflush(out);
  };
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    engine::Request r;
    r.prompt = jobs[i].ids;
    r.options = jobs[i].options;
    r.options.eos_ids = eos_ids;
    r.on_done = [&, i](const engine::RequestResult& res) {
      nlohmann::ordered_json j;  // keys in this order, as documented
      j["id"] = nlohmann::ordered_json::parse(jobs[i].id.dump());
      if (tokenizer) j["text"] = text_of(*tokenizer, res.tokens);
      j["ids"] = res.tokens;
      j["finish_reason"] = engine::to_string(res.reason);
      j["prompt_tokens"] = res.prompt_tokens;
      if (res.reason == engine::FinishReason::error) {
        j["error"] = res.error;
        ++summary.failed;
      }
      // A tokenizer's bytes may not be valid UTF-8 (a model's stray byte tokens): replace them.
      lines[i] = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
      write_ready();
    };
    try {
      scheduler.submit(std::move(r));
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(fmt::format("line {}: {}", jobs[i].line, e.what()));
    }
  }
  while (scheduler.step()) {
  }
  summary.stats = scheduler.stats();
  summary.seconds = seconds_since(t0);
  return summary;
}

}  // namespace ferry::tools
