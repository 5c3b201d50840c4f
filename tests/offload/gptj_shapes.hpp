// The tensors a Hugging Face GPT-J checkpoint holds, derived from its config.json, so fixture
// tests compare what a reader found with what the model needs rather than with itself.
#pragma once

#include <filesystem>
#include <map>
#include <string>

#include "runtime/core/tensor.hpp"

namespace ferry::test {

std::map<std::string, Shape> gptj_expected_shapes(const std::filesystem::path& config_json);

}  // namespace ferry::test
