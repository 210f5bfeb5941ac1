// The `vae` command line: train, sweep, eval, encode, decode, manifold, sample, reconstruct. Each
// command is an object of its own (commands.h); main parses and maps errors to exit statuses:
// 0 done, 1 error, 2 bad flags, 3 training diverged (and train's 75 and 130, train_command.h).
#include <cstdio>
#include <string>

#include "blas_core.h"
#include "commands.h"
#include "runtime/check.h"
#include "train_command.h"

int main(int argc, char** argv) {
  using namespace vae;
  // OpenBLAS chose its kernels when it loaded; if it fell back to slow generic ones on a CPU it
  // does not recognise, start again with the kernel set the CPU's features allow.
  reexec_with_better_openblas_core(argv);
  CLI::App app{"vae: a CUDA-accelerated trainer for variational autoencoders (Kingma & Welling, 2013)"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "vae 0.1.0");

  std::vector<std::unique_ptr<Command>> commands;
  commands.push_back(make_train_command());
  commands.push_back(make_sweep_command());
  commands.push_back(make_eval_command());
  commands.push_back(make_report_command());
  for (auto* group : {make_code_commands, make_image_commands})
    for (auto& c : group()) commands.push_back(std::move(c));
  for (auto& c : commands) c->add(app);

  // A first word that names no command: say so, with the commands (CLI11 says "A subcommand is required").
  if (argc > 1 && argv[1][0] != '-') {
    std::string names;
    bool known = false;
    for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; })) {
      names += (names.empty() ? "" : ", ") + sub->get_name();
      known = known || sub->check_name(argv[1]);
    }
    if (!known) {
      std::fprintf(stderr, "vae: no command '%s' (%s)\n", argv[1], names.c_str());
      return 2;
    }
  }

  Command* chosen = nullptr;
  try {
    app.parse(argc, argv);
    for (auto& c : commands)
      if (c->parsed()) chosen = c.get();
    if (chosen) {
      chosen->check_no_empty_values();
      chosen->check();
    }
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "vae: %s (see --help)\n", e.what());
    return 2;
  }
  if (!chosen) return 0;

  try {
    return chosen->run();
  } catch (const CLI::ParseError& e) {  // a flag's value found wrong after parsing
    std::fprintf(stderr, "vae: %s (see --help)\n", e.what());
    return 2;
  } catch (const Diverged& e) {
    std::fprintf(stderr, "vae: %s\n", e.what());
    return kExitDiverged;
  } catch (const OutOfMemory& e) {  // before a buffer was touched: nothing was killed, nothing written half
    const std::string flags = chosen->memory_flags();
    std::fprintf(stderr, "vae: %s: the work does not fit the device's memory%s\n", e.what(),
                 flags.empty() ? "" : (" (less with a smaller " + flags + ")").c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae: %s\n", e.what());
    return 1;
  }
}
