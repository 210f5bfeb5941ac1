// One optimizer launch over the flat parameter buffer: Adam (default), Adagrad (the paper's
// choice) or SGD with momentum, each with an L2 weight-decay term added to the gradient.
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// params, grads, state1, state2 are (n). Adam: state1 = m, state2 = v. Adagrad: state1 = Σ g².
// SGD: state1 = velocity. A template per kind keeps the element loop free of branches. The step
// t = at->step + 1 counts from 1.
template <OptimizerKind kind>
__global__ void optimizer_step_kernel(OptimizerHyper h, float* __restrict__ params, const float* __restrict__ grads,
                                      float* __restrict__ state1, float* __restrict__ state2, long long n,
                                      const StepState* __restrict__ at) {
  // Adam's bias corrections for step t = at->step + 1, in double: 1 − β^t loses float precision
  // late in training. (Adagrad and SGD do not use them.)
  // As PyTorch's Adam: p −= (lr / (1 − β₁ᵗ)) m / (√v / √(1 − β₂ᵗ) + ε), with the scalar factors
  // formed once, so that each element costs one square root and one division.
  const double t = static_cast<double>(at->step + 1);
  const double bias1 = 1.0 - pow(static_cast<double>(h.beta1), t);
  const double bias2 = 1.0 - pow(static_cast<double>(h.beta2), t);
  const float step_size = static_cast<float>(h.lr / bias1);
  const float inv_sqrt_bias2 = static_cast<float>(1.0 / sqrt(bias2));
  VAE_ELEMENT_LOOP(i, n) {
    const float g = grads[i] + h.weight_decay * params[i];
    if constexpr (kind == OptimizerKind::adam) {
      const float m = h.beta1 * state1[i] + (1.f - h.beta1) * g;
      const float v = h.beta2 * state2[i] + (1.f - h.beta2) * g * g;
      state1[i] = m;
      state2[i] = v;
      params[i] -= step_size * m / (sqrtf(v) * inv_sqrt_bias2 + h.eps);
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
}

void optimizer_step(OptimizerKind kind, const OptimizerHyper& hyper, float* params, const float* grads, float* state1,
                    float* state2, long long n, const StepState* at, cudaStream_t stream) {
  if (n == 0) return;
  constexpr int kBlock = 256;
  const int grid = elementwise_grid(n, kBlock);
  switch (kind) {
    case OptimizerKind::adam:
      VAE_LAUNCH(optimizer_step_kernel<OptimizerKind::adam>, grid, kBlock, 0, stream, hyper, params, grads, state1,
                 state2, n, at);
      break;
    case OptimizerKind::adagrad:
      VAE_LAUNCH(optimizer_step_kernel<OptimizerKind::adagrad>, grid, kBlock, 0, stream, hyper, params, grads, state1,
                 state2, n, at);
      break;
    case OptimizerKind::sgd:
      VAE_LAUNCH(optimizer_step_kernel<OptimizerKind::sgd>, grid, kBlock, 0, stream, hyper, params, grads, state1,
                 state2, n, at);
      break;
  }
}

}  // namespace vae::VAE_NS
