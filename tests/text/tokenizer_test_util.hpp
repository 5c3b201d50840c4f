// Helpers for tests that build tokenizer.json files by hand: the 256 byte tokens, and the
// check that loading fails with a message naming what is wrong.
#pragma once

#include <gtest/gtest.h>

#include <initializer_list>
#include <nlohmann/json.hpp>
#include <string>

#include "runtime/core/error.hpp"
#include "runtime/text/detail/byte_alphabet.hpp"

namespace ferry::text::test {

// All 256 byte tokens (id = byte value), the minimum a byte-level vocabulary needs.
inline nlohmann::json byte_vocab() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) {
    vocab[detail::bytes_to_token_string(std::string(1, static_cast<char>(b)))] = b;
  }
  return vocab;
}

// Expects `load` to throw FormatError whose message contains every one of `parts`.
template <typename F>
void expect_format_error(F load, std::initializer_list<std::string> parts) {
  try {
    load();
    ADD_FAILURE() << "no FormatError";
  } catch (const FormatError& e) {
    for (const std::string& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "\"" << part << "\" is not in: " << e.what();
    }
  }
}

}  // namespace ferry::text::test
