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

// Element i. Adam: state1 = m, state2 = v. Adagrad: state1 = Σ g². SGD: state1 = velocity.
template <OptimizerKind kind>
__device__ __forceinline__ void optimizer_element(const OptimizerHyper& h, const OptimizerScalars& k,
                                                  float* __restrict__ params, const float* __restrict__ grads,
                                                  float* __restrict__ state1, float* __restrict__ state2, long long i) {
  const float g = grads[i] + h.weight_decay * params[i];
  if constexpr (kind == OptimizerKind::adam) {
    const float m = h.beta1 * state1[i] + (1.f - h.beta1) * g;
    const float v = h.beta2 * state2[i] + (1.f - h.beta2) * g * g;
    state1[i] = m;
    state2[i] = v;
    params[i] -= k.step_size * m / (sqrtf(v) * k.inv_sqrt_bias2 + h.eps);
  } else if constexpr (kind == OptimizerKind::adagrad) {
    const float acc = state1[i] + g * g;
    state1[i] = acc;
    params[i] -= h.lr * g / (sqrtf(acc) + h.eps);
  } else {
    const float vel = h.momentum * state1[i] + g;
    state1[i] = vel;
    params[i] -= h.lr * vel;
  }
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
