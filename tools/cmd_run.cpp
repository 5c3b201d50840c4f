// ferry run, ferry logits and ferry perplexity: inference on a model directory.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "planner/memory_probe.hpp"
#include "runtime/engine/model_files.hpp"
#include "runtime/backends/registry.hpp"
#include "runtime/core/error.hpp"
#include "runtime/core/file_output.hpp"
#include "runtime/core/units.hpp"
#include "runtime/engine/engine.hpp"
#include "runtime/engine/generate.hpp"
#include "runtime/engine/learning.hpp"
#include "runtime/engine/loaded_model.hpp"
#include "runtime/engine/perplexity.hpp"
#include "runtime/profile/policy.hpp"
#include "runtime/profile/profile_run.hpp"
#include "runtime/session/session.hpp"
#include "runtime/text/bpe_tokenizer.hpp"
#include "tools/commands.hpp"
#include "tools/run_draft.hpp"
#include "tools/run_prompts.hpp"

namespace ferry::tools {

namespace {

// Tokens over seconds as tokens/s (0 when no time passed), three decimals below 10: a disk-bound
// model decodes a fraction of a token a second, and the benchmarks take s/token from this figure.
std::string format_rate(double tokens, double seconds) {
  const double r = seconds > 0 ? tokens / seconds : 0.0;
  return r < 10 ? fmt::format("{:.3f}", r) : fmt::format("{:.1f}", r);
}

struct TokenizerOptions {
  std::string vocab;
  std::string merges;
};

void add_tokenizer_options(CLI::App* cmd, TokenizerOptions& o) {
  cmd->add_option("--vocab", o.vocab, "vocab.json (default: the model directory's)");
  cmd->add_option("--merges", o.merges, "merges.txt (default: the model directory's)");
}

// The tokenizer from --vocab/--merges, else from the model directory.
text::BpeTokenizer load_tokenizer(const std::string& model_dir, const TokenizerOptions& o) {
  if (!o.vocab.empty() || !o.merges.empty()) {
    FERRY_EXPECT(!o.vocab.empty() && !o.merges.empty(),
                 "give both --vocab and --merges (one without the other cannot make a "
                 "tokenizer)");
    return text::BpeTokenizer::from_files(o.vocab, o.merges);
  }
  FERRY_EXPECT(!model_dir.empty(), "give -m DIR, or --vocab and --merges, to find a tokenizer");
  return engine::read_tokenizer(model_dir);
}

// Options every command that loads weights shares.
struct LoadFlags {
  std::string max_ram;
  std::string io;
  std::string plan;
  std::string policy;
  std::string verify;
  std::string kv_memory;  // --kv-memory: where a CUDA plan puts the KV pool
  bool mmap = false;
};

void add_load_options(CLI::App* cmd, LoadFlags& o) {
  cmd->add_option("--max-ram", o.max_ram,
                  "cap on host memory, e.g. 4GiB (default: what is free, cgroup limits included)")
      ->envname("FERRY_MAX_RAM");
  cmd->add_option("--io", o.io, "I/O engine: auto | uring | pread | buffered")->envname("FERRY_IO");
  cmd->add_option("--policy", o.policy,
                  "I/O options and staging slots from a policy written by `ferry tune`");
  cmd->add_option("--plan", o.plan,
                  "replay a plan saved by `ferry plan --json -o FILE` (refused, with the reason, "
                  "when this machine has less than it needs)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--verify", o.verify,
                  "a ferry pack's checksums: always (every read, the default), once (first read "
                  "of each layer: at load for resident layers) or off")
      ->envname("FERRY_VERIFY");
  add_kv_memory_option(cmd, o.kv_memory);
  cmd->add_flag("--mmap", o.mmap,
                "compute straight from a memory map of the checkpoint, as llama.cpp does (no RAM "
                "budget: the page cache decides; for comparison)");
}

void add_device_options(CLI::App* cmd, std::string& device, std::string& max_vram) {
  cmd->add_option("--device", device, "cpu (default) | cuda")->envname("FERRY_DEVICE");
  cmd->add_option("--max-vram", max_vram, "cap on GPU memory with --device cuda, e.g. 6GiB")
      ->envname("FERRY_MAX_VRAM");
}

engine::LoadOptions load_options(const LoadFlags& f, const model::ModelConfig& config,
                                 int64_t context, int64_t rows, int64_t logit_rows) {
  engine::LoadOptions o;
  if (f.mmap) o.placement = engine::Placement::all(config, offload::Tier::mapped);
  if (!f.max_ram.empty()) o.max_ram_bytes = parse_max_ram(f.max_ram);
  if (!f.policy.empty()) profile::apply_policy(profile::load_policy(f.policy), o);
  if (!f.io.empty()) o.io.backend = offload::parse_io_backend(f.io);
  if (!f.plan.empty()) o.plan = read_plan_file(f.plan);
  if (!f.verify.empty()) o.verify = offload::parse_verify_mode(f.verify, "--verify");
  // The device is checked against it when planned (engine::plan_request refuses device on the
  // CPU backend).
  o.kv_memory = parse_kv_memory_flag(f.kv_memory, "");
  o.context = context;
  o.max_batch_rows = rows;
  o.max_logit_rows = logit_rows;
  return o;
}

// The one-line summary of where the weights went, on stderr.
void print_plan(const engine::LoadedModel& m, const engine::Backend& backend) {
  eprint("ferry: {}; load {:.2f} s\n", backend.describe(), backend.load_s());
  if (m.plan) eprint("ferry: plan: {}\n", m.plan->summary());
}

struct RunOptions {
  std::string model;
  std::string prompt;
  std::string ids;
  int64_t n = 32;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
  bool print_ids = false;
  bool ignore_eos = false;
  bool quiet = false;
  std::string trace;
  std::string device = "cpu";
  std::string max_vram;
  std::string prompts;  // --prompts FILE: many prompts, batched
  int max_seqs = 8;
  std::string kv_tokens;  // with --prompts: the KV pool ("auto" or tokens; empty: full)
  TokenizerOptions tok;
  LoadFlags load;
  DraftFlags draft;  // --draft, --draft-k: speculative decoding
};

// The backend a command runs on, chosen by --device through the registry: its device is opened
// before planning (a GPU's free memory is the VRAM figure), and it makes the engines.
struct DeviceRun {
  std::unique_ptr<Device> device;

