// The tokenizer's former name, kept for the callers that use it: GPT-2's byte-level BPE is
// one of the kinds text::Tokenizer reads.
#pragma once

#include "runtime/text/tokenizer.hpp"

namespace ferry::text {

using BpeTokenizer = Tokenizer;

}  // namespace ferry::text
