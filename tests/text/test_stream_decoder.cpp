// StreamDecoder: text is released only when its UTF-8 characters are complete.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "runtime/core/error.hpp"
#include "runtime/text/bpe_tokenizer.hpp"
#include "runtime/text/detail/utf8.hpp"
#include "tests/text/gpt2_fixture.hpp"

namespace ferry::text {
namespace {

using test::gpt2;

bool is_valid_utf8(std::string_view s) {
  for (std::size_t pos = 0; pos < s.size();) {
    const detail::Utf8Char ch = detail::decode_utf8(s, pos);
    if (ch.status != detail::Utf8Status::kOk) return false;
    pos += ch.len;
  }
  return true;
}

TEST(StreamDecoder, HoldsBackAnEmojiSplitAcrossTokens) {
  const std::string robot = "\xF0\x9F\xA4\x96";  // U+1F916, four bytes
  const auto ids = gpt2().encode(robot);
  ASSERT_GT(ids.size(), 1u) << "the test needs an emoji that GPT-2 splits";
  StreamDecoder stream(gpt2());
  for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
    EXPECT_EQ(stream.push(ids[i]), "") << "token " << i << " completes nothing";
  }
  EXPECT_EQ(stream.push(ids.back()), robot);
  EXPECT_EQ(stream.flush(), "");
}

TEST(StreamDecoder, StreamsReferenceTextsUnchanged) {
  for (const auto& c : test::reference_cases()) {
    StreamDecoder stream(gpt2());
    std::string out;
    for (const std::int32_t id : c.ids) {
      const std::string piece = stream.push(id);
      EXPECT_TRUE(is_valid_utf8(piece));
      out += piece;
    }
    out += stream.flush();
    EXPECT_EQ(out, c.text);
  }
}

TEST(StreamDecoder, FlushReplacesAnUnfinishedCharacter) {
  const auto ids = gpt2().encode("ok \xF0\x9F\xA4\x96");
  ASSERT_GE(ids.size(), 3u);
  StreamDecoder stream(gpt2());
  std::string out;
  for (std::size_t i = 0; i + 1 < ids.size(); ++i) out += stream.push(ids[i]);
  EXPECT_EQ(out, "ok ");
  EXPECT_EQ(stream.flush(), "\xEF\xBF\xBD");  // one U+FFFD for the cut-off sequence
  EXPECT_EQ(stream.flush(), "");
}

TEST(StreamDecoder, IllFormedBytesBecomeReplacementCharactersAtOnce) {
  const auto ids = gpt2().encode(
      "a\xFF"
      "b");
  StreamDecoder stream(gpt2());
  std::string out;
  for (const std::int32_t id : ids) out += stream.push(id);
  EXPECT_EQ(out,
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(stream.flush(), "");
}

TEST(StreamDecoder, BadIdThrowsAndKeepsWhatWasPending) {
  const auto ids = gpt2().encode("\xF0\x9F\xA4\x96");
  StreamDecoder stream(gpt2());
  EXPECT_EQ(stream.push(ids[0]), "");
  EXPECT_THROW((void)stream.push(gpt2().vocab_size()), InvalidArgument);
  std::string out;
  for (std::size_t i = 1; i < ids.size(); ++i) out += stream.push(ids[i]);
  EXPECT_EQ(out, "\xF0\x9F\xA4\x96");
}

}  // namespace
}  // namespace ferry::text
