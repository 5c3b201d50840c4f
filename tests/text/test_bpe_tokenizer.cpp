// Encoding and decoding with the real GPT-2 vocabulary: the reference ids from OpenAI's
// r50k_base, round trips, special tokens, and the merge loop against a transcription of
// encoder.py's bpe().
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/text/bpe_tokenizer.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"
#include "runtime/text/detail/utf8.hpp"
#include "tests/text/gpt2_fixture.hpp"

namespace ferry::text {
namespace {

using test::gpt2;
using test::reference_cases;

TEST(BpeTokenizer, MatchesR50kBaseOnEveryReferenceCase) {
  ASSERT_FALSE(reference_cases().empty());
  for (const auto& c : reference_cases()) {
    EXPECT_EQ(gpt2().encode(c.text), c.ids) << testing::PrintToString(c.text);
  }
}

TEST(BpeTokenizer, DecodeInvertsEncodeOnReferenceCases) {
  for (const auto& c : reference_cases()) {
    EXPECT_EQ(gpt2().decode(c.ids), c.text);
    EXPECT_EQ(gpt2().decode(gpt2().encode(c.text)), c.text);
  }
}

TEST(BpeTokenizer, KnowsGpt2sShape) {
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().eos_id(), 50256);
  EXPECT_EQ(gpt2().token_id("<|endoftext|>"), 50256);
  EXPECT_EQ(gpt2().token_id("\u0120the"), 262);  // "Ġthe"
  EXPECT_EQ(gpt2().token_id("!"), 0);
  EXPECT_FALSE(gpt2().token_id("\u0120definitely-not-a-token").has_value());
  EXPECT_FALSE(gpt2().token_id(" the").has_value());  // a raw space is not a vocab spelling
  EXPECT_EQ(gpt2().token_bytes(262), " the");
  EXPECT_EQ(gpt2().token_bytes(198), "\n");
  EXPECT_EQ(gpt2().token_bytes(50256), "<|endoftext|>");
  EXPECT_TRUE(gpt2().encode("").empty());
}

TEST(BpeTokenizer, EndOfTextInTextIsTheSpecialToken) {
  EXPECT_EQ(gpt2().encode("a<|endoftext|>b"), (std::vector<std::int32_t>{64, 50256, 65}));
  EXPECT_EQ(gpt2().encode("<|endoftext|><|endoftext|>"), (std::vector<std::int32_t>{50256, 50256}));
  // Text around the token is pre-tokenised on its own: the space stays with "Hello".
  EXPECT_EQ(gpt2().encode("Hello <|endoftext|>"), (std::vector<std::int32_t>{15496, 220, 50256}));
  // Anything short of the whole token is ordinary text.
  const auto partial = gpt2().encode("<|endoftext|");
  EXPECT_EQ(std::count(partial.begin(), partial.end(), 50256), 0);
  EXPECT_EQ(gpt2().decode(partial), "<|endoftext|");
}

TEST(BpeTokenizer, RoundTripsRandomBytes) {
  std::mt19937 rng(42);
  for (int round = 0; round < 300; ++round) {
    std::string bytes(rng() % 200, '\0');
    for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
    const auto ids = gpt2().encode(bytes);
    ASSERT_EQ(gpt2().decode(ids), bytes) << testing::PrintToString(bytes);
    for (const std::int32_t id : ids) ASSERT_TRUE(id >= 0 && id < gpt2().vocab_size());
  }
}

TEST(BpeTokenizer, RoundTripsRandomUnicode) {
  std::mt19937 rng(7);
  for (int round = 0; round < 300; ++round) {
    std::string text;
    const int n = static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) {
      // Half ASCII (so words and spaces form), half anywhere in Unicode but surrogates.
      char32_t cp = (rng() % 2 == 0) ? static_cast<char32_t>(rng() % 128)
                                     : static_cast<char32_t>(rng() % 0x110000);
      if (cp >= 0xD800 && cp <= 0xDFFF) cp = U'\uFFFD';
      detail::append_utf8(text, cp);
    }
    ASSERT_EQ(gpt2().decode(gpt2().encode(text)), text) << testing::PrintToString(text);
  }
}

