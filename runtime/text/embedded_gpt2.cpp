#include "runtime/text/embedded_gpt2.hpp"

#include <cstddef>

// The files are pulled in by the assembler's .incbin, which is instant and costs the compiler
// nothing, unlike a 1.5 MB generated array initialiser. CMake passes the absolute paths and
// lists the files as OBJECT_DEPENDS, so editing them rebuilds this object.
#if !defined(FERRY_GPT2_VOCAB_JSON) || !defined(FERRY_GPT2_MERGES_TXT)
#error "FERRY_GPT2_VOCAB_JSON and FERRY_GPT2_MERGES_TXT must name the GPT-2 tokenizer files"
#endif
#if !defined(__ELF__)
#error "embedded_gpt2.cpp uses ELF section directives; port the .incbin block to this platform"
#endif

// Symbols are hidden so the references below resolve PC-relative inside the final binary.
// clang-format off
#define FERRY_INCBIN(name, path)                                 \
  asm(".pushsection .rodata.ferry_" #name ", \"a\", @progbits\n" \
      ".global ferry_" #name "_begin\n"                           \
      ".hidden ferry_" #name "_begin\n"                           \
      ".global ferry_" #name "_end\n"                             \
      ".hidden ferry_" #name "_end\n"                             \
      "ferry_" #name "_begin:\n"                                  \
      ".incbin \"" path "\"\n"                                    \
      "ferry_" #name "_end:\n"                                    \
      ".popsection\n")
// clang-format on

FERRY_INCBIN(gpt2_vocab_json, FERRY_GPT2_VOCAB_JSON);
FERRY_INCBIN(gpt2_merges_txt, FERRY_GPT2_MERGES_TXT);

extern "C" {
__attribute__((visibility("hidden"))) extern const char ferry_gpt2_vocab_json_begin[];
__attribute__((visibility("hidden"))) extern const char ferry_gpt2_vocab_json_end[];
__attribute__((visibility("hidden"))) extern const char ferry_gpt2_merges_txt_begin[];
__attribute__((visibility("hidden"))) extern const char ferry_gpt2_merges_txt_end[];
}

namespace ferry::text {

std::string_view embedded_gpt2_vocab_json() {
  return {ferry_gpt2_vocab_json_begin,
          static_cast<std::size_t>(ferry_gpt2_vocab_json_end - ferry_gpt2_vocab_json_begin)};
}

std::string_view embedded_gpt2_merges_txt() {
  return {ferry_gpt2_merges_txt_begin,
          static_cast<std::size_t>(ferry_gpt2_merges_txt_end - ferry_gpt2_merges_txt_begin)};
}

}  // namespace ferry::text
