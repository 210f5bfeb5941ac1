// The CPU target's worker pool, as host code sees it (no CUDA keyword macros here).
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace vae::hx {

// Workers of the CPU target, counting the calling thread. 1 = deterministic sequential
// execution of blocks in index order. Defaults to the hardware threads, or VAE_CPU_WORKERS.
int workers();
void set_workers(int n);
// VAE_CPU_WORKERS is set (not empty): that count holds for every process, MPI ranks included.
bool workers_set_by_environment();
// Runs fn(i, ctx) for i in [0, n) on the pool (the caller takes part).
void parallel_for(int n, void (*fn)(int i, void* ctx), void* ctx);

// What the CPU target has run since the process started: kernel launches and GEMM calls (a test
// pins the counts of one training step, so that a change that adds kernels shows up in CI).
struct WorkCounts {
  unsigned long long kernel_launches = 0, gemm_calls = 0;
};
WorkCounts work_counts();
void count_kernel_launch();
void count_gemm_call();

// While on, each kernel launch's and GEMM call's wall time, summed by name (a kernel's, or "gemm"
// and its shape): bench_step --kernels's share of the step per kernel. Off (the default) it costs
// a branch a launch. Launches come from one host thread at a time.
struct ProfileEntry {
  std::string name;
  double seconds = 0;
  long long calls = 0;
};
void set_profiling(bool on);
bool profiling();
void add_to_profile(const char* name, double seconds);
// Runs f, its wall time added to name's entry while profiling.
template <typename F>
void run_profiled(const char* name, F&& f);
// The entries since the last clear, the largest time first.
std::vector<ProfileEntry> profile();
void clear_profile();

template <typename F>
void run_profiled(const char* name, F&& f) {
  if (!profiling()) {
    f();
    return;
  }
  const auto t0 = std::chrono::steady_clock::now();
  f();
  add_to_profile(name, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
}

}  // namespace vae::hx
