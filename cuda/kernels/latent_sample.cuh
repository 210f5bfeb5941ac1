// The latent stage for one (datapoint, sample): shared by the latent kernel and the fused
// encoder kernel, so both draw the same ε for the same key.
#pragma once

#include "kernels/philox.cuh"

namespace vae::VAE_NS {

// mu, logvar: the row's heads (J each). Writes z (J) = μ + exp(½ log σ²) ⊙ ε with ε from Philox
// keyed by (seed, stream, step, (row·L + sample)·⌈J⌉₄), and for sample 0 the row's
// KL = −½ Σ_j (1 + log σ² − μ² − σ²) into *kl.
__device__ __forceinline__ void sample_latent(const float* mu, const float* logvar, int latent, int row, int sample,
                                              int samples, uint64_t seed, RandomStream rs, uint64_t step, float* z,
                                              float* kl) {
  curandStatePhilox4_32_10_t state;
  philox_init(seed, rs, step, (static_cast<uint64_t>(row) * samples + sample) * round_up4(latent), &state);
  for (int j = 0; j < latent; j += 4) {
    const float4 eps = curand_normal4(&state);
    const float e[4] = {eps.x, eps.y, eps.z, eps.w};
    for (int q = 0; q < 4 && j + q < latent; ++q) z[j + q] = mu[j + q] + expf(0.5f * logvar[j + q]) * e[q];
  }
  if (sample == 0) {
    float sum = 0.f;
    for (int j = 0; j < latent; ++j) sum += 1.f + logvar[j] - mu[j] * mu[j] - expf(logvar[j]);
    *kl = -0.5f * sum;
  }
}

}  // namespace vae::VAE_NS
