// ferry template: a conversation rendered with the model's own chat template.
#include "runtime/core/error.hpp"
#include "tools/commands.hpp"

namespace ferry::tools {

Command add_template(CLI::App& app) {
  app.add_subcommand("template", "print a conversation rendered with the model's chat template");
  return [] {
    FERRY_EXPECT(false, "ferry template is not built yet");
    return 1;
  };
}

}  // namespace ferry::tools
