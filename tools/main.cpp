// ferry: run large language models on machines with less memory than the model.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <cxxabi.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <map>
#include <new>
#include <system_error>
#include <typeinfo>

#include "runtime/core/error.hpp"
#include "tools/commands.hpp"

#ifdef FERRY_USE_MIMALLOC
#include <mimalloc.h>
#endif

namespace {

// Set when an allocation has failed: if throwing its std::bad_alloc fails too (the runtime's
// emergency exception pool could not be set up when memory was that short), std::terminate
// still knows why it was called.
std::atomic<bool> g_allocation_failed{false};

void report_out_of_memory() noexcept {
  ferry::tools::eprint_text(
      "ferry: error: out of memory: an allocation failed (RAM, or a limit such as ulimit -v or "
      "a cgroup's, is exhausted); free memory, raise the limit, or lower --max-ram\n");
}

// An allocation that fails must reach main's handler as std::bad_alloc. mimalloc compiled as C
// cannot see a C++ new-handler and aborts without a word, so its error callback throws instead
// (it runs on the allocating thread, in the allocation's frame; mimalloc's frames have unwind
// tables). An exception nobody catches (a thread outside the pool) is reported, not a bare abort.
void install_failure_handlers() {
#ifdef FERRY_USE_MIMALLOC
  mi_register_error(
      [](int err, void*) {
        if (err != ENOMEM && err != EOVERFLOW) return;
        g_allocation_failed.store(true);
        // Throwing allocates the exception, which may fail too: that nested failure returns
        // null, and libstdc++ takes the exception from its emergency pool instead.
        thread_local bool throwing = false;
        if (throwing) return;
        throwing = true;
        struct Reset {
          ~Reset() { throwing = false; }
        } reset;
        throw std::bad_alloc();
      },
      nullptr);
#endif
  std::set_terminate([] {
    // An exception no handler caught (a thread outside the pool). Its type is read without
    // rethrowing it, which would allocate: under memory pressure that fails again.
    const std::type_info* type = abi::__cxa_current_exception_type();
    if ((type != nullptr && *type == typeid(std::bad_alloc)) || g_allocation_failed.load()) {
      report_out_of_memory();
      std::_Exit(1);
    }
    ferry::tools::eprint_text("ferry: error: an exception escaped (a bug; please report it): ");
    ferry::tools::eprint_text(type != nullptr ? type->name() : "no exception");
    ferry::tools::eprint_text("\n");
    std::abort();
  });
}

// Before main and before the other static initializers (CLI11's allocate), so that a failed
// allocation there is reported too.
__attribute__((constructor(101))) void install_failure_handlers_early() {
  install_failure_handlers();
}

}  // namespace

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
                                                  {"template", &ferry::tools::add_template},
                                                  {"serve", &ferry::tools::add_serve},
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
    for (auto& [sub, cmd] : commands) {
      if (!sub->parsed()) continue;
      const int rc = cmd();
      // stdout is buffered: a full disk or a closed pipe shows only when it is flushed, and
      // exit() would flush it and drop the error. What was printed is the command's answer, so
      // an answer that did not arrive is a failure.
      if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        const int err = errno;
        ferry::tools::eprint("ferry: error: writing the output to standard output failed: {}\n",
                             err != 0 ? std::strerror(err) : "write error");
        return 1;
      }
      return rc;
    }
    return 2;
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    report_out_of_memory();
    return 1;
  } catch (const std::exception& e) {
    // ferry::Error, std::system_error (IoError) and the rest: the message says it all, except
    // fmt's "cannot write to file", which is stdout's failure when stdout has one.
    std::fflush(stdout);
    if (std::ferror(stdout)) {
      ferry::tools::eprint("ferry: error: writing the output to standard output failed ({})\n",
                           e.what());
    } else {
      ferry::tools::eprint("ferry: error: {}\n", e.what());
    }
    return 1;
  }
}
