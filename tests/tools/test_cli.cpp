// The ferry command line end to end: parity through `ferry logits` and `ferry run`, the
// tokenizer, make-model, and the errors a user sees.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "offload/checkpoint.hpp"
#include "tests/support/test_support.hpp"

namespace ferry {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

using Result = test::CommandResult;

Result ferry(const std::vector<std::string>& args) { return test::run_command(FERRY_BIN, args); }

std::string last_line(const std::string& s) {
  std::string t = s;
  while (!t.empty() && t.back() == '\n') t.pop_back();
  const auto nl = t.rfind('\n');
  return nl == std::string::npos ? t : t.substr(nl + 1);
}

std::string join_ids(const json& ids) {
  std::string s;
  for (const auto& id : ids) {
    if (!s.empty()) s.push_back(' ');
    s.append(std::to_string(id.get<int>()));
  }
  return s;
}

json expected(const std::string& fixture) {
  return json::parse(test::read_file(test::data_dir() / fixture / "expected.json"));
}

class CliParity : public ::testing::TestWithParam<std::string> {};

TEST_P(CliParity, LogitsAndGreedyTokensMatchHuggingFace) {
  const fs::path dir = test::data_dir() / GetParam();
  const json reference = expected(GetParam());
  ASSERT_EQ(reference["prompts"].size(), 3u);
  for (const json& p : reference["prompts"]) {
    const Result r = ferry({"logits", "-m", dir.string(), "--ids", join_ids(p["input_ids"])});
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto got = json::parse(last_line(r.out))["logits"].get<std::vector<float>>();
    const auto want = p["last_logits"].get<std::vector<float>>();
    ASSERT_EQ(got.size(), want.size());
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 2e-5f) << i;

    const Result g = ferry({"run", "-m", dir.string(), "--ids", join_ids(p["input_ids"]), "-n",
                            std::to_string(p["greedy_tokens"].size()), "--print-ids", "-q"});
    ASSERT_EQ(g.rc, 0) << g.err;
    EXPECT_EQ(json::parse(last_line(g.out)), p["greedy_tokens"]);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CliParity,
                         ::testing::Values("gptj/tiny-f32", "gptj/sharded-f32",
                                           "gptj/tiny-f16-bin-sharded", "llama/llama3-gqa-f32",
                                           "llama/qwen2-bias-tied-bf16-sharded",
                                           "llama/mistral-f16"));

// Every Llama-family preset has the released model's shapes, and plan answers from config.json
// alone (no weights): the bytes it streams are the model's bf16 parameters.
TEST(Cli, LlamaFamilyPresetsPlanFromConfigAlone) {
  struct Case {
    const char* preset;
    int layers;
    int64_t vocab;
    double billions;  // parameters of the released model
  };
  for (const Case c :
       {Case{"llama3-8b", 32, 128256, 8.030}, Case{"mistral-7b", 32, 32768, 7.248},
        Case{"qwen2.5-7b", 28, 152064, 7.616}, Case{"qwen3-8b", 36, 151936, 8.191}}) {
    SCOPED_TRACE(c.preset);
    test::TempDir tmp;
    // One layer of the real width and a small vocabulary, written and inspected; then its
    // config.json with the real layer count and vocabulary is what plan reads.
    Result r = ferry({"make-model", "--preset", c.preset, "--n-layer", "1", "--vocab", "256", "-o",
                      (tmp / "m").string(), "-q"});
    ASSERT_EQ(r.rc, 0) << r.err;
    r = ferry({"inspect", "-m", (tmp / "m").string()});
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.out.find("layer 0"), std::string::npos) << r.out;
    json config = json::parse(test::read_file(tmp / "m" / "config.json"));
    EXPECT_EQ(config["torch_dtype"], "bfloat16");
    config["num_hidden_layers"] = c.layers;
    config["vocab_size"] = c.vocab;
    test::write_file(tmp / "config.json", config.dump());
    r = ferry({"plan", "-m", (tmp / "config.json").string(), "--profile", "colab-t4", "--json"});
    ASSERT_EQ(r.rc, 0) << r.err;
    const json plan = json::parse(r.out);
    uint64_t bytes = 0;
    for (const json& l : plan["layers"]) bytes += l["bytes"].get<uint64_t>();
    // Streamed units hold every matrix (the embedding is read a row at a time, apart): the
    // parameters less the embedding table (tied models stream it as the head) and the norms.
    const double hidden = config["hidden_size"].get<double>();
    const double expected_bytes = 2 * (c.billions * 1e9 - static_cast<double>(c.vocab) * hidden);
    EXPECT_NEAR(static_cast<double>(bytes) / expected_bytes, 1.0, 0.01) << r.out;
  }
}

