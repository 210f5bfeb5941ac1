// The unfused compositions of bench/unfused.h: one launch per stage, as an unfused framework
// issues them. Built for both targets (bench/CMakeLists.txt), like the product's kernels.
#include <curand.h>

#include "kernels/lanes.cuh"
#include "ops.h"  // the kernels it is compared with
#include "runtime/compat.cuh"
#include "unfused.h"

namespace vae::VAE_NS::unfused {

// ---- latent stage: cuRAND normals, reparameterization, KL per row ---------------------------

// heads (B, 2J) = [μ | log σ²]; eps, z (B, J).
__global__ void reparameterize_kernel(const float* __restrict__ heads, const float* __restrict__ eps,
                                      float* __restrict__ z, int batch, int latent) {
  VAE_ROW_COL_LOOP(r, j, batch, latent) {
    const float* h = heads + r * 2 * latent;
    z[r * latent + j] = h[j] + expf(0.5f * h[latent + j]) * eps[r * latent + j];
  }
}

__global__ void kl_rows_kernel(const float* __restrict__ heads, float* __restrict__ kl, int batch, int latent) {
  VAE_ELEMENT_LOOP(r, batch) {
    const float* h = heads + r * 2 * latent;
    float s = 0.f;
    for (int j = 0; j < latent; ++j) s += 1.f + h[latent + j] - h[j] * h[j] - expf(h[latent + j]);
    kl[r] = -0.5f * s;
  }
}

NormalGenerator* normal_generator_create(uint64_t seed, cudaStream_t stream) {
  auto* g = new NormalGenerator;
#if VAE_HOST_EXEC
  (void)stream;
  VAE_CURAND_CHECK(curandCreateGeneratorHost(&g->gen, CURAND_RNG_PSEUDO_PHILOX4_32_10));
#else
  VAE_CURAND_CHECK(curandCreateGenerator(&g->gen, CURAND_RNG_PSEUDO_PHILOX4_32_10));
  VAE_CURAND_CHECK(curandSetStream(g->gen, stream));
#endif
  VAE_CURAND_CHECK(curandSetPseudoRandomGeneratorSeed(g->gen, seed));
  return g;
}

void normal_generator_destroy(NormalGenerator* g) noexcept {
  if (!g) return;
  curandDestroyGenerator(g->gen);
  delete g;
}

void latent_forward(NormalGenerator* g, const float* heads, float* eps, float* z, float* kl, int batch, int latent,
                    cudaStream_t stream) {
  const long long n = static_cast<long long>(batch) * latent;
  VAE_CURAND_CHECK(curandGenerateNormal(g->gen, eps, static_cast<size_t>(n + (n & 1)), 0.f, 1.f));
  constexpr int kBlock = 256;
  VAE_LAUNCH(reparameterize_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, heads, eps, z, batch, latent);
  VAE_LAUNCH(kl_rows_kernel, elementwise_grid(batch, kBlock), kBlock, 0, stream, heads, kl, batch, latent);
}

// ---- Bernoulli reconstruction: per-element log p, row sums, gradient --------------------------

__global__ void bernoulli_log_prob_elements_kernel(const float* __restrict__ logits, const float* __restrict__ x,
                                                   float* __restrict__ lp, long long n) {
  VAE_ELEMENT_LOOP(i, n) {
    const float y = logits[i];
    lp[i] = x[i] * y - (fmaxf(y, 0.f) + logf(1.f + expf(-fabsf(y))));
  }
}

// One row per blockDim.x lanes, as the product's row kernels.
__global__ void row_sums_kernel(const float* __restrict__ v, float* __restrict__ sums, int rows, int dim) {
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  float s = 0.f;
  if (row < rows) {
    VAE_LANE_LOOP(d, dim) s += v[row * dim + d];
  }
  s = lanes_sum(s);
  if (row < rows && threadIdx.x == 0) sums[row] = s;
}

__global__ void bernoulli_grad_kernel(const float* __restrict__ logits, const float* __restrict__ x,
                                      float* __restrict__ grad, long long n, float scale) {
  VAE_ELEMENT_LOOP(i, n) grad[i] = scale * (1.f / (1.f + expf(-logits[i])) - x[i]);
}

void bernoulli_reconstruction(const float* logits, const float* x, float* lp, float* log_prob, float* grad, int rows,
                              int dim, float grad_scale, cudaStream_t stream) {
  const long long n = static_cast<long long>(rows) * dim;
  constexpr int kBlock = 256;
  VAE_LAUNCH(bernoulli_log_prob_elements_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, logits, x, lp, n);
  const LaunchPolicy& p = launch_policy();
  const dim3 block(p.row_lanes, p.row_lanes >= 128 ? 1 : 128 / p.row_lanes);
  VAE_LAUNCH(row_sums_kernel, static_cast<int>(ceil_div(rows, block.y)), block, 0, stream, lp, log_prob, rows, dim);
  VAE_LAUNCH(bernoulli_grad_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, logits, x, grad, n, grad_scale);
}

// ---- latent backward (L = 1): one kernel per half of grad_heads --------------------------------

__global__ void mu_grad_kernel(const float* __restrict__ heads, const float* __restrict__ grad_z,
                               float* __restrict__ grad_heads, int batch, int latent, float kl_scale) {
  VAE_ROW_COL_LOOP(r, j, batch, latent) {
    grad_heads[r * 2 * latent + j] = grad_z[r * latent + j] + kl_scale * heads[r * 2 * latent + j];
  }
}

__global__ void logvar_grad_kernel(const float* __restrict__ heads, const float* __restrict__ z,
                                   const float* __restrict__ grad_z, float* __restrict__ grad_heads, int batch,
                                   int latent, float kl_scale) {
  VAE_ROW_COL_LOOP(r, j, batch, latent) {
    const float* h = heads + r * 2 * latent;
    grad_heads[r * 2 * latent + latent + j] =
        grad_z[r * latent + j] * 0.5f * (z[r * latent + j] - h[j]) + kl_scale * 0.5f * (expf(h[latent + j]) - 1.f);
  }
}

void latent_backward(const float* heads, const float* z, const float* grad_z, float* grad_heads, int batch, int latent,
                     float kl_scale, cudaStream_t stream) {
  const long long n = static_cast<long long>(batch) * latent;
  constexpr int kBlock = 256;
  VAE_LAUNCH(mu_grad_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, heads, grad_z, grad_heads, batch, latent,
             kl_scale);
  VAE_LAUNCH(logvar_grad_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, heads, z, grad_z, grad_heads, batch,
             latent, kl_scale);
}

// ---- Gaussian reconstruction: per-element log p, row sums, gradient ----------------------------

// out (rows, 2D) = [mean logits | raw log variance]; log σ² = floor + softplus(raw − floor).
__device__ __forceinline__ float floored_log_var(float raw) {
  const float u = raw - kGaussianMinLogVar;
  return kGaussianMinLogVar + fmaxf(u, 0.f) + log1pf(expf(-fabsf(u)));
}

__global__ void gaussian_log_prob_elements_kernel(const float* __restrict__ out, const float* __restrict__ x,
                                                  float* __restrict__ lp, int rows, int dim) {
  VAE_ROW_COL_LOOP(r, d, rows, dim) {
    const float m = 1.f / (1.f + expf(-out[r * 2 * dim + d])), v = floored_log_var(out[r * 2 * dim + dim + d]);
    const float diff = x[r * dim + d] - m;
    lp[r * dim + d] = -(0.91893853320467274f + 0.5f * (v + diff * diff * expf(-v)));  // ½ log 2π
  }
}

__global__ void gaussian_grad_kernel(const float* __restrict__ out, const float* __restrict__ x,
                                     float* __restrict__ grad, int rows, int dim, float scale) {
  VAE_ROW_COL_LOOP(r, d, rows, dim) {
    const float raw = out[r * 2 * dim + dim + d];
    const float m = 1.f / (1.f + expf(-out[r * 2 * dim + d])), v = floored_log_var(raw);
    const float diff = x[r * dim + d] - m, inv_var = expf(-v);
    grad[r * 2 * dim + d] = -scale * diff * inv_var * m * (1.f - m);
    grad[r * 2 * dim + dim + d] =
        scale * 0.5f * (1.f - diff * diff * inv_var) / (1.f + expf(-(raw - kGaussianMinLogVar)));
  }
}

void gaussian_reconstruction(const float* out, const float* x, float* lp, float* log_prob, float* grad, int rows,
                             int dim, float grad_scale, cudaStream_t stream) {
  const long long n = static_cast<long long>(rows) * dim;
  constexpr int kBlock = 256;
  VAE_LAUNCH(gaussian_log_prob_elements_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, out, x, lp, rows, dim);
  const LaunchPolicy& p = launch_policy();
  const dim3 block(p.row_lanes, p.row_lanes >= 128 ? 1 : 128 / p.row_lanes);
  VAE_LAUNCH(row_sums_kernel, static_cast<int>(ceil_div(rows, block.y)), block, 0, stream, lp, log_prob, rows, dim);
  VAE_LAUNCH(gaussian_grad_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, out, x, grad, rows, dim, grad_scale);
}

// ---- Adam in three passes -------------------------------------------------------------------

__global__ void moment_kernel(float* __restrict__ m, const float* __restrict__ g, long long n, float beta,
                              bool squared) {
  VAE_ELEMENT_LOOP(i, n) m[i] = beta * m[i] + (1.f - beta) * (squared ? g[i] * g[i] : g[i]);
}

__global__ void adam_update_kernel(float* __restrict__ p, const float* __restrict__ m, const float* __restrict__ v,
                                   long long n, float step_size, float inv_sqrt_bias2, float eps) {
  VAE_ELEMENT_LOOP(i, n) p[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bias2 + eps);
}

void adam_step(const OptimizerHyper& h, float* params, const float* grads, float* m, float* v, long long n,
               long long step, cudaStream_t stream) {
  constexpr int kBlock = 256;
  const int grid = elementwise_grid(n, kBlock);
  const double t = static_cast<double>(step + 1);
  const double bias1 = 1.0 - pow(static_cast<double>(h.beta1), t);
  const double bias2 = 1.0 - pow(static_cast<double>(h.beta2), t);
  const float step_size = static_cast<float>(h.lr / bias1), inv_sqrt_bias2 = static_cast<float>(1.0 / sqrt(bias2));
  VAE_LAUNCH(moment_kernel, grid, kBlock, 0, stream, m, grads, n, h.beta1, false);
  VAE_LAUNCH(moment_kernel, grid, kBlock, 0, stream, v, grads, n, h.beta2, true);
  VAE_LAUNCH(adam_update_kernel, grid, kBlock, 0, stream, params, m, v, n, step_size, inv_sqrt_bias2, h.eps);
}

// ---- dense backward: ReLU derivative, then column sums ----------------------------------------

__global__ void relu_grad_kernel(float* __restrict__ grad, const float* __restrict__ h, long long n) {
  VAE_ELEMENT_LOOP(i, n) grad[i] = h[i] > 0.f ? grad[i] : 0.f;
}

void dense_relu_backward(float* grad, const float* h, float* grad_bias, int rows, int cols, ReduceScratch scratch,
                         cudaStream_t stream) {
  const long long n = static_cast<long long>(rows) * cols;
  constexpr int kBlock = 256;
  VAE_LAUNCH(relu_grad_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, grad, h, n);
  // The product's column sum alone: with the identity activation it only sums.
  VAE_NS::dense_activation_backward(grad, nullptr, grad_bias, rows, cols, Activation::identity, scratch, stream);
}

}  // namespace vae::VAE_NS::unfused
