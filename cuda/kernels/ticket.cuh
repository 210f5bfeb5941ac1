// The election of the two-stage reductions (see ReduceScratch in types.h): the block that
// arrives last at a ticket finishes the job, with every other block's part written.
#pragma once

#include "kernels/types.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// Called by one thread of a block once the block's part is written: true in the block that
// arrives last (of `blocks`), which also resets the ticket for the next launch.
__device__ __forceinline__ bool arrives_last(unsigned* ticket, unsigned blocks) {
  __threadfence();  // this block's writes are visible before its arrival is
  if (atomicAdd(ticket, 1u) != blocks - 1) return false;
  *ticket = 0;
  return true;
}

}  // namespace vae::VAE_NS