// Shapes the fixtures do not cover, against an independent plain-Python forward pass
// (tests/tools/llama_reference.py, double precision; it matches transformers' logits on all
// three Llama-family fixtures within 3e-6): Qwen3's per-head q/k norms with an explicit head_dim,
// multi-head (kv heads = heads) and multi-query (one kv head) attention, a tied head.
TEST(Cli, LlamaFamilyShapesMatchAPlainReference) {
  if (std::system("python3 -c 1 >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  const fs::path reference = test::data_dir().parent_path() / "tools" / "llama_reference.py";
  struct Case {
    const char* name;
    std::vector<std::string> flags;
    bool tie = false;
  };
  const std::vector<Case> cases = {
      {"qwen3 GQA 4:2, head_dim 32",
       {"--preset", "qwen3-8b", "--n-kv-head", "2", "--head-dim", "32"}},
      {"llama MHA", {"--preset", "llama3-8b", "--n-kv-head", "4"}},
      {"mistral MQA", {"--preset", "mistral-7b", "--n-kv-head", "1"}},
      {"qwen3 tied", {"--preset", "qwen3-8b", "--n-kv-head", "2", "--head-dim", "16"}, true},
  };
  const std::string ids = "1 7 42 200 3 99 250 12";
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    test::TempDir tmp;
    const fs::path model = tmp / "m";
    std::vector<std::string> args = {
        "make-model", "--n-layer", "2",  "--n-embd", "64",           "--n-head",
        "4",          "--n-inner", "96", "--vocab",  "256",          "--dtype",
        "f32",        "--seed",    "11", "-o",       model.string(), "-q"};
    args.insert(args.begin() + 1, c.flags.begin(), c.flags.end());
    Result r = ferry(args);
    ASSERT_EQ(r.rc, 0) << r.err;
    if (c.tie) {
      json config = json::parse(test::read_file(model / "config.json"));
      config["tie_word_embeddings"] = true;
      test::write_file(model / "config.json", config.dump(2));
    }
    r = ferry({"logits", "-m", model.string(), "--ids", ids});
    ASSERT_EQ(r.rc, 0) << r.err;
    const auto got = json::parse(last_line(r.out))["logits"].get<std::vector<double>>();
    const std::string cmd = "python3 '" + reference.string() + "' '" + model.string() + "' " + ids +
                            " > '" + (tmp / "ref.json").string() + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    const auto want =
        json::parse(test::read_file(tmp / "ref.json"))["logits"].get<std::vector<double>>();
    ASSERT_EQ(got.size(), want.size());
    double worst = 0;
    for (std::size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(got[i] - want[i]));
    EXPECT_LT(worst, 2e-5);
  }
}

// What the Llama family's configs may say that ferry does not compute is refused by name.
TEST(Cli, UnsupportedLlamaConfigsAreRefusedByName) {
  const fs::path src = test::data_dir() / "llama" / "llama3-gqa-f32";
  const json base = json::parse(test::read_file(src / "config.json"));
  struct Case {
    const char* key;
    json value;
    const char* says;
  };
  for (const Case& c : {Case{"rope_scaling", json{{"rope_type", "yarn"}, {"factor", 4.0}},
                             "rope_scaling.rope_type 'yarn' is not supported"},
                        Case{"hidden_act", "gelu", "hidden_act 'gelu' is not supported"},
                        Case{"num_key_value_heads", 3, "num_key_value_heads 3 must divide"},
                        Case{"model_type", "falcon", "model_type 'falcon' is not supported"}}) {
    SCOPED_TRACE(c.key);
    test::TempDir tmp;
    json j = base;
    j[c.key] = c.value;
    test::write_file(tmp / "config.json", j.dump());
    fs::copy_file(src / "model.safetensors", tmp / "model.safetensors");
    const Result r = ferry({"run", "-m", tmp.path().string(), "--ids", "1 2", "-n", "1"});
    EXPECT_NE(r.rc, 0);
    EXPECT_NE(r.err.find(c.says), std::string::npos) << r.err;
  }
}

// A pack of a tied bf16 model: the lm_head is written as its own tensor, the pack's config says
// the two are untied, and its int8 logits point the way the source's do.
TEST(Cli, ConvertTiedLlamaFamilyModel) {
  const fs::path src = test::data_dir() / "llama" / "qwen2-bias-tied-bf16-sharded";
  const json reference = expected("llama/qwen2-bias-tied-bf16-sharded");
  test::TempDir tmp;
  const fs::path pack = tmp / "p.ferry";
  Result r = ferry({"convert", "-m", src.string(), "-o", pack.string(), "--quant", "int8"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(test::read_file(pack / "config.json"))["tie_word_embeddings"], false);
  const json& p = reference["prompts"][2];
  r = ferry({"logits", "-m", pack.string(), "--ids", join_ids(p["input_ids"])});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto got = json::parse(last_line(r.out))["logits"].get<std::vector<float>>();
  const auto want = p["last_logits"].get<std::vector<float>>();
  ASSERT_EQ(got.size(), want.size());
  // Quantized, so not equal; but the same direction (a wrong or random lm_head gives a cosine
  // near 0; int8 gives 0.999 here).
  double dot = 0, gg = 0, ww = 0, max_diff = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    dot += static_cast<double>(got[i]) * want[i];
    gg += static_cast<double>(got[i]) * got[i];
    ww += static_cast<double>(want[i]) * want[i];
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - want[i])));
  }
  EXPECT_GT(max_diff, 0.0);
  EXPECT_GT(dot / std::sqrt(gg * ww), 0.995);
}

