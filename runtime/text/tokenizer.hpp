// Tokenizer: the tokenizers ferry runs, each exactly as its reference tokenizes: byte-level BPE
// (GPT-2, GPT-J, Llama 3, Qwen) and SentencePiece-style BPE with byte fallback (Llama 2,
// Mistral) read from tokenizer.json + tokenizer_config.json, or GPT-2's vocab.json + merges.txt,
// as Hugging Face does; and a GGUF file's vocabulary as llama.cpp does.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/text/gguf_vocab.hpp"

namespace ferry::text {

class Tokenizer {
 public:
  // Throws ferry::FormatError naming the file, the field and what is wrong with it.
  static Tokenizer from_files(const std::filesystem::path& vocab_json,
                              const std::filesystem::path& merges_txt);
  // tokenizer.json, with the tokenizer_config.json beside it when there is one.
  static Tokenizer from_tokenizer_json(const std::filesystem::path& tokenizer_json);
  // GPT-2's files' contents already in memory (for the copy embedded in the ferry binary).
  static Tokenizer from_strings(std::string_view vocab_json, std::string_view merges_txt);
  // tokenizer.json's and tokenizer_config.json's contents (the latter may be empty); `source`
  // names them in messages.
  static Tokenizer from_json_strings(std::string_view tokenizer_json,
                                     std::string_view tokenizer_config_json,
                                     std::string_view source);
  // Looks in a model directory for tokenizer.json (+ tokenizer_config.json), else vocab.json +
  // merges.txt.
  static Tokenizer from_model_dir(const std::filesystem::path& dir);
  // A GGUF file's tokenizer.ggml.* metadata ("gpt2" byte-level BPE with its tokenizer.ggml.pre,
  // or "llama" SentencePiece), tokenizing, decoding and adding BOS/EOS exactly as llama.cpp
  // (b4747) does: encode is llama_tokenize, decode llama_detokenize (special tokens kept as
  // text), token_bytes llama_token_to_piece. Throws FormatError naming vocabulary.source and
  // the key that is wrong, or the model / pre-tokenizer ferry does not know.
  static Tokenizer from_gguf(const GgufVocabulary& vocabulary);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Text → ids. Added tokens ("<|im_start|>", "<s>", GPT-2's "<|endoftext|>") in the text
  // become their ids. With add_special, the ids the post-processor puts around the text
  // (Llama's BOS, for one; nothing for GPT-2 or Qwen).
  std::vector<int32_t> encode(std::string_view text, bool add_special = false) const;
  // The same; without parse_special the text of special tokens ("<|im_start|>", "<s>",
  // GGUF's CONTROL tokens) is tokenized as ordinary text, while non-special added tokens
  // (GGUF's USER_DEFINED) are still cut out. encode(text, a) is encode(text, a, true).
  std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const;
  // Ids → text through the file's decoder; added tokens are kept as their text and spaces are
  // not cleaned up. Byte-level tokens give raw bytes, which may end mid-UTF-8 character (see
  // StreamDecoder). Throws InvalidArgument for an id the vocabulary does not have.
  std::string decode(std::span<const int32_t> ids) const;
  // The bytes one token adds to a text: in the middle of it, or at its very start, where
  // SentencePiece decoders drop the leading space.
  std::string token_bytes(int32_t id, bool at_start_of_text = false) const;

  int32_t vocab_size() const;  // number of ids, added tokens included
  std::optional<int32_t> token_id(std::string_view token) const;  // by vocabulary spelling
  // From tokenizer_config.json's bos_token / eos_token; without that file, GPT-2's
  // <|endoftext|> is the EOS when the vocabulary has it.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;
  // The ids that end generation, ascending: for a GGUF vocabulary llama.cpp's EOG set (EOS,
  // EOT, EOM, and tokens such as <|eot_id|>, <|im_end|>, <|endoftext|> found by their text);
  // otherwise the EOS, if any.
  std::vector<int32_t> eog_ids() const;

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Turns a stream of ids into text that is safe to print as it arrives: bytes of a UTF-8
// character split across tokens are held back until the character is complete. The first
// token is decoded as the start of a text (SentencePiece's leading space dropped) unless the
// stream continues a text already printed.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool at_start_of_text = true);
  std::string push(int32_t id);  // the text that became complete with this token
  std::string flush();           // what is left; incomplete sequences become U+FFFD
 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
  bool at_start_;
};

}  // namespace ferry::text
