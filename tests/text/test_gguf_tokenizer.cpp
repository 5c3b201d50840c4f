// Tokenizer::from_gguf against llama.cpp: every case of tests/data/gguf/tiny-llama-bpe/
// tokenize.json (ids under all four add_special/parse_special combinations, pieces,
// detokenization), a SentencePiece vocabulary built from tests/data/tokenizers/spm-bpe-tiny
// against Hugging Face's ids for it, small hand-made SentencePiece cases, and the errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"
#include "runtime/text/gguf_vocab.hpp"
#include "runtime/text/tokenizer.hpp"
#include "tests/support/test_support.hpp"
#include "tests/text/tokenizer_test_util.hpp"

namespace ferry::text {
namespace {

using test::expect_format_error;

// ---- a plain reader of a GGUF v3 file's metadata, enough for the tokenizer.* keys ----

class GgufMetadataReader {
 public:
  explicit GgufMetadataReader(std::string bytes) : bytes_(std::move(bytes)) {}

  GgufVocabulary read(const std::string& source) {
    GgufVocabulary v;
    v.source = source;
    if (bytes_.substr(0, 4) != "GGUF") throw std::runtime_error(source + ": not GGUF");
    pos_ = 4;
    if (get<std::uint32_t>() != 3) throw std::runtime_error(source + ": not GGUF v3");
    get<std::uint64_t>();  // tensors
    const auto n_kv = get<std::uint64_t>();
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      const std::string key = string();
      const auto type = get<std::uint32_t>();
      if (key == "tokenizer.ggml.model") {
        v.model = string();
      } else if (key == "tokenizer.ggml.pre") {
        v.pre = string();
      } else if (key == "tokenizer.ggml.tokens") {
        v.tokens = array<std::string>();
      } else if (key == "tokenizer.ggml.merges") {
        v.merges = array<std::string>();
      } else if (key == "tokenizer.ggml.token_type") {
        v.token_types = array<std::int32_t>();
      } else if (key == "tokenizer.ggml.scores") {
        v.scores = array<float>();
      } else if (key == "tokenizer.ggml.bos_token_id") {
        v.bos_id = static_cast<std::int32_t>(get<std::uint32_t>());
      } else if (key == "tokenizer.ggml.eos_token_id") {
        v.eos_id = static_cast<std::int32_t>(get<std::uint32_t>());
      } else if (key == "tokenizer.ggml.add_bos_token") {
        v.add_bos = get<std::uint8_t>() != 0;
      } else if (key == "tokenizer.ggml.add_eos_token") {
        v.add_eos = get<std::uint8_t>() != 0;
      } else {
        if (key.starts_with("tokenizer.")) {
          throw std::runtime_error(fmt::format("{}: the reader does not know {}", source, key));
        }
        skip(type);
      }
    }
    return v;
  }

 private:
  template <typename T>
  T get() {
    if (pos_ + sizeof(T) > bytes_.size()) throw std::runtime_error("truncated GGUF");
    T value;
    std::memcpy(&value, bytes_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return value;
  }
  std::string string() {
    const auto n = get<std::uint64_t>();
    if (pos_ + n > bytes_.size()) throw std::runtime_error("truncated GGUF");
    std::string s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  template <typename T>
  std::vector<T> array() {
    get<std::uint32_t>();  // the item type, known from the key
    const auto n = get<std::uint64_t>();
    std::vector<T> out;
    for (std::uint64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<T, std::string>) {
        out.push_back(string());
      } else {
        out.push_back(get<T>());
      }
    }
    return out;
  }
  void skip(std::uint32_t type) {
    static constexpr std::size_t kSizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (type == 8) {
      string();
    } else if (type == 9) {
      const auto item = get<std::uint32_t>();
      const auto n = get<std::uint64_t>();
      for (std::uint64_t i = 0; i < n; ++i) skip(item);
    } else if (type < 13) {
      pos_ += kSizes[type];
    } else {
      throw std::runtime_error("unknown GGUF type " + std::to_string(type));
    }
  }

  std::string bytes_;
  std::size_t pos_ = 0;
};

std::filesystem::path gguf_dir() { return ferry::test::data_dir() / "gguf" / "tiny-llama-bpe"; }

GgufVocabulary read_vocabulary(const std::string& type) {
  const std::filesystem::path path = gguf_dir() / type / "model.gguf";
  return GgufMetadataReader(ferry::test::read_file(path)).read(path.string());
}

const GgufVocabulary& fixture_vocabulary() {
  static const GgufVocabulary vocabulary = read_vocabulary("F32");
  return vocabulary;
}

const Tokenizer& fixture_tokenizer() {
  static const Tokenizer tokenizer = Tokenizer::from_gguf(fixture_vocabulary());
  return tokenizer;
}

std::string from_hex(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  }
  return out;
}

// ---- the llama.cpp fixture ----

TEST(GgufTokenizer, ReadsTheFixtureVocabulary) {
  const GgufVocabulary& v = fixture_vocabulary();
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "llama-bpe");
  EXPECT_EQ(v.tokens.size(), 1024u);
  EXPECT_EQ(v.merges.size(), 764u);
  const Tokenizer& tok = fixture_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 1024);
  EXPECT_EQ(tok.bos_id(), 1021);
  EXPECT_EQ(tok.eos_id(), 1022);
  // <|eot_id|> is an end of generation by its text.
  EXPECT_EQ(tok.eog_ids(), (std::vector<std::int32_t>{1022, 1023}));
  EXPECT_EQ(tok.token_id("<|eot_id|>"), 1023);
  EXPECT_EQ(tok.token_id("Ġ"), 220);
  EXPECT_EQ(tok.token_id("that"), 1020);
}

