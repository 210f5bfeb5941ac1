// The CPU target's worker pool, as host code sees it (no CUDA keyword macros here).
#pragma once

namespace vae::hx {

// Workers of the CPU target, counting the calling thread. 1 = deterministic sequential
// execution of blocks in index order. Defaults to the hardware threads, or VAE_CPU_WORKERS.
int workers();
void set_workers(int n);
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

}  // namespace vae::hx
