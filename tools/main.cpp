// ferry: run large language models on machines with less memory than the model.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <map>
#include <system_error>

#include "runtime/core/error.hpp"
#include "tools/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"ferry: run large language models on machines with less memory than the model",
               "ferry"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string(FERRY_VERSION));
  using Adder = ferry::tools::Command (*)(CLI::App&);
  const std::pair<const char*, Adder> adders[] = {{"run", &ferry::tools::add_run},
                                                  {"logits", &ferry::tools::add_logits},
                                                  {"perplexity", &ferry::tools::add_perplexity},
                                                  {"tokenize", &ferry::tools::add_tokenize},
                                                  {"inspect", &ferry::tools::add_inspect},
                                                  {"make-model", &ferry::tools::add_make_model},
                                                  {"info", &ferry::tools::add_info},
                                                  {"bench-io", &ferry::tools::add_bench_io},
                                                  {"profile", &ferry::tools::add_profile},
                                                  {"tune", &ferry::tools::add_tune},
                                                  {"convert", &ferry::tools::add_convert},
                                                  {"verify", &ferry::tools::add_verify},
                                                  {"plan", &ferry::tools::add_plan}};
  std::map<CLI::App*, ferry::tools::Command> commands;
  for (const auto& [name, add] : adders) {
    ferry::tools::Command cmd = add(app);
    commands[app.get_subcommand(name)] = std::move(cmd);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, cmd] : commands)
      if (sub->parsed()) return cmd();
    return 2;
  } catch (const std::system_error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ferry: error: {}\n", e.what());
    return 1;
  } catch (const ferry::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ferry: error: {}\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    fmt::print(stderr,
               "ferry: error: out of memory; the model does not fit in the RAM available\n");
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "ferry: error: {}\n", e.what());
    return 1;
  }
}