TEST(GgufTokenizer, EveryCaseMatchesLlamaCpp) {
  const Tokenizer& tok = fixture_tokenizer();
  const auto j = nlohmann::json::parse(ferry::test::read_file(gguf_dir() / "tokenize.json"));
  ASSERT_EQ(j.at("cases").size(), 12u);
  for (const auto& c : j.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    SCOPED_TRACE(testing::PrintToString(text));
    for (const bool add_special : {true, false}) {
      for (const bool parse_special : {true, false}) {
        const std::string key =
            fmt::format("ids_add_special_{}_parse_special_{}", add_special ? "True" : "False",
                        parse_special ? "True" : "False");
        EXPECT_EQ(tok.encode(text, add_special, parse_special),
                  c.at(key).get<std::vector<std::int32_t>>())
            << key;
      }
    }
    EXPECT_EQ(tok.encode(text, true), tok.encode(text, true, true));
    const auto ids =
        c.at("ids_add_special_True_parse_special_True").get<std::vector<std::int32_t>>();
    const auto hex = c.at("pieces_hex").get<std::vector<std::string>>();
    ASSERT_EQ(ids.size(), hex.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      EXPECT_EQ(tok.token_bytes(ids[i]), from_hex(hex[i])) << "piece " << i;
    }
    EXPECT_EQ(tok.decode(ids), c.at("detokenized").get<std::string>());
  }
}

// llama-bpe's ignore_merges: "that" is in the vocabulary, though no merge builds it.
TEST(GgufTokenizer, WholePreTokenInTheVocabularyIsOneId) {
  const Tokenizer& tok = fixture_tokenizer();
  EXPECT_EQ(tok.encode("that", false), (std::vector<std::int32_t>{1020}));
  GgufVocabulary v = fixture_vocabulary();
  v.pre = "dbrx";  // Llama 3's regex without ignore_merges: plain BPE gives th + at
  v.add_bos.reset();
  const Tokenizer plain = Tokenizer::from_gguf(v);
  const std::vector<std::int32_t> ids = plain.encode("that", false);
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(plain.token_bytes(ids[0]), "th");
  EXPECT_EQ(plain.token_bytes(ids[1]), "at");
  // No BOS unless the file asks: dbrx's default is llama.cpp's add_bos = false.
  EXPECT_EQ(plain.encode("that", true), ids);
}

// Every file of the fixture carries the same vocabulary (llama-quantize copies it).
TEST(GgufTokenizer, EveryWeightTypeGivesTheSameTokenizer) {
  const std::string text = "GNU GENERAL PUBLIC LICENSE\nthat is free software";
  const std::vector<std::int32_t> expected = fixture_tokenizer().encode(text, true, true);
  for (const char* type : {"F16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"}) {
    EXPECT_EQ(Tokenizer::from_gguf(read_vocabulary(type)).encode(text, true, true), expected)
        << type;
  }
}

TEST(GgufTokenizer, StreamingGivesThePieces) {
  const Tokenizer& tok = fixture_tokenizer();
  const std::string text = "Unicode: café naïve — “quotes” 日本語 🙂 ©";
  StreamDecoder stream(tok);
  std::string out;
  for (const std::int32_t id : tok.encode(text, false)) out += stream.push(id);
  out += stream.flush();
  EXPECT_EQ(out, text);
}

