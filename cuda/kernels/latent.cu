// Latent stage: ε ~ N(0, I) from Philox, the reparameterization z = μ + exp(½ log σ²) ⊙ ε,
// the analytic KL(q(z|x) || N(0, I)) per row, and the backward pass of all three.
#include "kernels/latent_sample.cuh"

namespace vae::VAE_NS {

// heads is (B, 2J): μ in columns [0, J), log σ² in [J, 2J). z is (L*B, J), sample-major
// (row ℓ*B + r is sample ℓ of datapoint r). kl is (B).
__global__ void latent_forward_kernel(const float* __restrict__ heads, float* __restrict__ z, float* __restrict__ kl,
                                      int batch, int latent, int samples, uint64_t seed, RandomStream rs,
                                      const StepState* __restrict__ at) {
  const uint64_t step = at->step;
  const long long n = static_cast<long long>(batch) * samples;
  VAE_ELEMENT_LOOP(t, n) {
    const int s = static_cast<int>(t / batch);
    const int r = static_cast<int>(t % batch);
    const float* mu = heads + static_cast<long long>(r) * 2 * latent;
    sample_latent(mu, mu + latent, latent, r, s, samples, seed, rs, step, z + t * latent, kl + r);
  }
}

// grad_z is (L*B, J) = dLoss/dz; grad_heads (B, 2J) receives dLoss/dμ | dLoss/dlog σ², with the
// KL term weighted by kl_scale (1/B for a batch mean, times any KL weight):
//   dμ      = Σ_ℓ dz + kl_scale μ
//   dlog σ² = Σ_ℓ dz ⊙ ½ σ ε + kl_scale ½ (σ² − 1),   with σ ε = z − μ.
__global__ void latent_backward_kernel(const float* __restrict__ heads, const float* __restrict__ z,
                                       const float* __restrict__ grad_z, float* __restrict__ grad_heads, int batch,
                                       int latent, int samples, float kl_scale) {
  // Row by row (whole rows per thread on the CPU: no division per element, and it vectorizes).
  VAE_ROW_COL_LOOP(r, j, batch, latent) {
    const float mu = heads[r * 2 * latent + j];
    const float logvar = heads[r * 2 * latent + latent + j];
    float dmu = 0.f, dlogvar = 0.f;
    for (int s = 0; s < samples; ++s) {
      const long long zi = (static_cast<long long>(s) * batch + r) * latent + j;
      dmu += grad_z[zi];
      dlogvar += grad_z[zi] * 0.5f * (z[zi] - mu);
    }
    grad_heads[r * 2 * latent + j] = dmu + kl_scale * mu;
    grad_heads[r * 2 * latent + latent + j] = dlogvar + kl_scale * 0.5f * (expf(logvar) - 1.f);
  }
}

void latent_forward(const float* heads, float* z, float* kl, int batch, int latent, int samples, uint64_t seed,
                    RandomStream rs, const StepState* at, cudaStream_t stream) {
  VAE_REQUIRE(batch >= 0 && latent > 0 && samples > 0, "latent_forward: bad shape");
  const long long n = static_cast<long long>(batch) * samples;
  if (n == 0) return;
  constexpr int kBlock = 128;
  VAE_LAUNCH(latent_forward_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, heads, z, kl, batch, latent,
             samples, seed, rs, at);
}

void latent_backward(const float* heads, const float* z, const float* grad_z, float* grad_heads, int batch, int latent,
                     int samples, float kl_scale, cudaStream_t stream) {
  VAE_REQUIRE(batch >= 0 && latent > 0 && samples > 0, "latent_backward: bad shape");
  const long long n = static_cast<long long>(batch) * latent;
  if (n == 0) return;
  constexpr int kBlock = 256;
  VAE_LAUNCH(latent_backward_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, heads, z, grad_z, grad_heads,
             batch, latent, samples, kl_scale);
}

}  // namespace vae::VAE_NS
