// The CPU target's worker pool, as host code sees it (no CUDA keyword macros here).
#pragma once

namespace vae::hx {

// Workers of the CPU target, counting the calling thread. 1 = deterministic sequential
// execution of blocks in index order. Defaults to the hardware threads, or VAE_CPU_WORKERS.
int workers();
void set_workers(int n);
// Runs fn(i, ctx) for i in [0, n) on the pool (the caller takes part).
void parallel_for(int n, void (*fn)(int i, void* ctx), void* ctx);

}  // namespace vae::hx