// ---- byte-level vocabularies made by hand ----

// The 256 byte tokens (id = byte value) plus `extra` tokens, and `merges`.
GgufVocabulary byte_vocabulary(std::vector<std::string> extra = {},
                               std::vector<std::string> merges = {"Ġ t"}) {
  GgufVocabulary v;
  v.source = "hand.gguf";
  v.model = "gpt2";
  v.pre = "gpt-2";
  for (int b = 0; b < 256; ++b) {
    v.tokens.push_back(detail::bytes_to_token_string(std::string(1, static_cast<char>(b))));
  }
  v.tokens.emplace_back("Ġt");
  for (std::string& t : extra) v.tokens.push_back(std::move(t));
  v.merges = std::move(merges);
  return v;
}

TEST(GgufTokenizer, EveryKnownPreTokenizerCompiles) {
  for (const char* pre : {"",
                          "default",
                          "llama3",
                          "llama-v3",
                          "llama-bpe",
                          "falcon3",
                          "dbrx",
                          "smaug-bpe",
                          "deepseek-llm",
                          "deepseek-coder",
                          "falcon",
                          "starcoder",
                          "refact",
                          "command-r",
                          "smollm",
                          "codeshell",
                          "exaone",
                          "minerva-7b",
                          "gpt-2",
                          "phi-2",
                          "roberta-bpe",
                          "mpt",
                          "olmo",
                          "jais",
                          "stablelm2",
                          "qwen2",
                          "megrez",
                          "chatglm-bpe",
                          "poro-chat",
                          "bloom",
                          "gpt3-finnish",
                          "viking"}) {
    GgufVocabulary v = byte_vocabulary();
    v.pre = pre;
    const Tokenizer tok = Tokenizer::from_gguf(v);
    const std::string text = "Hello, world! 12345 don't\n\n  x 日本語 $100";
    // No merge but "Ġ t": whatever the split, the bytes come back.
    EXPECT_EQ(tok.decode(tok.encode(text, false)), text) << pre;
  }
}

// The pre-tokenizers differ where their regexes do: Qwen2 splits digits one by one, Llama 3
// in threes, GPT-2 not at all. A vocabulary with "12" and "123" shows it through the merges.
TEST(GgufTokenizer, PreTokenizersSplitDigitsAsLlamaCppDoes) {
  const auto ids_for = [](const char* pre) {
    GgufVocabulary v = byte_vocabulary({"12", "123", "1234"}, {"Ġ t", "1 2", "12 3", "123 4"});
    v.pre = pre;
    return Tokenizer::from_gguf(v).encode("1234", false);
  };
  const std::int32_t one = '1', two = '2', three = '3', four = '4';
  EXPECT_EQ(ids_for("gpt-2"), (std::vector<std::int32_t>{259}));            // "1234"
  EXPECT_EQ(ids_for("llama-bpe"), (std::vector<std::int32_t>{258, four}));  // "123" "4"
  EXPECT_EQ(ids_for("qwen2"), (std::vector<std::int32_t>{one, two, three, four}));
  EXPECT_EQ(ids_for("starcoder"), (std::vector<std::int32_t>{one, two, three, four}));
}

// llama.cpp's clean_spaces on decode (every BPE pre-tokenizer but deepseek, qwen2, ...).
TEST(GgufTokenizer, DecodeCleansSpacesAsLlamaCppDoes) {
  GgufVocabulary v = byte_vocabulary();
  const Tokenizer gpt2 = Tokenizer::from_gguf(v);
  const std::string text = "a , b . c ' d 's e 't f 're g 'll";
  EXPECT_EQ(gpt2.decode(gpt2.encode(text, false)), "a, b. c'd's e 't f're g 'll");
  v.pre = "qwen2";
  const Tokenizer qwen2 = Tokenizer::from_gguf(v);
  EXPECT_EQ(qwen2.decode(qwen2.encode(text, false)), text);
}

