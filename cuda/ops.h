// The per-target API: the runtime's (memory, streams, graphs: runtime/api.h), the GEMM and the
// kernel launchers, compiled once per target (vae::cpu by the host compiler, vae::gpu by nvcc)
// and reached by host code through a table.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/dense_gemm.h"  // GemmOp
#include "kernels/fused_step.h"  // FusedStepArgs
#include "kernels/types.h"       // the kernels' other argument types
#include "runtime/api.h"         // memory, streams, launch shapes, graphs

namespace vae {
struct GemmHandle;  // per target: cuBLAS handle and workspace on the GPU, nothing on the CPU
}  // namespace vae

#define VAE_DECLARE_TARGET_API                                                                                         \
  /* GEMM with a dense layer's epilogues (cuda/kernels/dense_gemm.cu) */                                               \
  GemmHandle* gemm_create(cudaStream_t stream, bool tf32);                                                             \
  void gemm_destroy(GemmHandle* h) noexcept;                                                                           \
  void gemm(GemmHandle* h, const GemmOp& op);                                                                          \
  /* dense epilogue (cuda/kernels/dense.cu) */                                                                         \
  /* y[rows,cols] = act(y + bias) in place */                                                                          \
  void dense_bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,                  \
                                     cudaStream_t stream);                                                             \
  /* grad[rows,cols]: dL/dh in, dL/d(pre-activation) out; h is the post-activation output; */                          \
  /* grad_bias[cols] (or null) = column sums of the result, deterministic (two stages in scratch) */                   \
  void dense_activation_backward(float* grad, const float* h, float* grad_bias, int rows, int cols, Activation act,    \
                                 ReduceScratch scratch, cudaStream_t stream);                                          \
  /* latent (cuda/kernels/latent.cu) */                                                                                \
  /* kl (B): the row's analytic KL, or with monte_carlo the mean over its samples of log q(z|x) − log p(z) */        \
  void latent_forward(const float* heads, float* z, float* kl, int batch, int latent, int samples, uint64_t seed,      \
                      RandomStream rs, const StepState* at, KlEstimator estimator, cudaStream_t stream);               \
  /* the KL's gradient scaled by batch_scale · β(at->step) (KlTerm; at may be null: no warm-up) */                   \
  void latent_backward(const float* heads, const float* z, const float* grad_z, float* grad_heads, int batch,          \
                       int latent, int samples, float batch_scale, KlTerm kl, const StepState* at,                     \
                       cudaStream_t stream);                                                                           \
  /* importance weights (cuda/kernels/importance.cu): for each row r and sample s of a chunk, */                       \
  /* log w = log p(x|z) + log p(z) − log q(z|x), folded into a running log-sum-exp (lse_max, lse_sum) */             \
  void importance_accumulate(const float* heads, const float* z, const float* log_px, int batch, int latent,           \
                             int samples, float* lse_max, double* lse_sum, bool first_chunk, cudaStream_t stream);     \
  /* the whole training step as one cooperative kernel (cuda/kernels/fused_step.cu) */                                 \
  void fused_step(const FusedStepArgs& args, cudaStream_t stream);                                                     \
  /* the blocks fused_step launches: its workspace depends on them */                                                  \
  int fused_step_grid();                                                                                               \
  /* reconstruction (cuda/kernels/reconstruction.cu) */                                                                \
  void bernoulli_reconstruction(const float* logits, const float* x, float* log_prob, float* grad_logits, int batch,   \
                                int dim, int samples, float grad_scale, cudaStream_t stream);                          \
  void gaussian_reconstruction(const float* out, const float* x, float* log_prob, float* grad_out, int batch, int dim, \
                               int samples, float grad_scale, cudaStream_t stream);                                    \
  void decoder_mean(const float* out, int out_stride, float* mean, int rows, int dim, cudaStream_t stream);            \
  /* with watch (and at), the first non-finite log p or KL is recorded there */                                        \
  void elbo_totals(const float* log_prob, const float* kl, int batch, int samples, double* totals,                     \
                   ReduceScratch scratch, const StepState* at, NonFinite* watch, cudaStream_t stream);                 \
  /* optimizer (cuda/kernels/optimizer.cu) */                                                                          \
  /* then, with advance_batch > 0, at->step += 1 and at->offset += advance_batch (ticket: one */                       \
  /* unsigned, zero between launches) */                                                                               \
  void optimizer_step(OptimizerKind kind, const OptimizerHyper& hyper, float* params, const float* grads,              \
                      float* state1, float* state2, long long n, StepState* at, int advance_batch, unsigned* ticket,   \
                      NonFinite* watch, cudaStream_t stream);                                                          \
  /* batch (cuda/kernels/batch.cu) */                                                                                  \
  /* data (N, D) of uint8 (scaled by 1/255) or float32 in [0, 1] */                                                    \
  void gather_batch(const void* data, PixelType type, const int* perm, int batch, int dim, float* x, bool binarize,    \
                    uint64_t seed, RandomStream rs, const StepState* at, cudaStream_t stream);                         \
  void shuffle_permutation(int* perm, int n, uint64_t seed, cudaStream_t stream);

namespace vae::cpu {
VAE_DECLARE_TARGET_API
}
#if VAE_WITH_CUDA
namespace vae::gpu {
VAE_DECLARE_TARGET_API
}
#endif

namespace vae {

// The table host code calls through; one instance per target.
struct TargetOps {
#define VAE_OP(name) decltype(&cpu::name) name;
#include "ops_list.inc"
#undef VAE_OP
};

namespace cpu {
const TargetOps& target_ops();
}
#if VAE_WITH_CUDA
namespace gpu {
const TargetOps& target_ops();
}
#endif

}  // namespace vae
