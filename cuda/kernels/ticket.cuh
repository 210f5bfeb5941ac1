// How blocks of a launch meet without a grid barrier: the election of the two-stage reductions
// (see ReduceScratch in types.h), where the block that arrives last at a ticket finishes the job
// with every other block's part written; and counters of finished work that blocks wait on.
#pragma once

#include "kernels/types.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// Called by one thread of a block once the block's part is written (after a __syncthreads): true
// in the block that arrives last (of `blocks`), which also resets the ticket for the next launch.
// What the other blocks wrote before their arrivals is visible to the last block's threads after a
// __syncthreads: the fence that makes the ticket's read an acquire comes right after it, in the
// thread that read it (PTX's acquire pattern; fences in the other threads after the __syncthreads
// would not follow that read).
__device__ __forceinline__ bool arrives_last(unsigned* ticket, unsigned blocks) {
  __threadfence();  // this block's writes are visible before its arrival is
  if (atomicAdd(ticket, 1u) != blocks - 1) return false;
  __threadfence();         // the others' writes, visible before their arrivals, are read after ours
  atomicExch(ticket, 0u);  // atomic as the others' arrivals (a plain store would race with them)
  return true;
}

// Counters that say how much of a phase is done, for blocks of a cooperative launch that wait for
// part of it instead of a grid barrier (the fused step's row flags). Called by one thread of a
// block once every thread's writes are issued (after __syncthreads): they are visible before the
// count is, as at a grid barrier's arrival.
__device__ __forceinline__ void count_done(unsigned* counter) {
  __threadfence();
  atomicAdd(counter, 1u);
}
// By one thread (wait_done): returns once *counter has reached `count`; what the counted blocks
// wrote is then visible to this block's threads after a __syncthreads, as after a grid barrier.
// Every block of the launch is resident, so the counted ones run. wait_reached is its spin without
// the fence: a thread waiting at several counters (an update tile of batch 1024 waits at 32 row
// blocks) fences once, after the last. A wait that never ends is a bug (a count never made): the
// host layer aborts naming the block and the counter; the GPU traps after kCounterWaitLimitNs, so
// that the launch fails (an error at its stream's next check) instead of hanging the process, and
// a benchmark's or a test's later runs go on.
constexpr unsigned long long kCounterWaitLimitNs = 5'000'000'000ull;
__device__ __forceinline__ void wait_reached(const unsigned* counter, unsigned count) {
#if VAE_HOST_EXEC
  ::vae::hx::wait_count(counter, count);  // the counted blocks are other workers' threads
#else
  if (*static_cast<const volatile unsigned*>(counter) < count) {
    const unsigned long long start = global_timer_ns();
    while (*static_cast<const volatile unsigned*>(counter) < count) {
      if (global_timer_ns() - start > kCounterWaitLimitNs) __trap();
    }
  }
#endif
}
__device__ __forceinline__ void wait_done(const unsigned* counter, unsigned count) {
  wait_reached(counter, count);
  __threadfence();
}

}  // namespace vae::VAE_NS
