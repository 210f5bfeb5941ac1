// Lanes sharing a row: blockDim.x lanes take a row's columns (VAE_LANE_LOOP), then add up
// their partial sums with shuffles. blockDim.x is 1 (the CPU's shape: no shuffles) or a power
// of 2 up to 32.
#pragma once

#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// Lanes whose row is past the end must still call this, so that shuffle masks stay full.
__device__ __forceinline__ float lanes_sum(float v) {
  for (int offset = blockDim.x / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset, blockDim.x);
  return v;
}

}  // namespace vae::VAE_NS