// CONTROL tokens are cut out only with parse_special; USER_DEFINED ones always; the longest
// special token is cut first wherever it is (llama.cpp's order, not leftmost-longest).
TEST(GgufTokenizer, SpecialTokensAsLlamaCppFindsThem) {
  GgufVocabulary v = byte_vocabulary({"<ctl>", "<user>", "ab", "bcd"});
  v.token_types.assign(v.tokens.size(), 1);
  v.token_types[257] = 3;  // <ctl>
  v.token_types[258] = 4;  // <user>
  v.token_types[259] = 4;  // ab
  v.token_types[260] = 4;  // bcd
  const Tokenizer tok = Tokenizer::from_gguf(v);
  EXPECT_EQ(tok.encode("<ctl><user>", false, true), (std::vector<std::int32_t>{257, 258}));
  std::vector<std::int32_t> expected = {'<', 'c', 't', 'l', '>', 258};
  EXPECT_EQ(tok.encode("<ctl><user>", false, false), expected);
  // "bcd" is longer than "ab", so it is cut first: a + bcd, not ab + c + d.
  EXPECT_EQ(tok.encode("abcd", false, false), (std::vector<std::int32_t>{'a', 260}));
  EXPECT_EQ(tok.decode(std::vector<std::int32_t>{257, 'x'}), "<ctl>x");
}

// ---- SentencePiece ("llama") ----

// A SentencePiece-style GgufVocabulary from spm-bpe-tiny's tokenizer.json: its merges give
// the scores (a merged token scores minus the rank of its first merge).
GgufVocabulary spm_tiny_vocabulary() {
  const auto j = nlohmann::json::parse(ferry::test::read_file(
      ferry::test::data_dir() / "tokenizers" / "spm-bpe-tiny" / "tokenizer.json"));
  const auto& model = j.at("model");
  GgufVocabulary v;
  v.source = "spm-bpe-tiny (as GGUF)";
  v.model = "llama";
  v.tokens.resize(model.at("vocab").size());
  for (const auto& [token, id] : model.at("vocab").items()) {
    v.tokens.at(id.get<std::size_t>()) = token;
  }
  v.scores.assign(v.tokens.size(), -1e9f);
  v.token_types.assign(v.tokens.size(), 1);
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < v.tokens.size(); ++i) index[v.tokens[i]] = i;
  const auto& merges = model.at("merges");
  for (std::size_t rank = merges.size(); rank-- > 0;) {
    std::string m = merges[rank].get<std::string>();
    m.erase(m.find(' '), 1);
    v.scores.at(index.at(m)) = -static_cast<float>(rank);
  }
  for (std::size_t i = 0; i < v.tokens.size(); ++i) {
    const std::string& t = v.tokens[i];
    if (t.size() == 6 && t.starts_with("<0x")) v.token_types[i] = 6;
  }
  v.token_types[0] = 2;  // <unk>
  v.token_types[1] = 3;  // <s>
  v.token_types[2] = 3;  // </s>
  v.bos_id = 1;
  v.eos_id = 2;
  v.unk_id = 0;
  return v;
}

TEST(GgufTokenizer, SentencePieceMatchesHuggingFaceOnTheSpmFixture) {
  const Tokenizer gguf = Tokenizer::from_gguf(spm_tiny_vocabulary());
  const Tokenizer hf =
      Tokenizer::from_model_dir(ferry::test::data_dir() / "tokenizers" / "spm-bpe-tiny");
  const auto j = nlohmann::json::parse(ferry::test::read_file(
      ferry::test::data_dir() / "tokenizers" / "spm-bpe-tiny" / "cases.json"));
  int compared_decodes = 0;
  for (const auto& c : j.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    SCOPED_TRACE(testing::PrintToString(text));
    const auto ids = c.at("ids").get<std::vector<std::int32_t>>();
    EXPECT_EQ(gguf.encode(text, false), ids);
    EXPECT_EQ(gguf.encode(text, true), c.at("ids_with_special").get<std::vector<std::int32_t>>());
    EXPECT_EQ(hf.encode(text, false), ids);
    // llama.cpp writes the bytes of <0xNN> tokens as they are; Hugging Face turns bytes that
    // are not UTF-8 into U+FFFD. Where the bytes are UTF-8 the two agree.
    const std::string decoded = c.at("decoded").get<std::string>();
    if (decoded.find("\xEF\xBF\xBD") == std::string::npos) {
      EXPECT_EQ(gguf.decode(ids), decoded);
      ++compared_decodes;
    }
  }
  EXPECT_GE(compared_decodes, 30);
}