// A Llama-family model with a SentencePiece-style tokenizer.json: text prompts are encoded as the
// tokenizer does by default (its post-processor puts <s> in front), so `logits -p TEXT` equals
// `logits --ids` of `tokenize --add-special`, and `run -p` prints text.
TEST(Cli, LlamaFamilyTextPromptsGoThroughTokenizerJson) {
  test::TempDir tmp;
  const fs::path model = tmp / "m";
  Result r = ferry({"make-model", "--preset", "tiny-llama", "--vocab", "2000", "--seed", "3", "-o",
                    model.string(), "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const fs::path tok = test::data_dir() / "tokenizers" / "spm-bpe-tiny";
  for (const char* f : {"tokenizer.json", "tokenizer_config.json"})
    fs::copy_file(tok / f, model / f, fs::copy_options::overwrite_existing);
  const std::string text = "The ferry crossed the river";
  r = ferry({"tokenize", "-m", model.string(), "--text", text, "--add-special"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json ids = json::parse(last_line(r.out));
  ASSERT_GT(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);  // <s>
  const Result by_text = ferry({"logits", "-m", model.string(), "-p", text});
  const Result by_ids = ferry({"logits", "-m", model.string(), "--ids", join_ids(ids)});
  ASSERT_EQ(by_text.rc, 0) << by_text.err;
  ASSERT_EQ(by_ids.rc, 0) << by_ids.err;
  EXPECT_EQ(last_line(by_text.out), last_line(by_ids.out));

  r = ferry({"run", "-m", model.string(), "-p", text, "-n", "6", "--ignore-eos", "--print-ids"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(json::parse(last_line(r.out)).size(), 6u);
  EXPECT_NE(r.err.find(fmt::format("prompt {} tokens", ids.size())), std::string::npos) << r.err;
}

TEST(Cli, TokenizeJsonl) {
  const json cases = json::parse(test::read_file(test::data_dir() / "gpt2-bpe/cases.json"));
  test::TempDir tmp;
  std::string lines;
  for (const auto& c : cases) lines += c["text"].dump() + "\n";
  test::write_file(tmp / "in.jsonl", lines);
  const fs::path gpt2 = test::repo_data_dir() / "gpt2";
  const Result r = ferry({"tokenize", "--vocab", (gpt2 / "vocab.json").string(), "--merges",
                          (gpt2 / "merges.txt").string(), "--jsonl", (tmp / "in.jsonl").string()});
  ASSERT_EQ(r.rc, 0) << r.err;
  std::istringstream out(r.out);
  std::string line;
  std::size_t i = 0;
  while (std::getline(out, line)) {
    ASSERT_LT(i, cases.size());
    EXPECT_EQ(json::parse(line), cases[i]["ids"]) << cases[i]["text"];
    ++i;
  }
  EXPECT_EQ(i, cases.size());
}

TEST(Cli, MakeModelThenRunText) {
  test::TempDir tmp;
  const fs::path model = tmp / "m";
  Result r = ferry({"make-model",   "--preset", "tiny",  "--n-layer",    "2", "--n-embd",
                    "64",           "--n-head", "4",     "--rotary-dim", "8", "--dtype",
                    "bf16",         "--format", "torch", "--seed",       "5", "-o",
                    model.string(), "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  ASSERT_TRUE(fs::exists(model / "pytorch_model.bin"));
  ASSERT_TRUE(fs::exists(model / "vocab.json"));

  r = ferry({"run", "-m", model.string(), "-p", "The quick brown fox", "-n", "8", "--temperature",
             "0.8", "--top-p", "0.9", "--seed", "1", "--print-ids"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json ids = json::parse(last_line(r.out));
  EXPECT_EQ(ids.size(), 8u);
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  // Same seed, same text.
  const Result again =
      ferry({"run", "-m", model.string(), "-p", "The quick brown fox", "-n", "8", "--temperature",
             "0.8", "--top-p", "0.9", "--seed", "1", "--print-ids"});
  EXPECT_EQ(again.out, r.out);

  r = ferry({"inspect", "-m", model.string()});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("torch-zip"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("layer 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("dtype bf16"), std::string::npos) << r.out;
}

TEST(Cli, Info) {
  const Result r = ferry({"info"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("cpu kernels: "), std::string::npos);
  EXPECT_NE(r.out.find("io_uring: "), std::string::npos);
  EXPECT_NE(r.out.find("cuda: "), std::string::npos);
}

TEST(Cli, ErrorsNameTheProblem) {
  const std::string tiny = (test::data_dir() / "gptj/tiny-f32").string();
  struct Case {
    std::vector<std::string> args;
    std::string must_say;
  };
  const std::vector<Case> cases = {
      {{"run", "-m", "/no/such/model", "--ids", "1 2"}, "/no/such/model"},
      {{"logits", "-m", tiny, "--ids", "1 5000"}, "token id 5000"},
      {{"logits", "-m", tiny, "--ids", "1 x2"}, "'x2' is not a token id"},
      {{"make-model", "--shard-size", "4XB", "-o", "/tmp/never"}, "cannot read '4XB' as a size"},
      {{"run", "-m", tiny, "-p", "hello"}, "vocab.json"},
  };
  for (const auto& c : cases) {
    const Result r = ferry(c.args);
    EXPECT_EQ(r.rc, 1) << c.args[0] << " " << r.out << r.err;
    EXPECT_NE(r.err.find(c.must_say), std::string::npos) << r.err;
    EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << r.err;
  }
  // A prompt longer than n_positions (128).
  std::string long_ids;
  for (int i = 0; i < 129; ++i) long_ids += "7 ";
  const Result r = ferry({"run", "-m", tiny, "--ids", long_ids, "-n", "1"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("129 tokens"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("shorten"), std::string::npos) << r.err;
}

// `ferry perplexity` on a text file, then a pack of the model against it as the reference: the
// reference's figures are the first run's, the pack moves them a little; bad requests are refused.
TEST(CliPerplexity, ScoresATextAndAPackAgainstItsSource) {
  test::TempDir tmp;
  const fs::path model = tmp / "m";
  Result r =
      ferry({"make-model", "--preset", "tiny", "--n-layer", "2", "--n-embd", "64", "--n-head", "4",
             "--rotary-dim", "8", "--dtype", "f32", "--seed", "3", "-o", model.string(), "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const fs::path text = tmp / "text.txt";
  std::ofstream(text) << "It was the best of times, it was the worst of times, it was the age of "
                         "wisdom, it was the age of foolishness, it was the epoch of belief.\n";
  r = ferry({"tokenize", "-m", model.string(), "--text", test::read_file(text)});
  ASSERT_EQ(r.rc, 0) << r.err;
  const auto n_tokens = static_cast<int64_t>(json::parse(last_line(r.out)).size());
  ASSERT_GT(n_tokens, 20);

  r = ferry({"perplexity", "-m", model.string(), "-f", text.string(), "--ctx", "16", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json base = json::parse(last_line(r.out));
  EXPECT_EQ(base["tokens"], n_tokens - 1);
  EXPECT_EQ(base["context"], 16);
  EXPECT_EQ(base["stride"], 8);
  EXPECT_EQ(base["windows"], 1 + (n_tokens - 16 + 7) / 8);
  // A random model spreads its bets over the 50400 tokens of GPT-J's vocabulary.
  EXPECT_GT(base["perplexity"].get<double>(), 20000);
  EXPECT_LT(base["perplexity"].get<double>(), 150000);
  EXPECT_NE(r.out.find("perplexity "), std::string::npos);

  const fs::path pack = tmp / "pack";
  r = ferry({"convert", "-m", model.string(), "-o", pack.string(), "--quant", "int4", "-q"});
  ASSERT_EQ(r.rc, 0) << r.err;
  r = ferry({"perplexity", "-m", pack.string(), "-f", text.string(), "--ctx", "16", "--reference",
             model.string(), "--max-ram", "1GiB", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const json vs = json::parse(last_line(r.out));
  EXPECT_DOUBLE_EQ(vs["reference"]["perplexity"].get<double>(), base["perplexity"].get<double>());
  EXPECT_GT(vs["reference"]["kl_mean"].get<double>(), 0);
  EXPECT_LT(vs["reference"]["kl_mean"].get<double>(), 0.01);
  EXPECT_NEAR(vs["reference"]["perplexity_ratio"].get<double>(), 1.0, 0.05);
  EXPECT_GT(vs["reference"]["top1_agreement"].get<double>(), 0.5);
  EXPECT_NE(r.out.find("KL(reference"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("half of --max-ram"), std::string::npos) << r.err;

  struct Case {
    std::vector<std::string> args;
    std::string must_say;
  };
  const std::string m = model.string();
  const std::vector<Case> cases = {
      {{"perplexity", "-m", m, "-f", (tmp / "missing.txt").string()}, "missing.txt"},
      {{"perplexity", "-m", m, "--ids", "5"}, "at least 2"},
      {{"perplexity", "-m", m, "--ids", "5 6 7", "--ctx", "100000"}, "context of"},
      {{"perplexity", "-m", m, "--ids", "5 6 7", "--ctx", "8", "--stride", "8"}, "--stride 7"},
      {{"perplexity", "-m", m}, "-f FILE"},
      {{"perplexity", "-m", m, "--ids", "5 6 7", "--reference", (tmp / "nothing").string()},
       "nothing"},
  };
  for (const auto& c : cases) {
    r = ferry(c.args);
    EXPECT_EQ(r.rc, 1) << c.must_say << " " << r.out << r.err;
    EXPECT_NE(r.err.find(c.must_say), std::string::npos) << r.err;
  }
}

// `ferry plan` answers from config.json alone (GPT-J-6B's, no weights) for a machine it is not
// on, and its JSON says where every layer goes.
TEST(CliPlan, GptjSixBOnColabT4FromConfigAlone) {
  const std::string cfg = (test::data_dir() / "gptj-6b-config").string();
  Result r = ferry({"plan", "-m", cfg, "--profile", "colab-t4", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  json plan = json::parse(r.out);
  ASSERT_EQ(plan["layers"].size(), 29u);  // 28 blocks and the head
  for (const auto& l : plan["layers"]) EXPECT_EQ(l["tier"], "device") << l.dump();
  EXPECT_LT(plan["peak_ram_bytes"].get<double>(), 2.0 * (1 << 30));  // far below Colab's 12.7 GiB
  EXPECT_GT(plan["s_per_token"].get<double>(), 0);
  EXPECT_GT(plan["peak_vram_bytes"].get<double>(), 12e9);  // 12.1 GB of fp16 weights
  EXPECT_GT(plan["peak_pinned_bytes"].get<double>(), 0);

  r = ferry({"plan", "-m", cfg, "--profile", "colab-t4", "--max-vram", "6GiB", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  plan = json::parse(r.out);
  int moved = 0;
  for (const auto& l : plan["layers"]) moved += l["tier"] != "device";
  EXPECT_GT(moved, 0);
  EXPECT_LE(plan["peak_vram_bytes"].get<double>(), 6.0 * (1 << 30));

  // The table names the bounding link; --explain shows the next best two.
  r = ferry({"plan", "-m", cfg, "--profile", "colab-t4", "--max-vram", "6GiB", "--explain"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("bound by host → device"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("next 2:"), std::string::npos) << r.out;

  r = ferry({"plan", "-m", cfg, "--profile", "colab-t4", "--max-vram", "1GiB"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("needs at least"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GiB of VRAM"), std::string::npos) << r.err;

  r = ferry({"plan", "-m", cfg, "--profile", "colab-cpu", "--max-ram", "1GiB", "--ctx", "2048"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("raise --max-ram to at least"), std::string::npos) << r.err;
}

// --quant auto: the least compression that fits and meets --goal, with every candidate in the
// JSON; the refusal when even int4 does not fit suggests no further compression.
TEST(CliPlan, QuantAutoPicksTheLeastCompressionThatFitsAndMeetsTheGoal) {
  const std::string cfg = (test::data_dir() / "gptj-6b-config").string();
  Result r = ferry({"plan", "-m", cfg, "--profile", "laptop-8g", "--quant", "auto", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  json plan = json::parse(r.out);
  const json& q = plan["quant"];
  ASSERT_EQ(q["candidates"].size(), 3u) << q.dump();
  EXPECT_EQ(q["candidates"][0]["format"], "f16");
  EXPECT_EQ(q["candidates"][1]["format"], "int8");
  EXPECT_EQ(q["candidates"][2]["format"], "int4");
  // Each compression streams fewer bytes and is predicted faster on a disk-bound laptop.
  for (int i = 1; i < 3; ++i) {
    EXPECT_LT(q["candidates"][i]["weight_bytes"].get<double>(),
              0.6 * q["candidates"][i - 1]["weight_bytes"].get<double>());
    EXPECT_LT(q["candidates"][i]["s_per_token"].get<double>(),
              q["candidates"][i - 1]["s_per_token"].get<double>());
  }
  EXPECT_EQ(q["chosen"], "f16");  // no goal: f16 fits 5.5 GiB streamed
  const double s_int8 = q["candidates"][1]["s_per_token"].get<double>();
  const double s_int4 = q["candidates"][2]["s_per_token"].get<double>();

  // A goal between int8 and int4 picks int4, and says why; the plan is int4's.
  const std::string goal = std::to_string((s_int8 + s_int4) / 2);
  r = ferry({"plan", "-m", cfg, "--profile", "laptop-8g", "--quant", "auto", "--goal", goal});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("chose int4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("int8 fits but takes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ferry convert"), std::string::npos) << r.out;
  r = ferry(
      {"plan", "-m", cfg, "--profile", "laptop-8g", "--quant", "auto", "--goal", goal, "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  plan = json::parse(r.out);
  EXPECT_EQ(plan["quant"]["chosen"], "int4");
  EXPECT_DOUBLE_EQ(plan["s_per_token"].get<double>(), s_int4);

  // An unreachable goal: the fastest that fits, saying no format meets it.
  r = ferry({"plan", "-m", cfg, "--profile", "laptop-8g", "--quant", "auto", "--goal", "1e-6"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("no format meets the goal"), std::string::npos) << r.out;

  // Nothing fits: int4's refusal, naming the smallest budget, without suggesting a pack.
  r = ferry({"plan", "-m", cfg, "--profile", "laptop-8g", "--quant", "auto", "--max-ram", "1GiB"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("raise --max-ram to at least"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("ferry convert"), std::string::npos) << r.err;
  r = ferry({"plan", "-m", cfg, "--profile", "laptop-8g", "--quant", "int8", "--max-ram", "1GiB"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("int4 pack"), std::string::npos) << r.err;

  r = ferry({"plan", "-m", cfg, "--profile", "laptop-8g", "--goal", "1"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("add --quant auto"), std::string::npos) << r.err;
  r = ferry({"plan", "-m", cfg, "--profile", "laptop-8g", "--quant", "int3"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("int3"), std::string::npos) << r.err;
}

// ferry run --verify: a flipped bit in a pack's layer is named whether checked on every read or
// only the first; off trusts the bytes (the user's choice); a bad mode names the flag.
TEST(CliRun, VerifyCatchesAFlippedBitInAPackLayer) {
  const std::string tiny = (test::data_dir() / "gptj/tiny-f32").string();
  test::TempDir tmp;
  const std::string pack = (tmp / "pack").string();
  Result r = ferry({"convert", "-m", tiny, "-o", pack, "--quant", "int8", "--quiet"});
  ASSERT_EQ(r.rc, 0) << r.err;
  {
    const auto ck = offload::Checkpoint::open(pack);
    const auto& t = ck.at("transformer.h.1.mlp.fc_in.weight");
    std::fstream f(tmp / "pack" / "model.ferry", std::ios::in | std::ios::out | std::ios::binary);
    const auto at = static_cast<std::streamoff>(t.offset_bytes + t.nbytes / 2);
    char c = 0;
    f.seekg(at);
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x04);
    f.seekp(at);
    f.write(&c, 1);
  }
  for (const char* mode : {"always", "once"}) {
    r = ferry({"run", "-m", pack, "--ids", "1 2 3", "-n", "3", "--verify", mode});
    EXPECT_EQ(r.rc, 1) << mode;
    EXPECT_NE(r.err.find("layer 1 is corrupt"), std::string::npos) << mode << ": " << r.err;
  }
  r = ferry({"run", "-m", pack, "--ids", "1 2 3", "-n", "3", "--verify", "off"});
  EXPECT_EQ(r.rc, 0) << r.err;
  r = ferry({"run", "-m", pack, "--ids", "1 2 3", "-n", "3", "--verify", "sometimes"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--verify 'sometimes'"), std::string::npos) << r.err;
}

// A plan saved by `ferry plan -o` drives `ferry run --plan`, which refuses one that does not fit.
TEST(CliPlan, RunReplaysASavedPlan) {
  const std::string tiny = (test::data_dir() / "gptj/tiny-f32").string();
  test::TempDir tmp;
  const std::string plan_file = (tmp / "plan.json").string();
  Result r = ferry(
      {"plan", "-m", tiny, "--max-ram", "1GiB", "--ctx", "16", "--no-measure", "-o", plan_file});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("predicted"), std::string::npos) << r.out;
  r = ferry({"run", "-m", tiny, "--ids", "1 2 3", "-n", "4", "--plan", plan_file});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("ferry: plan: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("measured"), std::string::npos) << r.err;

  r = ferry(
      {"run", "-m", tiny, "--ids", "1 2 3", "-n", "4", "--plan", plan_file, "--max-ram", "4MiB"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("the plan needs"), std::string::npos) << r.err;

  r = ferry({"run", "-m", tiny, "--ids", "1 2 3", "-n", "40", "--plan", plan_file});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("--ctx 16"), std::string::npos) << r.err;

  test::write_file(tmp / "bad.json", "{\"ferry_plan\": 1}");
  r = ferry({"run", "-m", tiny, "--ids", "1 2", "--plan", (tmp / "bad.json").string()});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("bad.json"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("\"model\""), std::string::npos) << r.err;

  r = ferry({"plan", "-m", tiny, "--profile", "no-such-machine"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("colab-t4"), std::string::npos) << r.err;
}

// An end id outside the vocabulary can never be generated; run says so instead of silently
// ignoring it (issue 21: it was accepted without a word).
TEST(Cli, AnEosIdOutsideTheVocabularyIsReported) {
  const std::string tiny = (test::data_dir() / "gptj" / "tiny-f32").string();
  Result r = ferry({"run", "-m", tiny, "--ids", "1 2 3", "-n", "2"});
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("eos_token_id 50256 is outside the vocabulary of 1000 tokens"),
            std::string::npos)
      << r.err;
  r = ferry({"run", "-m", tiny, "--ids", "1 2 3", "-n", "2", "-q"});
  EXPECT_EQ(r.err.find("outside the vocabulary"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace ferry
