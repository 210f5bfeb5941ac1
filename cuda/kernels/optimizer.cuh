// One parameter's optimizer update, shared by the optimizer kernel and the fused step kernel.
#pragma once

#include "kernels/types.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// Adam's scalar factors for step t = step + 1 (t counts from 1), in double: 1 − β^t loses float
// precision late in training. As PyTorch's Adam: p −= (lr / (1 − β₁ᵗ)) m / (√v / √(1 − β₂ᵗ) + ε),
// with the scalar factors formed once, so that each element costs one square root and one
// division. (Adagrad and SGD do not use them.)
struct OptimizerScalars {
  float step_size, inv_sqrt_bias2;
};
__host__ __device__ __forceinline__ OptimizerScalars optimizer_scalars(const OptimizerHyper& h, uint64_t step) {
  const double t = static_cast<double>(step + 1);
  const double bias1 = 1.0 - pow(static_cast<double>(h.beta1), t);
  const double bias2 = 1.0 - pow(static_cast<double>(h.beta2), t);
  return {static_cast<float>(h.lr / bias1), static_cast<float>(1.0 / sqrt(bias2))};
}

// One parameter's update from its gradient, on values: p the parameter, s1 and s2 its state
// (Adam: s1 = m, s2 = v; Adagrad: s1 = Σ g²; SGD: s1 = velocity; s2 only Adam's), all updated.
template <OptimizerKind kind>
__host__ __device__ __forceinline__ void optimizer_update(const OptimizerHyper& h, const OptimizerScalars& k,
                                                          float grad, float& p, float& s1, float& s2) {
  const float g = grad + h.weight_decay * p;
  if constexpr (kind == OptimizerKind::adam) {
    s1 = h.beta1 * s1 + (1.f - h.beta1) * g;
    s2 = h.beta2 * s2 + (1.f - h.beta2) * g * g;
    p -= k.step_size * s1 / (sqrtf(s2) * k.inv_sqrt_bias2 + h.eps);
  } else if constexpr (kind == OptimizerKind::adagrad) {
    s1 += g * g;
    p -= h.lr * g / (sqrtf(s1) + h.eps);
  } else {
    s1 = h.momentum * s1 + g;
    p -= h.lr * s1;
  }
}

// Element i of flat buffers, in place (state2 read and written by Adam only).
template <OptimizerKind kind>
__device__ __forceinline__ void optimizer_element(const OptimizerHyper& h, const OptimizerScalars& k,
                                                  float* __restrict__ params, const float* __restrict__ grads,
                                                  float* __restrict__ state1, float* __restrict__ state2, long long i) {
  float p = params[i], s1 = state1[i], s2 = kind == OptimizerKind::adam ? state2[i] : 0.f;
  optimizer_update<kind>(h, k, grads[i], p, s1, s2);
  params[i] = p;
  state1[i] = s1;
  if constexpr (kind == OptimizerKind::adam) state2[i] = s2;
}

// What element i's last update subtracted from it, from the state after the update (k: the
// scalars of the step it took): Adam's step_size · m / (√v / √(1 − β₂ᵗ) + ε) and SGD's lr · velocity
// as the update computed them; Adagrad's lr · g / d, d = √Σg² + ε, with g = grad + λ θ_old and
// θ_old recovered from θ_new = θ_old − lr (grad + λ θ_old) / d, linear in θ_old with the factor
// 1 − lr λ / d (where that is 0, θ_new stands in for θ_old).
template <OptimizerKind kind>
__device__ __forceinline__ float last_update(const OptimizerHyper& h, const OptimizerScalars& k,
                                             const float* __restrict__ params, const float* __restrict__ grads,
                                             const float* __restrict__ state1, const float* __restrict__ state2,
                                             long long i) {
  if constexpr (kind == OptimizerKind::adam) {
    return k.step_size * state1[i] / (sqrtf(state2[i]) * k.inv_sqrt_bias2 + h.eps);
  } else if constexpr (kind == OptimizerKind::adagrad) {
    const float d = sqrtf(state1[i]) + h.eps, keep = 1.f - h.lr * h.weight_decay / d;
    const float before = fabsf(keep) > 1e-6f ? (params[i] + h.lr * grads[i] / d) / keep : params[i];
    return h.lr * (grads[i] + h.weight_decay * before) / d;
  } else {
    return h.lr * state1[i];
  }
}

}  // namespace vae::VAE_NS