// Qwen3's tokenizer.json as a "qwen2" GGUF vocabulary would hold it. llama.cpp does not
// normalize, so only the cases NFC leaves alone can agree with Hugging Face; on those the
// pre-tokenizer regex, the byte-level BPE and the special tokens must give the same ids.
TEST(GgufTokenizer, Qwen2PreTokenizerMatchesHuggingFaceOnTheQwen3Fixture) {
  const std::filesystem::path dir = ferry::test::data_dir() / "tokenizers" / "qwen3";
  const auto j = nlohmann::json::parse(ferry::test::read_file(dir / "tokenizer.json"));
  GgufVocabulary v;
  v.source = "qwen3 (as GGUF)";
  v.model = "gpt2";
  v.pre = "qwen2";
  const auto& vocab = j.at("model").at("vocab");
  v.tokens.resize(vocab.size() + j.at("added_tokens").size());
  v.token_types.assign(v.tokens.size(), 1);
  for (const auto& [token, id] : vocab.items()) v.tokens.at(id.get<std::size_t>()) = token;
  for (const auto& added : j.at("added_tokens")) {
    const auto id = added.at("id").get<std::size_t>();
    v.tokens.at(id) = added.at("content").get<std::string>();
    v.token_types.at(id) = added.at("special").get<bool>() ? 3 : 4;
  }
  for (const auto& m : j.at("model").at("merges")) {
    v.merges.push_back(m.at(0).get<std::string>() + " " + m.at(1).get<std::string>());
  }
  v.eos_id = 151645;
  const Tokenizer tok = Tokenizer::from_gguf(v);
  EXPECT_EQ(tok.eog_ids(), (std::vector<std::int32_t>{151643, 151645, 151662, 151663, 151664}));
  const auto cases = nlohmann::json::parse(ferry::test::read_file(dir / "cases.json"));
  int compared = 0;
  for (const auto& c : cases.at("cases")) {
    const std::string text = c.at("text").get<std::string>();
    if (c.at("decoded").get<std::string>() != text) continue;  // NFC changed it
    SCOPED_TRACE(testing::PrintToString(text));
    EXPECT_EQ(tok.encode(text, false), c.at("ids").get<std::vector<std::int32_t>>());
    ++compared;
  }
  EXPECT_GE(compared, 30);
}

// A small SentencePiece vocabulary: "▁" 3, "a" 4, "b" 5, "ab" 6, "▁ab" 7, "▁a" 8, then the
// byte tokens for 0xC3 and 0xA9 (é).
GgufVocabulary small_spm(bool with_bytes) {
  GgufVocabulary v;
  v.source = "small-spm.gguf";
  v.model = "llama";
  const std::string space = "\xe2\x96\x81";  // U+2581
  v.tokens = {"<unk>", "<s>", "</s>", space, "a", "b", "ab", space + "ab", space + "a"};
  v.scores = {0, 0, 0, -1, -1, -1, -2, -1, -3};
  v.token_types = {2, 3, 3, 1, 1, 1, 1, 1, 1};
  if (with_bytes) {
    v.tokens.insert(v.tokens.end(), {"<0xC3>", "<0xA9>"});
    v.scores.insert(v.scores.end(), {0, 0});
    v.token_types.insert(v.token_types.end(), {6, 6});
  }
  return v;
}

TEST(GgufTokenizer, SentencePieceSmallCases) {
  const Tokenizer tok = Tokenizer::from_gguf(small_spm(true));
  EXPECT_EQ(tok.bos_id(), 1);  // llama.cpp's SentencePiece defaults: <s> 1, </s> 2, <unk> 0
  EXPECT_EQ(tok.eos_id(), 2);
  // The highest score first: "▁ab" (-1) beats "▁a" (-3) and "ab" (-2).
  EXPECT_EQ(tok.encode("ab", false), (std::vector<std::int32_t>{7}));
  EXPECT_EQ(tok.encode("ab", true), (std::vector<std::int32_t>{1, 7}));
  EXPECT_EQ(tok.encode("ab ab", false), (std::vector<std::int32_t>{7, 7}));
  EXPECT_EQ(tok.encode(" ab", false), (std::vector<std::int32_t>{3, 7}));
  // é is not a token: its bytes are.
  EXPECT_EQ(tok.encode("é", false), (std::vector<std::int32_t>{3, 9, 10}));
  // A special token's text: its id, and the text after it gets the space prefix again.
  EXPECT_EQ(tok.encode("ab<s>ab", false), (std::vector<std::int32_t>{7, 1, 7}));
  EXPECT_EQ(tok.encode("<s>", false, false).front(), 3);  // "▁" then "<", "s", ">" as bytes...
  EXPECT_EQ(tok.decode(std::vector<std::int32_t>{7, 7}), "ab ab");
  EXPECT_EQ(tok.decode(std::vector<std::int32_t>{3, 9, 10}), "é");
  EXPECT_EQ(tok.decode(std::vector<std::int32_t>{1, 7}), "<s> ab");
  EXPECT_EQ(tok.token_bytes(7, true), "ab");
  EXPECT_EQ(tok.token_bytes(7, false), " ab");
  GgufVocabulary no_prefix = small_spm(true);
  no_prefix.add_space_prefix = false;
  const Tokenizer bare = Tokenizer::from_gguf(no_prefix);
  EXPECT_EQ(bare.encode("ab", false), (std::vector<std::int32_t>{6}));
  EXPECT_EQ(bare.decode(std::vector<std::int32_t>{7}), " ab");
}

