// Counter-based normals and uniforms: a Philox4x32-10 state is derived from (seed, stream,
// step, index) on the spot, so no generator state is stored or checkpointed.
#pragma once

#include "kernels/types.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// `index` counts 32-bit outputs; a caller that needs k numbers per item passes item * k
// (rounded up to a multiple of 4, as curand's 4-wide draws consume whole counters).
__device__ __forceinline__ void philox_init(uint64_t seed, RandomStream stream, uint64_t step, uint64_t index,
                                            curandStatePhilox4_32_10_t* state) {
  curand_init(seed, (step << 3) | static_cast<uint64_t>(stream), index, state);
}

__host__ __device__ __forceinline__ int round_up4(int n) { return (n + 3) & ~3; }

}  // namespace vae::VAE_NS
