// BpeTokenizer: GPT-2's byte-level BPE (GPT-J uses it unchanged), loaded from vocab.json +
// merges.txt or a Hugging Face tokenizer.json, with <|endoftext|> as a special token.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::text {

class BpeTokenizer {
 public:
  // Throws ferry::FormatError naming the file and what is wrong with it.
  static BpeTokenizer from_files(const std::filesystem::path& vocab_json,
                                 const std::filesystem::path& merges_txt);
  static BpeTokenizer from_tokenizer_json(const std::filesystem::path& tokenizer_json);
  // From the files' contents already in memory (for the copy embedded in the ferry binary).
  static BpeTokenizer from_strings(std::string_view vocab_json, std::string_view merges_txt);
  // Looks in a model directory for tokenizer.json, else vocab.json + merges.txt.
  static BpeTokenizer from_model_dir(const std::filesystem::path& dir);

  BpeTokenizer(BpeTokenizer&&) noexcept;
  BpeTokenizer& operator=(BpeTokenizer&&) noexcept;
  ~BpeTokenizer();

  // Text → ids. "<|endoftext|>" in the text becomes the special id (50256 for GPT-2).
  std::vector<int32_t> encode(std::string_view text) const;
  // Ids → bytes (which may end mid-UTF-8 character; see StreamDecoder). Throws
  // InvalidArgument for an id the vocabulary does not have.
  std::string decode(std::span<const int32_t> ids) const;
  // The raw bytes of one token.
  std::string token_bytes(int32_t id) const;

  int32_t vocab_size() const;  // number of ids, special tokens included
  std::optional<int32_t> token_id(std::string_view token) const;  // by vocabulary string
  std::optional<int32_t> eos_id() const;                          // <|endoftext|>

  struct Impl;

 private:
  explicit BpeTokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of ids into text that is safe to print as it arrives: bytes of a UTF-8
// character split across tokens are held back until the character is complete.
class StreamDecoder {
 public:
  explicit StreamDecoder(const BpeTokenizer& tokenizer);
  std::string push(int32_t id);  // the text that became complete with this token
  std::string flush();           // what is left; incomplete sequences become U+FFFD
 private:
  const BpeTokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace ferry::text
