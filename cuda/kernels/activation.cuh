// Activations and their derivatives, shared by the dense epilogues (kernels, CPU GEMM panels) and the
// fused step.
#pragma once

#include "kernels/types.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

__device__ __forceinline__ float activate(float a, Activation act) {
  switch (act) {
    case Activation::relu:
      return a > 0.f ? a : 0.f;
    case Activation::tanh:
      return tanhf(a);
    default:
      return a;
  }
}

// Derivative expressed through the output h = act(a), so the pre-activation need not be kept.
__device__ __forceinline__ float activation_grad(float h, Activation act) {
  switch (act) {
    case Activation::relu:
      return h > 0.f ? 1.f : 0.f;
    case Activation::tanh:
      return 1.f - h * h;
    default:
      return 1.f;
  }
}

}  // namespace vae::VAE_NS