  void open(const std::string& name, const std::string& max_vram, bool mmap,
            engine::LoadOptions& lo) {
    backends::check(name);  // a backend ferry knows and this build has
    if (backends::planner_backend(name) == planner::Backend::cpu) {
      FERRY_EXPECT(max_vram.empty(), "--max-vram needs --device cuda");
    } else {
      FERRY_EXPECT(!mmap, "--mmap computes from a memory map on the CPU; drop --device {}", name);
    }
    device = backends::open_device(name);
    backends::plan_for(name, *device, lo);
    if (!max_vram.empty()) lo.max_vram_bytes = parse_size(max_vram);
  }
  // Two models on one device (a perplexity run against a reference): each plans for half of its
  // memory, --max-vram or what is free now. (The host's memory is halved by --max-ram's rule.)
  void halve_vram(engine::LoadOptions& lo) const {
    const auto info = device->memory_info();
    if (!info) return;
    lo.max_vram_source = lo.max_vram_bytes ? "half of --max-vram" : "half of the free VRAM";
    lo.max_vram_bytes = (lo.max_vram_bytes ? *lo.max_vram_bytes : info->free_bytes) / 2;
  }
  static std::unique_ptr<engine::Engine> engine(engine::LoadedModel& m, int64_t context,
                                                const engine::LoadOptions& lo) {
    backends::EngineSpec spec;
    spec.context = context;
    spec.io = lo.io;
    return backends::make_engine(m, spec);
  }
};

std::string token_text(const text::BpeTokenizer& tok, text::StreamDecoder& dec, int32_t id) {
  if (id >= tok.vocab_size()) return fmt::format("<|{}|>", id);  // padding rows of GPT-J's vocab
  return dec.push(id);
}

// What `ferry run` opens the session for: one prompt, or a file of them decoded together.
struct RunShape {
  int64_t context = 0;
  int max_seqs = 1;
  int64_t max_batch_rows = 0;
  int64_t max_logit_rows = 1;
  int64_t attended_tokens = 0;  // where decoding spends its time on average, for the prediction
  const char* context_hint = "";
};

// The session options of both `ferry run` paths: the flags, this run's shape, the tokenizer
// already read (the model's own unless --vocab/--merges gave one).
session::SessionOptions run_session_options(const RunOptions& o, const model::ModelConfig& config,
                                            const RunShape& shape,
                                            std::optional<text::Tokenizer> tok) {
  session::SessionOptions so;
  so.model = o.model;
  so.device = o.device;
  so.context = shape.context;
  so.max_seqs = shape.max_seqs;
  so.max_batch_rows = shape.max_batch_rows;
  so.max_logit_rows = shape.max_logit_rows;
  so.kv_pool_tokens = parse_kv_tokens(o.kv_tokens);
  so.load = load_options(o.load, config, so.context, so.max_batch_rows, so.max_logit_rows);
  so.load.attended_tokens = shape.attended_tokens;
  so.load.context_hint = shape.context_hint;
  so.mmap = o.load.mmap;
  so.load.placement.reset();  // the session sets it for --mmap
  if (!o.max_vram.empty()) so.max_vram_bytes = parse_size(o.max_vram);
  // The model's own tokenizer (not one given with --vocab/--merges) names its end ids.
  so.tokenizer_is_own = o.tok.vocab.empty() && o.tok.merges.empty();
  so.tokenizer = std::move(tok);
  so.read_tokenizer = false;
  return so;
}

// ferry run --prompts FILE: every line's prompt decoded together (tools/run_prompts.hpp), the
// engine opened as for one prompt but with max_seqs slots sized for the longest line.
int run_prompts_file(const RunOptions& o) {
  std::optional<text::Tokenizer> tok;
  try {
    tok = load_tokenizer(o.model, o.tok);
  } catch (const Error&) {  // lines of "ids" still run; a "prompt" line then says why not
    if (!o.tok.vocab.empty() || !o.tok.merges.empty()) throw;
  }
  std::vector<PromptJob> jobs =
      read_prompts(o.prompts, tok ? &*tok : nullptr,
                   {o.n, engine::SamplingParams{o.temperature, o.top_k, o.top_p, o.seed}});
  if (!o.trace.empty()) check_writable(o.trace, "--trace");
  const auto config = engine::read_model_config(o.model);
  PromptsShape shape = prompts_shape(jobs, o.max_seqs, config);
  RunShape rs;
  rs.context = shape.context;
  rs.max_seqs = shape.max_seqs;
  rs.max_batch_rows = shape.max_batch_rows;
  rs.max_logit_rows = shape.max_logit_rows;
  rs.attended_tokens = shape.context / 2;
  rs.context_hint = "generate fewer tokens with -n or max_tokens, or shorten the prompts";
  session::SessionOptions so = run_session_options(o, config, rs, std::move(tok));
  if (!o.trace.empty()) trace::tracer().start();
  Progress loading("loading", o.quiet);
  so.on_load_progress = [&](uint64_t done, uint64_t total) { loading.update(done, total); };
  // --draft: each sequence drafts (from its own text, or on its slot of the draft model) and
  // verifies inside the batch's pass. The drafter opens first: a draft model's resident bytes
  // come out of the target's budget.
  std::unique_ptr<DraftRun> draft;
  if (!o.draft.draft.empty()) draft = std::make_unique<DraftRun>(o.draft, so, o.quiet);
  session::Session ses(std::move(so));
  loading.finish();
  if (draft) draft->check_against(ses);
  if (!o.trace.empty()) profile::trace_load_metadata(ses.model(), ses.engine().backend());
  if (!o.quiet) {
    print_plan(ses.model(), ses.engine().backend());
    if (!ses.kv_choice().empty()) eprint("ferry: {}\n", ses.kv_choice());
    if (draft)
      for (const auto& line : draft->plan_lines()) eprint("ferry: {}\n", line);
  }
  const engine::SchedulerOptions speculation = draft ? draft->speculation()
                                                    : engine::SchedulerOptions{};
  const std::vector<int32_t> eos = o.ignore_eos ? std::vector<int32_t>{} : ses.eos_ids();
  shape.max_batch_rows = ses.options().load.max_batch_rows;  // with room for the drafts
  const PromptsSummary s = run_prompts(ses.engine(), std::move(jobs), shape, eos, ses.tokenizer(),
                                       stdout, speculation);
  if (!o.trace.empty()) profile::finish_trace(o.trace);
  if (!o.quiet)
    eprint("ferry: {} prompts, {} at a time: {} prompt tokens, {} generated in {:.3f} s "
           "({} tok/s) over {} passes; decode {} tok/s in all{}\n",
           s.prompts, shape.max_seqs, s.stats.prompt_tokens_total, s.stats.generated_tokens_total,
           s.seconds, format_rate(static_cast<double>(s.stats.generated_tokens_total), s.seconds),
           s.stats.steps, format_rate(static_cast<double>(s.stats.decode_tokens), s.stats.decode_s),
           s.failed ? fmt::format("; {} failed (see their lines)", s.failed) : "");
  const engine::SchedulerStats& st = s.stats;
  const uint64_t judged = st.draft_tokens_accepted + st.draft_tokens_rejected;
  if (draft && judged > 0)
    draft->learn(static_cast<double>(st.draft_tokens_accepted) / static_cast<double>(judged));
  if (!o.quiet && draft) {
    eprint("ferry: speculative ({}, k {}): {} drafts scored, {} of {} judged accepted ({:.1f}%); "
           "a sequence's pass yielded {:.2f} tokens (1 without drafts)\n",
           o.draft.draft, draft->k(), st.draft_tokens_proposed, st.draft_tokens_accepted, judged,
           judged > 0 ? 100.0 * static_cast<double>(st.draft_tokens_accepted) /
                            static_cast<double>(judged)
                      : 0.0,
           st.draft_rounds > 0 ? static_cast<double>(st.draft_round_tokens) /
                                     static_cast<double>(st.draft_rounds)
                               : 0.0);
  }
  return s.failed ? 1 : 0;
}

}  // namespace

Command add_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "generate text from a prompt");
  cmd->add_option("-m,--model", o->model, "model directory (config.json + weights) or GGUF file")
      ->required();
  auto* p = cmd->add_option("-p,--prompt", o->prompt, "prompt text");
  auto* i = cmd->add_option("--ids", o->ids, "prompt as token ids, e.g. \"15496 995\"");
  p->excludes(i);
  auto* f = cmd->add_option("--prompts", o->prompts,
                            "JSON Lines of {\"prompt\": TEXT} or {\"ids\": [..]} (optionally "
                            "max_tokens, temperature, top_p, top_k, seed, id), decoded together; "
                            "one JSON line out per prompt, in order");
  f->excludes(p)->excludes(i);
  cmd->add_option("--max-seqs", o->max_seqs, "with --prompts: sequences decoded at once")
      ->check(whole_number(1, 1024));
  cmd->add_option("--kv-tokens", o->kv_tokens,
                  "with --prompts: tokens the paged KV cache holds for all sequences together: "
                  "auto (the planner weighs each sequence's cache against resident layers) or a "
                  "number (default: every sequence at full context)");
  cmd->add_option("-n,--n-tokens", o->n, "new tokens to generate")
      ->check(whole_number(0, int64_t{1} << 24));
  cmd->add_option("--temperature", o->temperature, "0 = greedy (default)")
      ->envname("FERRY_TEMPERATURE");
  cmd->add_option("--top-k", o->top_k, "sample from the k most likely tokens (0 = all)");
  cmd->add_option("--top-p", o->top_p, "nucleus sampling threshold in (0, 1]");
  cmd->add_option("--seed", o->seed, "random seed for sampling")->check(no_minus_sign());
  cmd->add_flag("--print-ids", o->print_ids, "end with a JSON array of the generated ids");
  cmd->add_flag("--ignore-eos", o->ignore_eos, "keep going after <|endoftext|>");
  cmd->add_flag("-q,--quiet", o->quiet, "no statistics on stderr");
  cmd->add_option("--trace", o->trace, "write a Chrome trace (Perfetto, chrome://tracing)");
  add_device_options(cmd, o->device, o->max_vram);
  add_tokenizer_options(cmd, o->tok);
  add_load_options(cmd, o->load);
  add_draft_options(cmd, o->draft);
  return [o] {
    FERRY_EXPECT(o->draft.k == 0 || !o->draft.draft.empty(),
                 "--draft-k needs --draft (lookup, self-int4, self-int8 or a model path)");
    if (!o->prompts.empty()) return run_prompts_file(*o);
    FERRY_EXPECT(!o->prompt.empty() || !o->ids.empty(),
                 "give a prompt with -p TEXT, --ids \"I J K\" or --prompts FILE");
    std::optional<text::BpeTokenizer> tok;
    try {
      tok = load_tokenizer(o->model, o->tok);
    } catch (const Error&) {
      // --ids with no tokenizer files still runs, printing ids instead of text.
      if (!o->prompt.empty() || !o->tok.vocab.empty() || !o->tok.merges.empty()) throw;
    }
    // Text is encoded as the model's tokenizer does by default (its BOS for Llama 2/3 and
    // Mistral; nothing for GPT-2's); --ids are taken as given.
    const std::vector<int32_t> prompt =
        o->ids.empty() ? tok->encode(o->prompt, /*add_special=*/true) : parse_ids(o->ids);

    // The KV cache and activations are sized for this request, not for the model's context.
    // A bad output path is refused now, not after the whole run.
    if (!o->trace.empty()) check_writable(o->trace, "--trace");
    const auto config = engine::read_model_config(o->model);
    const int64_t n_prompt = static_cast<int64_t>(prompt.size());
    engine::check_prompt_length(n_prompt, model::max_context(config));
    RunShape rs;
    rs.context =
        std::min<int64_t>(model::max_context(config), n_prompt + std::max<int64_t>(o->n, 1));
    rs.max_batch_rows = n_prompt;
    rs.max_logit_rows = 1;
    rs.attended_tokens = n_prompt + o->n / 2;  // the middle of decoding, for the prediction
    rs.context_hint = "generate fewer tokens with -n, or shorten the prompt";
    FERRY_EXPECT(o->kv_tokens.empty(), "--kv-tokens sizes the cache of --prompts; drop it");
    session::SessionOptions so = run_session_options(*o, config, rs, std::move(tok));
    if (!o->trace.empty()) trace::tracer().start();
    Progress loading("loading", o->quiet);
    so.on_load_progress = [&](uint64_t done, uint64_t total) { loading.update(done, total); };
    // A drafter opens first: a draft model's resident bytes come out of the target's budget.
    std::unique_ptr<DraftRun> draft;
    if (!o->draft.draft.empty()) draft = std::make_unique<DraftRun>(o->draft, so, o->quiet);
    session::Session ses(std::move(so));
    loading.finish();
    if (draft) draft->check_against(ses);
    engine::LoadedModel& m = ses.model();
    engine::Engine& eng = ses.engine();
    const engine::Backend& backend = eng.backend();
    if (!o->trace.empty()) profile::trace_load_metadata(m, backend);
    if (!o->quiet) print_plan(m, backend);
    if (draft && !o->quiet)
      for (const auto& line : draft->plan_lines()) eprint("ferry: {}\n", line);
    engine::GenerateOptions go;
    go.max_new_tokens = o->n;
    if (!o->ignore_eos) {
      go.eos_ids = ses.eos_ids();
      // An end id the vocabulary does not have can never be generated: say so (Hugging Face's
      // tiny GPT-J configs keep GPT-2's 50256 over 1000 ids) and stop at the others.
      if (!o->quiet)
        for (int32_t id : ses.eos_ids_outside_vocab())
          eprint("ferry: note: eos_token_id {} is outside the vocabulary of {} tokens, so "
                 "generation cannot stop at it; it runs the -n {} tokens asked for\n",
                 id, m.config.vocab_size, o->n);
    }
    go.sampling = {o->temperature, o->top_k, o->top_p, o->seed};

    std::optional<text::StreamDecoder> dec;
    // What is printed continues the prompt: the first new token keeps its leading space (a
    // SentencePiece decoder would strip it at the start of a text).
    const text::Tokenizer* tk = ses.tokenizer();
    if (tk) dec.emplace(*tk, /*at_start_of_text=*/false);
    engine::RunOutcome outcome;
    bool first = true;
    const engine::TokenCallback on_token = [&](int32_t id) {
      if (std::exchange(first, false))  // the prompt pass is done: its waits on the disk
        outcome.prompt_stall_s = engine::stall_s(backend);
      if (dec) {
        fmt::print("{}", token_text(*tk, *dec, id));
      } else {
        fmt::print("{} ", id);
      }
      std::fflush(stdout);
      return true;
    };
    const auto out = draft ? draft->generate(eng, prompt, go, on_token, outcome.stats)
                           : engine::generate(eng, 0, prompt, go, on_token, &outcome.stats);
    if (dec) fmt::print("{}", dec->flush());
    fmt::print("\n");
    if (o->print_ids) fmt::print("[{}]\n", fmt::join(out, ", "));
    std::fflush(stdout);
    if (!o->trace.empty()) profile::finish_trace(o->trace);
    if (!o->quiet) {
      const engine::GenerateStats& stats = outcome.stats;
      eprint("ferry: prompt {} tokens in {:.3f} s ({} tok/s); generated {} tokens, decode {} "
             "tok/s\n",
             stats.prompt_tokens, stats.prompt_s,
             format_rate(static_cast<double>(stats.prompt_tokens), stats.prompt_s),
             stats.new_tokens,
             format_rate(static_cast<double>(stats.decode_steps), stats.decode_s));
      // The plan's prediction against the run, and the rates it achieved for the next plans; a
      // speculative run's passes score several positions, so it teaches no per-token rates.
      if (draft) {
        eprint("ferry: {}\n", draft->stats_line());
      } else {
        for (const auto& line : engine::learn_from_run(m, backend, outcome))
          eprint("ferry: {}\n", line);
      }
    }
    return 0;
  };
}