TEST(GgufTokenizer, SentencePieceWithoutByteTokensFallsBackToUnk) {
  const Tokenizer tok = Tokenizer::from_gguf(small_spm(false));
  EXPECT_EQ(tok.encode("é", false), (std::vector<std::int32_t>{3, 0, 0}));
  EXPECT_EQ(tok.encode("xa", false), (std::vector<std::int32_t>{3, 0, 4}));
}

// ---- parse_special on tokenizer.json files ----

TEST(GgufTokenizer, ParseSpecialOffReadsSpecialTokensAsText) {
  const Tokenizer hf =
      Tokenizer::from_model_dir(ferry::test::data_dir() / "tokenizers" / "spm-bpe-tiny");
  EXPECT_EQ(hf.encode("<s>", false), (std::vector<std::int32_t>{1}));
  const std::vector<std::int32_t> plain = hf.encode("<s>", false, false);
  EXPECT_EQ(std::find(plain.begin(), plain.end(), 1), plain.end());
  EXPECT_EQ(hf.decode(plain), "<s>");
}

// ---- errors ----

TEST(GgufTokenizer, RefusesWhatItCannotReproduce) {
  for (const char* model : {"bert", "t5", "rwkv", "no_vocab"}) {
    GgufVocabulary v = byte_vocabulary();
    v.model = model;
    expect_format_error([&] { (void)Tokenizer::from_gguf(v); }, {"hand.gguf", model});
  }
  GgufVocabulary v = byte_vocabulary();
  v.pre = "tekken";
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); }, {"hand.gguf", "tekken"});
  v.pre = "something-new";
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.pre", "something-new"});
}

TEST(GgufTokenizer, RefusesInconsistentData) {
  GgufVocabulary v = byte_vocabulary();
  v.token_types.assign(10, 1);
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.token_type", "10", "257"});
  v = byte_vocabulary();
  v.scores.assign(300, 0.0f);
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.scores", "300"});
  v = byte_vocabulary({}, {"Ġ t", "t zz"});
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.merges[1]", "zz"});
  v = byte_vocabulary({}, {"Ġ t", "t h"});  // "th" is not a token
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.merges[1]", "th"});
  v = byte_vocabulary({}, {});
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.merges"});
  v = byte_vocabulary();
  v.tokens.clear();
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.tokens"});
  v = byte_vocabulary();
  v.eos_id = 257;
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.eos_token_id", "257"});
  v = byte_vocabulary();
  v.bos_id = -1;
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); },
                      {"hand.gguf", "tokenizer.ggml.bos_token_id"});
  v = byte_vocabulary();
  v.tokens.erase(v.tokens.begin() + 'x');  // byte 0x78's token is gone
  v.tokens.emplace_back("x!");
  expect_format_error([&] { (void)Tokenizer::from_gguf(v); }, {"hand.gguf", "0x"});
  GgufVocabulary spm = small_spm(true);
  spm.add_eos = true;
  spm.tokens.resize(2);
  spm.scores.resize(2);
  spm.token_types.resize(2);
  expect_format_error([&] { (void)Tokenizer::from_gguf(spm); },
                      {"small-spm.gguf", "tokenizer.ggml.add_eos_token"});
}

TEST(GgufTokenizer, RefusesIdsOutsideTheVocabularyOnDecode) {
  EXPECT_THROW((void)fixture_tokenizer().decode(std::vector<std::int32_t>{1024}), InvalidArgument);
  EXPECT_THROW((void)fixture_tokenizer().token_bytes(-1), InvalidArgument);
}

}  // namespace
}  // namespace ferry::text
