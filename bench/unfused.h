// The unfused compositions the fused kernels replace, for bench_kernels only: the same work as
// one product kernel split into the separate launches an unfused framework would issue (cuRAND
// for ε, then one elementwise kernel per stage, reductions in their own kernels). Built for both
// targets like the product's kernels; every pointer is the target's memory. Called as the
// product's kernels are: VAE_CALL(target, unfused::latent_forward, ...).
#pragma once

#include <cuda_runtime.h>
#include <curand.h>

#include <cstdint>

#include "ops.h"  // VAE_CALL and the kernels' argument types

namespace vae {
// A cuRAND Philox generator: the device API's on the GPU, the host API's on the CPU.
struct NormalGenerator {
  curandGenerator_t gen = nullptr;
};
}  // namespace vae

namespace vae::cpu::unfused {
#include "unfused.inc"
}  // namespace vae::cpu::unfused
#if VAE_WITH_CUDA
namespace vae::gpu::unfused {
#include "unfused.inc"
}  // namespace vae::gpu::unfused
#endif
