// Unicode normalization forms C and D of UTF-8 text, for the NFC/NFD normalizers of
// tokenizer.json files. Ill-formed bytes pass through unchanged, each as its own character.
#pragma once

#include <string>
#include <string_view>

namespace ferry::text::detail {

std::string to_nfc(std::string_view text);
std::string to_nfd(std::string_view text);

}  // namespace ferry::text::detail
