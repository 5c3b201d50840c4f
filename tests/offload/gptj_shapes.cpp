#include "tests/offload/gptj_shapes.hpp"

#include <nlohmann/json.hpp>

#include "tests/support/test_support.hpp"

namespace ferry::test {

std::map<std::string, Shape> gptj_expected_shapes(const std::filesystem::path& config_json) {
  const auto cfg = nlohmann::json::parse(read_file(config_json));
  const int64_t vocab = cfg.at("vocab_size").get<int64_t>();
  const int64_t embd = cfg.at("n_embd").get<int64_t>();
  const int64_t layers = cfg.at("n_layer").get<int64_t>();
  const int64_t inner = cfg.at("n_inner").is_null() ? 4 * embd : cfg.at("n_inner").get<int64_t>();
  std::map<std::string, Shape> m;
  m["transformer.wte.weight"] = Shape{vocab, embd};
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "transformer.h." + std::to_string(l) + ".";
    m[p + "ln_1.weight"] = Shape{embd};
    m[p + "ln_1.bias"] = Shape{embd};
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      m[p + "attn." + proj + ".weight"] = Shape{embd, embd};
    }
    m[p + "mlp.fc_in.weight"] = Shape{inner, embd};
    m[p + "mlp.fc_in.bias"] = Shape{inner};
    m[p + "mlp.fc_out.weight"] = Shape{embd, inner};
    m[p + "mlp.fc_out.bias"] = Shape{embd};
  }
  m["transformer.ln_f.weight"] = Shape{embd};
  m["transformer.ln_f.bias"] = Shape{embd};
  m["lm_head.weight"] = Shape{vocab, embd};
  m["lm_head.bias"] = Shape{vocab};
  return m;
}

}  // namespace ferry::test
