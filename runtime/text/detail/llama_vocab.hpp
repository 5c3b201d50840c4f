// A GGUF file's tokenizer as llama.cpp runs it (llama-vocab.cpp and unicode.cpp of build b4747):
// byte-level BPE ("gpt2") with the pre-tokenizer its tokenizer.ggml.pre names, and
// SentencePiece ("llama") with score-ordered merges and <0xNN> byte fallback; special tokens cut
// out of the text longest first; pieces and detokenization with llama.cpp's space rules.
// ferry's own tokenizer.json pipeline follows Hugging Face instead; where the two disagree
// (BOS handling, special-token matching order, space clean-up on decode) this class follows
// llama.cpp, because a GGUF model was run and evaluated through it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/text/detail/bpe_model.hpp"
#include "runtime/text/gguf_vocab.hpp"

namespace ferry::text::detail {

class LlamaPreTokenizer;

class LlamaVocab {
 public:
  // Throws FormatError naming the file and the tokenizer.ggml.* key that is wrong.
  explicit LlamaVocab(const GgufVocabulary& vocabulary);
  ~LlamaVocab();
  LlamaVocab(const LlamaVocab&) = delete;
  LlamaVocab& operator=(const LlamaVocab&) = delete;

  // llama_tokenize(text, add_special, parse_special).
  std::vector<std::int32_t> tokenize(std::string_view text, bool add_special,
                                     bool parse_special) const;
  // llama_token_to_piece(id, lstrip = strip_leading_space, special = true).
  std::string piece(std::int32_t id, bool strip_leading_space) const;
  // llama_detokenize(ids, remove_special = false, unparse_special = true).
  std::string detokenize(std::span<const std::int32_t> ids) const;

  std::int32_t size() const { return static_cast<std::int32_t>(texts_.size()); }
  std::optional<std::int32_t> find(std::string_view text) const;
  bool add_space_prefix() const { return add_space_prefix_; }
  std::optional<std::int32_t> bos() const { return bos_; }
  std::optional<std::int32_t> eos() const { return eos_; }
  // The ids that end generation (llama_vocab_is_eog): EOS, EOT, EOM and the tokens llama.cpp
  // recognises by their text (<|eot_id|>, <|im_end|>, <|endoftext|>, ...), ascending.
  const std::vector<std::int32_t>& eog_ids() const { return eog_; }

  // llama.cpp's token attributes (llama_token_attr).
  enum Attr : std::uint32_t {
    kUndefined = 0,
    kUnknown = 1u << 0,
    kUnused = 1u << 1,
    kNormal = 1u << 2,
    kControl = 1u << 3,
    kUserDefined = 1u << 4,
    kByte = 1u << 5,
    kLstrip = 1u << 7,
    kRstrip = 1u << 8,
  };

 private:
  enum class Type : std::uint8_t { kBpe, kSpm };
  struct Fragment {
    std::int32_t id;  // -1: text
    std::size_t offset;
    std::size_t length;
  };

  std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
  void tokenize_bpe(std::string_view text, std::vector<std::int32_t>& out) const;
  void tokenize_spm(const std::string& text, std::vector<std::int32_t>& out) const;
  std::int32_t spm_byte_token(unsigned char byte) const;
  void check_id(std::int32_t id) const;

  std::string source_;
  Type type_ = Type::kBpe;
  std::vector<std::string> texts_;
  std::vector<std::uint32_t> attrs_;
  std::vector<float> scores_;
  StringMap<std::int32_t> token_to_id_;  // the last of equal texts, as llama.cpp's map keeps
  std::vector<std::string> pieces_;      // token_to_piece(id, special = true), unstripped
  std::vector<std::int32_t> special_;    // CONTROL, USER_DEFINED, UNKNOWN; longest text first
  BpeModel bpe_;
  std::unique_ptr<const LlamaPreTokenizer> pre_;
  bool add_bos_ = false;
  bool add_eos_ = false;
  bool add_space_prefix_ = false;
  bool clean_spaces_ = false;
  std::optional<std::int32_t> bos_, eos_, eot_, eom_, unk_;
  std::vector<std::int32_t> eog_;
};

}  // namespace ferry::text::detail
