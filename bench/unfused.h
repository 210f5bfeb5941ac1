// The unfused compositions the fused kernels replace, for bench_kernels only: the same work as
// one product kernel split into the separate launches an unfused framework would issue (cuRAND
// for ε, then one elementwise kernel per stage, reductions in their own kernels). Built for both
// targets like the product's kernels; every pointer is the target's memory.
#pragma once

#include <cuda_runtime.h>
#include <curand.h>

#include <cstdint>

#include "kernels/types.h"

namespace vae {
// A cuRAND Philox generator: the device API's on the GPU, the host API's on the CPU.
struct NormalGenerator {
  curandGenerator_t gen = nullptr;
};
}  // namespace vae

#define VAE_DECLARE_UNFUSED_OPS                                                                                       \
  NormalGenerator* normal_generator_create(uint64_t seed, cudaStream_t stream);                                       \
  void normal_generator_destroy(NormalGenerator* g) noexcept;                                                         \
  /* latent stage: eps (B*J, even count) from cuRAND; z = μ + exp(½ log σ²) ε; kl per row */                     \
  void latent_forward(NormalGenerator* g, const float* heads, float* eps, float* z, float* kl, int batch, int latent, \
                      cudaStream_t stream);                                                                           \
  /* Bernoulli reconstruction: per-element log p into lp (rows, D), row sums, then the gradient */                    \
  void bernoulli_reconstruction(const float* logits, const float* x, float* lp, float* log_prob, float* grad,         \
                                int rows, int dim, float grad_scale, cudaStream_t stream);                            \
  /* latent backward (L = 1): dμ and dlog σ² in two kernels, one per half of grad_heads */                         \
  void latent_backward(const float* heads, const float* z, const float* grad_z, float* grad_heads, int batch,         \
                       int latent, float kl_scale, cudaStream_t stream);                                              \
  /* Gaussian reconstruction: per-element log p into lp (rows, D), row sums, then both gradient halves */             \
  void gaussian_reconstruction(const float* out, const float* x, float* lp, float* log_prob, float* grad, int rows,   \
                               int dim, float grad_scale, cudaStream_t stream);                                       \
  /* Adam: first moment, second moment, parameter update: three passes */                                             \
  void adam_step(const OptimizerHyper& h, float* params, const float* grads, float* m, float* v, long long n,         \
                 long long step, cudaStream_t stream);                                                                \
  /* dense backward: the activation's derivative, then the bias gradient as column sums */                            \
  void dense_relu_backward(float* grad, const float* h, float* grad_bias, int rows, int cols, ReduceScratch scratch,  \
                           cudaStream_t stream);

namespace vae {
// One target's unfused compositions (unfused.cu fills it).
struct UnfusedOps {
  NormalGenerator* (*normal_generator_create)(uint64_t, cudaStream_t);
  void (*normal_generator_destroy)(NormalGenerator*) noexcept;
  void (*latent_forward)(NormalGenerator*, const float*, float*, float*, float*, int, int, cudaStream_t);
  void (*bernoulli_reconstruction)(const float*, const float*, float*, float*, float*, int, int, float, cudaStream_t);
  void (*latent_backward)(const float*, const float*, const float*, float*, int, int, float, cudaStream_t);
  void (*gaussian_reconstruction)(const float*, const float*, float*, float*, float*, int, int, float, cudaStream_t);
  void (*adam_step)(const OptimizerHyper&, float*, const float*, float*, float*, long long, long long, cudaStream_t);
  void (*dense_relu_backward)(float*, const float*, float*, int, int, ReduceScratch, cudaStream_t);
};
}  // namespace vae

namespace vae::cpu::unfused {
VAE_DECLARE_UNFUSED_OPS
const UnfusedOps& ops();
}  // namespace vae::cpu::unfused
#if VAE_WITH_CUDA
namespace vae::gpu::unfused {
VAE_DECLARE_UNFUSED_OPS
const UnfusedOps& ops();
}  // namespace vae::gpu::unfused
#endif