Command add_logits(CLI::App& app) {
  struct Options {
    std::string model;
    std::string ids;
    std::string prompt;
    bool all = false;
    std::string device = "cpu";
    std::string max_vram;
    TokenizerOptions tok;
    LoadFlags load;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("logits", "print the logits at the last position as JSON");
  cmd->add_option("-m,--model", o->model, "model directory or GGUF file")->required();
  auto* i = cmd->add_option("--ids", o->ids, "input token ids, e.g. \"15496 995\"");
  auto* p = cmd->add_option("-p,--prompt", o->prompt, "input text (tokenized first)");
  i->excludes(p);
  cmd->add_flag("--all-positions", o->all, "one row of logits per input position");
  add_device_options(cmd, o->device, o->max_vram);
  add_tokenizer_options(cmd, o->tok);
  add_load_options(cmd, o->load);
  return [o] {
    FERRY_EXPECT(!o->ids.empty() || !o->prompt.empty(),
                 "give the input with --ids \"I J K\" or -p TEXT");
    const std::vector<int32_t> ids =
        o->ids.empty() ? load_tokenizer(o->model, o->tok).encode(o->prompt, /*add_special=*/true)
                       : parse_ids(o->ids);
    const auto config = engine::read_model_config(o->model);
    const auto n_ids = static_cast<int64_t>(ids.size());
    engine::check_prompt_length(n_ids, model::max_context(config));
    engine::LoadOptions lo = load_options(o->load, config, n_ids, n_ids, o->all ? n_ids : 1);
    DeviceRun dev;
    dev.open(o->device, o->max_vram, o->load.mmap, lo);
    engine::LoadedModel m = engine::load_model(o->model, lo);
    const std::unique_ptr<engine::Engine> eng = DeviceRun::engine(m, n_ids, lo);
    engine::SeqTokens s{0, ids};
    const auto& logits =
        eng->forward({&s, 1}, o->all ? engine::LogitsFor::all : engine::LogitsFor::last);
    const auto vocab = static_cast<std::size_t>(m.config.vocab_size);
    if (o->all) {
      fmt::print("{{\"logits\": [");
      for (std::size_t r = 0; r < ids.size(); ++r)
        fmt::print("{}[{}]", r ? ", " : "",
                   fmt::join(logits.begin() + static_cast<std::ptrdiff_t>(r * vocab),
                             logits.begin() + static_cast<std::ptrdiff_t>((r + 1) * vocab), ", "));
      fmt::print("]}}\n");
    } else {
      fmt::print(
          "{{\"logits\": [{}]}}\n",
          fmt::join(logits.begin(), logits.begin() + static_cast<std::ptrdiff_t>(vocab), ", "));
    }
    return 0;
  };
}

namespace {

// The whole of a text file, for `perplexity -f`.
std::string read_text_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  FERRY_EXPECT(in.good(), "cannot read the text file {}: {}; check the path given to -f", path,
               std::error_code(errno, std::generic_category()).message());
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  FERRY_EXPECT(!in.bad(), "reading the text file {} failed", path);
  return text;
}

}  // namespace

