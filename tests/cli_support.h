// Running the vae CLI from tests: a child process with its log, its run folders, and the
// checks on what it wrote (test_cluster.cpp, test_sweep.cpp).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "checkpoint.h"
#include "runtime/target.h"

namespace vae {

namespace fs = std::filesystem;

struct Child {
  pid_t pid = -1;
  int wait() const;  // its exit status, or 128 + the signal that ended it
};

// argv[0] is the program; stdout and stderr go to log.
Child spawn(const std::vector<std::string>& argv, const std::string& log);
int run(const std::vector<std::string>& argv, const std::string& log);
// Waits until `file` exists (the run writes it), failing the test if the child ends first.
void wait_for(const fs::path& file, const Child& c);
// Starts argv, waits for `ready` to exist, sends `sig` after a random 0 .. max_ms − 1 ms and
// returns the exit status; and the status a stop by `sig` should give (75, or 130 for SIGINT).
int signal_after(const std::vector<std::string>& argv, const fs::path& ready, int sig, std::mt19937& rng, int max_ms,
                 const std::string& log);
int stop_status_of(int sig);
std::string slurp(const fs::path& p);
std::vector<std::string> words(const std::string& s);
// `vae train --device T --quiet FLAGS...`
std::vector<std::string> vae_train(const std::string& flags, Target target = Target::cpu);
// `vae COMMAND FLAGS...` (split at spaces)
std::vector<std::string> vae_cli(const std::string& command, const std::string& flags);
// A new empty folder under the temporary directory, named for the test and the process.
fs::path fresh_dir(const std::string& name);
size_t metrics_lines(const fs::path& run);
// Parameters and optimizer state bit for bit, and the step.
void expect_identical(const Checkpoint& a, const Checkpoint& b);
// mpirun -np RANKS ARGV... (as root, oversubscribed)
std::vector<std::string> mpirun(int ranks, const std::vector<std::string>& argv);

#define SKIP_WITHOUT_MPI() \
  if (!VAE_WITH_MPI)       \
  GTEST_SKIP() << "this build has no MPI (VAE_WITH_MPI=OFF): the sanitizer build, or no libopenmpi-dev"

}  // namespace vae
