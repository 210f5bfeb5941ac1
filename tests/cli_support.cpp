#include "cli_support.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "runtime/check.h"
#include "train_command.h"  // the exit statuses

extern char** environ;

namespace vae {

int Child::wait() const {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// argv[0] is the program; stdout and stderr go to log.
Child spawn(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  Child c;
  const int rc = posix_spawn(&c.pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) throw Error("posix_spawn " + argv[0] + " failed");
  return c;
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

int run(const std::vector<std::string>& argv, const std::string& log) { return spawn(argv, log).wait(); }

std::vector<std::string> vae_train(const std::string& flags, Target target) {
  std::vector<std::string> a = {VAE_CLI_PATH, "train", "--device", target_name(target), "--quiet"};
  for (auto& w : words(flags)) a.push_back(w);
  return a;
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("vae_cluster_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

size_t metrics_lines(const fs::path& run) {
  const std::string m = slurp(run / "metrics.jsonl");
  return static_cast<size_t>(std::count(m.begin(), m.end(), '\n'));
}

// Parameters and optimizer state bit for bit, and the step.
void expect_identical(const Checkpoint& a, const Checkpoint& b) {
  EXPECT_EQ(a.step, b.step);
  EXPECT_EQ(a.epoch, b.epoch);
  ASSERT_EQ(a.params.size(), b.params.size());
  EXPECT_EQ(0, std::memcmp(a.params.data(), b.params.data(), a.params.size() * sizeof(float))) << "parameters differ";
  ASSERT_EQ(a.optimizer_state.size(), b.optimizer_state.size());
  for (size_t s = 0; s < a.optimizer_state.size(); ++s) {
    EXPECT_EQ(0, std::memcmp(a.optimizer_state[s].data(), b.optimizer_state[s].data(),
                             a.optimizer_state[s].size() * sizeof(float)))
        << "optimizer state " << s << " differs";
  }
}

void wait_for(const fs::path& file, const Child& c) {
  for (int i = 0; i < 3000 && !fs::exists(file); ++i) {
    int status = 0;
    if (::waitpid(c.pid, &status, WNOHANG) == c.pid) FAIL() << "the run ended before " << file;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

std::vector<std::string> mpirun(int ranks, const std::vector<std::string>& argv) {
  // As root Open MPI wants --allow-run-as-root; 3 ranks on 2 cores want --oversubscribe.
  std::vector<std::string> a = {VAE_MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-np", std::to_string(ranks)};
  a.insert(a.end(), argv.begin(), argv.end());
  return a;
}

std::vector<std::string> vae_cli(const std::string& command, const std::string& flags) {
  std::vector<std::string> a = {VAE_CLI_PATH, command};
  for (auto& w : words(flags)) a.push_back(w);
  return a;
}

int signal_after(const std::vector<std::string>& argv, const fs::path& ready, int sig, std::mt19937& rng, int max_ms,
                 const std::string& log) {
  const Child c = spawn(argv, log);
  wait_for(ready, c);
  std::this_thread::sleep_for(std::chrono::milliseconds(rng() % max_ms));
  ::kill(c.pid, sig);
  return c.wait();
}

int stop_status_of(int sig) { return sig == SIGINT ? kExitInterrupted : kExitPreempted; }

}  // namespace vae