Command add_perplexity(CLI::App& app) {
  struct Options {
    std::string model;
    std::string reference;
    std::string file;
    std::string prompt;
    std::string ids;
    int64_t ctx = 0;
    int64_t stride = 0;
    int64_t max_tokens = 0;
    bool json = false;
    bool quiet = false;
    std::string device = "cpu";
    std::string max_vram;
    TokenizerOptions tok;
    LoadFlags load;
  };
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "perplexity",
      "score a text: perplexity, and against --reference the KL divergence and top-1 agreement");
  cmd->add_option("-m,--model", o->model,
                  "model directory (a checkpoint or a ferry pack) or GGUF file")
      ->required();
  auto* f = cmd->add_option("-f,--file", o->file, "the text to score, a UTF-8 file");
  auto* p = cmd->add_option("-p,--prompt", o->prompt, "the text to score");
  auto* i = cmd->add_option("--ids", o->ids, "the token ids to score, e.g. \"15496 995 11\"");
  f->excludes(p)->excludes(i);
  p->excludes(i);
  cmd->add_option("--reference", o->reference,
                  "also run this model (e.g. the checkpoint a pack was converted from) on the same "
                  "windows and compare; the two share the RAM (and VRAM) budget half and half");
  cmd->add_option("--ctx", o->ctx, "tokens per window (default 512, or n_positions when smaller)")
      ->check(whole_number(1, int64_t{1} << 24));
  cmd->add_option("--stride", o->stride,
                  "tokens a window advances; each window scores only the tokens no earlier one did "
                  "(default ctx / 2)")
      ->check(whole_number(1, int64_t{1} << 24));
  cmd->add_option("--max-tokens", o->max_tokens, "score only the text's first N tokens")
      ->check(whole_number(1, int64_t{1} << 40));
  cmd->add_flag("--json", o->json, "also print the results as JSON on the last line");
  cmd->add_flag("-q,--quiet", o->quiet, "no plans or progress on stderr");
  add_device_options(cmd, o->device, o->max_vram);
  add_tokenizer_options(cmd, o->tok);
  add_load_options(cmd, o->load);
  return [o] {
    FERRY_EXPECT(!o->file.empty() || !o->prompt.empty() || !o->ids.empty(),
                 "give the text to score with -f FILE, -p TEXT or --ids \"I J K\"");
    std::vector<int32_t> ids;
    if (!o->ids.empty()) {
      ids = parse_ids(o->ids);
    } else {
      const std::string text = o->file.empty() ? o->prompt : read_text_file(o->file);
      ids = load_tokenizer(o->model, o->tok).encode(text, /*add_special=*/true);
    }
    if (o->max_tokens > 0 && static_cast<int64_t>(ids.size()) > o->max_tokens)
      ids.resize(static_cast<std::size_t>(o->max_tokens));

    const auto config = engine::read_model_config(o->model);
    std::optional<model::ModelConfig> ref_config;
    if (!o->reference.empty()) ref_config = engine::read_model_config(o->reference);
    const int64_t n_positions =
        std::min(model::max_context(config), model::max_context(ref_config ? *ref_config : config));
    FERRY_EXPECT(o->ctx <= n_positions,
                 "--ctx {} is longer than the model's context of {} tokens; give --ctx {} or less",
                 o->ctx, n_positions, n_positions);
    engine::PerplexityOptions po;
    po.context = o->ctx > 0 ? o->ctx : std::min<int64_t>(512, n_positions);
    po.stride = o->stride;
    FERRY_EXPECT(po.stride < po.context,
                 "--stride {} is not shorter than the window of {} tokens: each window keeps at "
                 "least one token of context before the tokens it scores; give --stride {} or less",
                 po.stride, po.context, po.context - 1);
    // Engines sized for the longest window fed, with logits for every position of it.
    const int64_t fed =
        std::max<int64_t>(1, std::min<int64_t>(po.context, static_cast<int64_t>(ids.size())));

    engine::LoadOptions lo = load_options(o->load, config, fed, fed, fed);
    lo.attended_tokens = fed / 2;
    DeviceRun dev;
    dev.open(o->device, o->max_vram, o->load.mmap, lo);
    engine::LoadOptions ref_lo = lo;
    if (ref_config) {
      FERRY_EXPECT(o->load.plan.empty(),
                   "--plan replays one model's plan; with --reference both models are planned "
                   "together, so drop --plan");
      if (lo.max_ram_bytes) {
        lo.max_ram_source = "half of --max-ram (the reference has the other half)";
      } else {
        const planner::RamProbe probe = planner::probe_ram();
        lo.max_ram_bytes = probe.available_bytes();
        lo.max_ram_source =
            fmt::format("half of {}; the reference has the other half", probe.describe());
      }
      *lo.max_ram_bytes /= 2;
      dev.halve_vram(lo);
      ref_lo = lo;
    }
    Progress loading("loading", o->quiet);
    lo.io.on_load_progress = [&](uint64_t done, uint64_t total) { loading.update(done, total); };
    ref_lo.io.on_load_progress = lo.io.on_load_progress;
    engine::LoadedModel m = engine::load_model(o->model, lo);
    const std::unique_ptr<engine::Engine> model_engine = DeviceRun::engine(m, fed, lo);
    std::optional<engine::LoadedModel> ref;
    std::unique_ptr<engine::Engine> ref_engine;
    if (ref_config) {
      ref.emplace(engine::load_model(o->reference, ref_lo));
      ref_engine = DeviceRun::engine(*ref, fed, ref_lo);
    }
    loading.finish();
    if (!o->quiet) {
      const auto describe = [](const char* role, const std::string& dir,
                               const engine::LoadedModel& lm, const engine::Engine& e) {
        eprint("ferry: {} {}\n", role, dir);
        print_plan(lm, e.backend());
      };
      describe("model", o->model, m, *model_engine);
      if (ref) describe("reference", o->reference, *ref, *ref_engine);
    }
    Progress progress("perplexity", o->quiet);
    po.on_window = [&](int64_t done, int64_t total, int64_t) {
      progress.update_count(static_cast<uint64_t>(done), static_cast<uint64_t>(total), "windows");
    };
    const engine::PerplexityReport r =
        engine::evaluate_perplexity(*model_engine, ids, po, ref_engine.get());
    progress.finish();

    const auto& s = r.model;
    const auto pct = [](int64_t k, int64_t n) { return n > 0 ? 100.0 * double(k) / double(n) : 0; };
    fmt::print(
        "perplexity {:.4f} ± {:.4f} over {} tokens ({} window{} of {}, stride {}); mean "
        "NLL {:.5f} nats/token; top-1 accuracy {:.2f}%; {:.2f} s ({:.1f} tokens/s)\n",
        s.perplexity(), s.perplexity_stderr(), s.tokens, r.windows, r.windows == 1 ? "" : "s",
        r.context, r.stride, s.mean_nll(), pct(s.top1_correct, s.tokens), s.seconds,
        s.seconds > 0 ? double(s.tokens) / s.seconds : 0.0);
    nlohmann::json j;
    j["model"] = o->model;
    j["tokens"] = s.tokens;
    j["windows"] = r.windows;
    j["context"] = r.context;
    j["stride"] = r.stride;
    j["perplexity"] = s.perplexity();
    j["perplexity_stderr"] = s.perplexity_stderr();
    j["mean_nll"] = s.mean_nll();
    j["top1_accuracy"] = pct(s.top1_correct, s.tokens) / 100;
    j["seconds"] = s.seconds;
    if (r.vs_reference) {
      const auto& vs = *r.vs_reference;
      const auto& rs = vs.reference;
      const double ratio = s.perplexity() / rs.perplexity();
      fmt::print("reference perplexity {:.4f} ± {:.4f} ({}); model ÷ reference {:.5f} ({:+.3f}%)\n",
                 rs.perplexity(), rs.perplexity_stderr(), o->reference, ratio, 100.0 * (ratio - 1));
      fmt::print(
          "KL(reference ‖ model) mean {:.6f}, max {:.6f} nats; same top-1 token at "
          "{:.2f}% of {} positions\n",
          vs.mean_kl(s.tokens), vs.kl_max, pct(vs.top1_agree, s.tokens), s.tokens);
      j["reference"] = {{"model", o->reference},
                        {"perplexity", rs.perplexity()},
                        {"perplexity_stderr", rs.perplexity_stderr()},
                        {"mean_nll", rs.mean_nll()},
                        {"top1_accuracy", pct(rs.top1_correct, rs.tokens) / 100},
                        {"seconds", rs.seconds},
                        {"perplexity_ratio", ratio},
                        {"kl_mean", vs.mean_kl(s.tokens)},
                        {"kl_max", vs.kl_max},
                        {"top1_agreement", pct(vs.top1_agree, s.tokens) / 100}};
    }
    if (o->json) fmt::print("{}\n", j.dump());
    return 0;
  };
}

}  // namespace ferry::tools
