// The batch stage's element functions, shared by the batch kernels and the fused step kernel.
#pragma once

#include "kernels/types.h"
#include "kernels/philox.cuh"

namespace vae::VAE_NS {

__device__ __forceinline__ float pixel_value(uint8_t v) { return v * (1.f / 255.f); }
__device__ __forceinline__ float pixel_value(float v) { return v; }

// data is (N, D), perm is (N) or null for the identity, x is (B, D): rows offset .. offset + B − 1
// of the permuted order.
__device__ __forceinline__ long long source_row(const int* __restrict__ perm, long long offset, long long r) {
  return perm ? perm[offset + r] : offset + r;
}

// Item i of a dynamically binarized batch, x ~ Bernoulli(pixel): columns [4g, 4g + 4) of row r
// (i = r·groups + g), one Philox draw keyed by (seed, stream, step, 4·(row0·groups + i)) for the
// four, row0 being the slice's first row in the global batch (StepState).
template <typename T>
__device__ __forceinline__ void binarized_group(const T* __restrict__ data, const int* __restrict__ perm,
                                                long long offset, int dim, int groups, long long i,
                                                float* __restrict__ x, uint64_t seed, RandomStream rs, uint64_t step,
                                                long long row0) {
  const int r = static_cast<int>(i / groups);
  const int d0 = static_cast<int>(i % groups) * 4;
  const T* in = data + source_row(perm, offset, r) * dim;
  float* out = x + static_cast<long long>(r) * dim;
  curandStatePhilox4_32_10_t state;
  philox_init(seed, rs, step, static_cast<uint64_t>(row0 * groups + i) * 4, &state);
  const float4 u = curand_uniform4(&state);  // in (0, 1]: pixel 0 never fires, 1 always
  const float uq[4] = {u.x, u.y, u.z, u.w};
  for (int q = 0; q < 4 && d0 + q < dim; ++q) out[d0 + q] = uq[q] <= pixel_value(in[d0 + q]) ? 1.f : 0.f;
}

}  // namespace vae::VAE_NS