// GPT-2's bpe() from encoder.py, transcribed: symbols are spellings in the byte alphabet;
// repeatedly merge every occurrence of the lowest-ranked adjacent pair, left to right.
class ReferenceBpe {
 public:
  ReferenceBpe() {
    const std::string merges =
        ferry::test::read_file(ferry::test::repo_data_dir() / "gpt2" / "merges.txt");
    std::size_t start = merges.find('\n') + 1;  // skip "#version"
    int rank = 0;
    while (start < merges.size()) {
      std::size_t end = merges.find('\n', start);
      if (end == std::string::npos) end = merges.size();
      const std::string line = merges.substr(start, end - start);
      start = end + 1;
      if (line.empty()) continue;
      const std::size_t space = line.find(' ');
      ranks_[{line.substr(0, space), line.substr(space + 1)}] = rank++;
    }
  }

  [[nodiscard]] std::vector<std::int32_t> encode_word(std::string_view bytes) const {
    const std::string spelled = detail::bytes_to_token_string(bytes);
    std::vector<std::string> word;
    for (std::size_t pos = 0; pos < spelled.size();) {
      const auto len = detail::decode_utf8(spelled, pos).len;
      word.push_back(spelled.substr(pos, len));
      pos += len;
    }
    while (word.size() > 1) {
      const std::pair<std::string, std::string>* best = nullptr;
      int best_rank = 0;
      std::vector<std::pair<std::string, std::string>> pairs;
      for (std::size_t i = 0; i + 1 < word.size(); ++i) pairs.emplace_back(word[i], word[i + 1]);
      for (const auto& p : pairs) {
        const auto it = ranks_.find(p);
        if (it != ranks_.end() && (best == nullptr || it->second < best_rank)) {
          best = &p;
          best_rank = it->second;
        }
      }
      if (best == nullptr) break;
      std::vector<std::string> merged;
      for (std::size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == best->first && word[i + 1] == best->second) {
          merged.push_back(word[i] + word[i + 1]);
          i += 2;
        } else {
          merged.push_back(word[i]);
          i += 1;
        }
      }
      word = std::move(merged);
    }
    std::vector<std::int32_t> ids;
    ids.reserve(word.size());
    for (const auto& token : word) ids.push_back(gpt2().token_id(token).value());
    return ids;
  }

 private:
  std::map<std::pair<std::string, std::string>, int> ranks_;
};

TEST(BpeTokenizer, MergesLikeEncoderPyOnRandomWords) {
  const ReferenceBpe reference;
  std::mt19937 rng(99);
  const std::string letters = "aaabcdeeilnorsstthh";
  for (int round = 0; round < 400; ++round) {
    // Lengths past 64 bytes take the uncached path; short ones the cached one, twice.
    std::string word = rng() % 2 == 0 ? " " : "";
    const int n = 1 + static_cast<int>(rng() % 120);
    for (int i = 0; i < n; ++i) word += letters[rng() % letters.size()];
    const auto expected = reference.encode_word(word);
    ASSERT_EQ(gpt2().encode(word), expected) << word;
    ASSERT_EQ(gpt2().encode(word), expected) << word << " (second time, from the cache)";
  }
  for (const std::size_t n : {2u, 3u, 7u, 64u, 65u, 257u}) {
    const std::string run(n, 'a');
    EXPECT_EQ(gpt2().encode(run), reference.encode_word(run)) << n << " a's";
  }
}

TEST(BpeTokenizer, LongPieceWithoutSpacesRoundTrips) {
  std::string text;
  for (int i = 0; i < 20000; ++i) text += "abcdefghij"[i % 10];
  const auto ids = gpt2().encode(text);
  EXPECT_LT(ids.size(), text.size() / 2);  // it really merged
  EXPECT_EQ(gpt2().decode(ids), text);
}

TEST(BpeTokenizer, ConcurrentEncodesAgree) {
  std::string text;
  for (const auto& c : reference_cases()) text += c.text + "\n";
  const auto expected = gpt2().encode(text);
  std::vector<std::thread> threads;
  std::vector<std::vector<std::int32_t>> results(4);
  for (auto& result : results) {
    threads.emplace_back([&text, &result] {
      for (int i = 0; i < 50; ++i) result = gpt2().encode(text);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) EXPECT_EQ(r, expected);
}

TEST(BpeTokenizer, OutOfRangeIdNamesTheIdAndTheVocabularySize) {
  for (const std::int32_t bad : {50257, -1, 1 << 30}) {
    const std::vector<std::int32_t> ids{15496, bad};
    try {
      (void)gpt2().decode(ids);
      FAIL() << "decode accepted id " << bad;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(bad)), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("50257"), std::string::npos) << e.what();
    }
    EXPECT_THROW((void)gpt2().token_bytes(bad), InvalidArgument);
  }
}

}  // namespace
}  // namespace ferry::text
