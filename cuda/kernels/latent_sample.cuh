// The latent stage for one (datapoint, sample): shared by the latent kernel and the fused step
// kernel, so both draw the same ε for the same key.
#pragma once

#include "kernels/types.h"
#include "kernels/philox.cuh"

namespace vae::VAE_NS {

// Latent columns [4g, 4g + 4) of one (row, sample): z = μ + exp(½ log σ²) ⊙ ε with the four ε
// of one Philox draw keyed by (seed, stream, step, (row·L + sample)·⌈J⌉₄ + 4g). A row's groups
// are independent, so lanes can share a row; drawn in sequence they are curand's stream from
// (row·L + sample)·⌈J⌉₄ on.
__device__ __forceinline__ float4 draw_eps_group(int latent, int row, int sample, int samples, uint64_t seed,
                                                 RandomStream rs, uint64_t step, int group) {
  curandStatePhilox4_32_10_t state;
  philox_init(seed, rs, step, (static_cast<uint64_t>(row) * samples + sample) * round_up4(latent) + 4ull * group,
              &state);
  return curand_normal4(&state);
}

__device__ __forceinline__ void sample_latent_group(const float* mu, const float* logvar, int latent, int row,
                                                    int sample, int samples, uint64_t seed, RandomStream rs,
                                                    uint64_t step, int group, float* z) {
  const float4 eps = draw_eps_group(latent, row, sample, samples, seed, rs, step, group);
  const float e[4] = {eps.x, eps.y, eps.z, eps.w};
  const int j0 = 4 * group;
  for (int q = 0; q < 4 && j0 + q < latent; ++q) z[j0 + q] = mu[j0 + q] + expf(0.5f * logvar[j0 + q]) * e[q];
}

// Columns [4g, 4g + 4) of log q(z|x) − log p(z) for one (row, sample), drawing the ε that
// sample_latent_group draws for the same key: Σ_j −½ log σ²_j − ½ ε_j² + ½ z_j² (the ½ log 2π
// terms cancel). The Monte-Carlo KL's term.
__device__ __forceinline__ float mc_kl_group(const float* mu, const float* logvar, int latent, int row, int sample,
                                             int samples, uint64_t seed, RandomStream rs, uint64_t step, int group) {
  const float4 eps = draw_eps_group(latent, row, sample, samples, seed, rs, step, group);
  const float e[4] = {eps.x, eps.y, eps.z, eps.w};
  const int j0 = 4 * group;
  float sum = 0.f;
  for (int q = 0; q < 4 && j0 + q < latent; ++q) {
    const float z = mu[j0 + q] + expf(0.5f * logvar[j0 + q]) * e[q];
    sum += -0.5f * logvar[j0 + q] - 0.5f * e[q] * e[q] + 0.5f * z * z;
  }
  return sum;
}

// A row's Monte-Carlo KL, the mean over its samples of log q(z|x) − log p(z): its groups in order,
// each summed over the samples (the order of the latent kernel with one lane per item).
__device__ __forceinline__ float mc_kl_row(const float* mu, const float* logvar, int latent, int row, int samples,
                                           uint64_t seed, RandomStream rs, uint64_t step) {
  float sum = 0.f;
  for (int g = 0; 4 * g < latent; ++g)
    for (int s = 0; s < samples; ++s)
      sum += mc_kl_group(mu, logvar, latent, row, s, samples, seed, rs, step, g) / static_cast<float>(samples);
  return sum;
}

// Column j's term of −2 KL: 1 + log σ² − μ² − σ².
__device__ __forceinline__ float kl_term(const float* mu, const float* logvar, int j) {
  return 1.f + logvar[j] - mu[j] * mu[j] - expf(logvar[j]);
}

// Latent column j of one (row, sample): z = μ + exp(½ log σ²) ε_j with the ε_j that
// sample_latent_group draws for the same key (its group's draw, one of its four).
__device__ __forceinline__ float sample_latent_element(float mu, float logvar, int latent, int row, int sample,
                                                       int samples, uint64_t seed, RandomStream rs, uint64_t step,
                                                       int j) {
  const float4 eps = draw_eps_group(latent, row, sample, samples, seed, rs, step, j / 4);
  const float e[4] = {eps.x, eps.y, eps.z, eps.w};
  return mu + expf(0.5f * logvar) * e[j % 4];
}

// mu, logvar: a row's heads (J each). Its analytic KL = −½ Σ_j (1 + log σ² − μ² − σ²), summed in column order.
__device__ __forceinline__ float analytic_kl_row(const float* mu, const float* logvar, int latent) {
  float sum = 0.f;
  for (int j = 0; j < latent; ++j) sum += kl_term(mu, logvar, j);
  return -0.5f * sum;
}

// The KL gradient's scale at a step: the batch mean's 1/B times β, ramped over the warm-up.
__device__ __forceinline__ float kl_scale_at(float batch_scale, const KlTerm& kl, const StepState* at) {
  float ramp = 1.f;
  if (kl.warmup > 0 && at) {
    const float t = static_cast<float>(at->step) / static_cast<float>(kl.warmup);
    ramp = t < 1.f ? t : 1.f;
  }
  return batch_scale * kl.weight * ramp;
}

// Column j of row r of the latent backward (see latent_backward_kernel): grad_heads from grad_z.
// Analytic KL: its gradient in closed form. Monte-Carlo KL, (1/L) Σ_ℓ log q(z_ℓ|x) − log p(z_ℓ)
// with z_ℓ = μ + σ ε_ℓ: d/dz adds kl_scale/L · z_ℓ to each sample's dz, and d/dlog σ² of its
// −½ log σ² adds −½ kl_scale (the −½ ε² term does not depend on μ or σ). With path_only (the
// dreg gradient) q's parameters are held fixed inside log q: d/dz adds kl_scale/L · (z_ℓ − ε_ℓ/σ)
// instead, ε_ℓ/σ = (z_ℓ − μ)/σ², and there is no −½ kl_scale.
// With weights (the IWAE objective's normalised w̃, (L·B) sample-major; the estimator is then
// Monte-Carlo, β = 1): sample ℓ's log p(z) − log q(z|x) term is weighted by w̃_ℓ instead of 1/L
// (grad_z carries w̃_ℓ already, from the reconstruction's gradient), and the −½ kl_scale stays
// (Σ w̃ = 1). With weights and path_only, Tucker et al.'s doubly reparameterized gradient: the
// whole of sample ℓ's dz weighted by w̃_ℓ² (grad_z by one more w̃_ℓ), q's parameters fixed in log q.
__device__ __forceinline__ void latent_backward_element(const float* __restrict__ heads, const float* __restrict__ z,
                                                        const float* __restrict__ grad_z,
                                                        float* __restrict__ grad_heads, int r, int j, int batch,
                                                        int latent, int samples, float kl_scale, KlEstimator estimator,
                                                        bool path_only = false,
                                                        const float* __restrict__ weights = nullptr) {
  const long long row = static_cast<long long>(r) * 2 * latent;
  const float mu = heads[row + j];
  const float logvar = heads[row + latent + j];
  const bool mc = weights || estimator == KlEstimator::monte_carlo;
  const float uniform = mc ? kl_scale / static_cast<float>(samples) : 0.f;
  const float inv_var = mc && path_only ? expf(-logvar) : 0.f;
  float dmu = 0.f, dlogvar = 0.f;
  for (int s = 0; s < samples; ++s) {
    const long long zi = (static_cast<long long>(s) * batch + r) * latent + j;
    float per_sample = uniform, through_decoder = grad_z[zi];
    if (weights) {
      const float w = weights[static_cast<long long>(s) * batch + r];
      per_sample = kl_scale * (path_only ? w * w : w);
      if (path_only) through_decoder *= w;
    }
    const float g = through_decoder + per_sample * (z[zi] - (z[zi] - mu) * inv_var);
    dmu += g;
    dlogvar += g * 0.5f * (z[zi] - mu);
  }
  if (mc) {
    grad_heads[row + j] = dmu;
    grad_heads[row + latent + j] = dlogvar - (path_only ? 0.f : 0.5f * kl_scale);
  } else {
    grad_heads[row + j] = dmu + kl_scale * mu;
    grad_heads[row + latent + j] = dlogvar + kl_scale * 0.5f * (expf(logvar) - 1.f);
  }
}

}  // namespace vae::VAE_NS
