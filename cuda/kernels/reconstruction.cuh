// The reconstruction terms of one pixel, shared by the reconstruction kernels and the fused
// step kernel.
#pragma once

#include "kernels/types.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

constexpr float kHalfLog2Pi = 0.91893853320467274f;

__device__ __forceinline__ float sigmoid(float y) {
  const float e = expf(-fabsf(y));
  return y >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}

// Bernoulli, pixel d of a row: returns x y − softplus(y); with kGrad, g[d] = grad_scale (sigmoid(y) − x).
template <bool kGrad>
__device__ __forceinline__ float bernoulli_term(const float* __restrict__ y, const float* __restrict__ x,
                                                float* __restrict__ g, int d, float grad_scale) {
  const float yd = y[d], xd = x[d];
  const float e = expf(-fabsf(yd));
  if constexpr (kGrad) g[d] = grad_scale * ((yd >= 0.f ? 1.f : e) / (1.f + e) - xd);
  return xd * yd - (fmaxf(yd, 0.f) + logf(1.f + e));  // logf vectorizes; log1pf does not
}

// Gaussian, pixel d of a row o (2D: mean logits, then raw log variances): returns
// −½ (log 2π + v + (x − m)² e^{−v}), m = sigmoid(o[d]), v = f + softplus(o[D + d] − f) with f the
// floor kGaussianMinLogVar; with kGrad, the gradient w.r.t. o[d] and o[D + d] times grad_scale
// into g.
template <bool kGrad>
__device__ __forceinline__ float gaussian_term(const float* __restrict__ o, const float* __restrict__ x,
                                               float* __restrict__ g, int d, int dim, float grad_scale) {
  const float u = o[dim + d] - kGaussianMinLogVar, eu = expf(-fabsf(u));
  const float m = sigmoid(o[d]), v = kGaussianMinLogVar + fmaxf(u, 0.f) + logf(1.f + eu);
  const float diff = x[d] - m, inv_var = expf(-v);
  const float sq = diff * diff * inv_var;
  if constexpr (kGrad) {
    g[d] = -grad_scale * diff * inv_var * m * (1.f - m);
    g[dim + d] = grad_scale * 0.5f * (1.f - sq) * (u >= 0.f ? 1.f : eu) / (1.f + eu);  // · dv/d raw = sigmoid(u)
  }
  return -(kHalfLog2Pi + 0.5f * (v + sq));
}

}  // namespace vae::VAE_NS
