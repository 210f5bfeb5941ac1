// The guard against divergence on the device: finiteness by the bits (immune to -ffast-math,
// which the CPU build of some kernels uses) and the record of the first non-finite value.
#pragma once

#include <cstring>

#include "kernels/types.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// The exponent field of v's bits: all ones (kNonFiniteExponent) for infinities and NaN.
constexpr uint32_t kNonFiniteExponent = 0x7f800000u;
__device__ __forceinline__ uint32_t exponent_bits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b & kNonFiniteExponent;
}
__device__ __forceinline__ bool finite_bits(float v) { return exponent_bits(v) != kNonFiniteExponent; }

// The first record of a run wins (the step counts from 1, so 0 means none); later ones, of this
// step or others, leave it as it is.
__device__ __forceinline__ void record_non_finite(NonFinite* watch, uint64_t step, NonFiniteTerm term,
                                                  long long index) {
  if (atomicCAS(&watch->step, 0ull, static_cast<unsigned long long>(step + 1)) == 0ull) {
    watch->term = static_cast<unsigned>(term);
    watch->index = index;
  }
}

}  // namespace vae::VAE_NS
