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

// Block of a row kernel: blockDim.x lanes per row (the launch policy's lanes, fewer for rows of
// fewer items: the smallest power of 2 that covers them), blockDim.y rows, whole warps when
// lanes shuffle, up to 128 threads,
// and rows spread over at least max_blocks blocks when there are enough (so that the GPU's
// SMs all get rows, and on the CPU every worker). The grid is ceil(rows / blockDim.y).
inline dim3 row_block(long long rows, int items_per_row) {
  const LaunchPolicy& p = launch_policy();
  int lanes = 1;
  while (lanes < p.row_lanes && lanes < items_per_row) lanes *= 2;
  const int most = lanes >= 128 ? 1 : 128 / lanes;
  // Whole warps where lanes shuffle: a shuffle's full mask must not name threads the block lacks.
  const long long least = lanes > 1 && lanes < 32 ? 32 / lanes : 1;
  long long share = ceil_div(rows, p.max_blocks);
  share = share < least ? least : share;
  return dim3(lanes, static_cast<unsigned>(share < most ? share : most));
}

}  // namespace vae::VAE_NS
