// A float64 reference VAE in plain loops: the ELBO of a batch and the gradient of
// loss = −(1/B) Σ_r ELBO_r with respect to every parameter. Parameters are addressed by their
// checkpoint names only, so the reference does not share the fast code's buffer arithmetic.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/types.h"
#include "model.h"

namespace vae::test {

struct ReferenceResult {
  std::vector<double> log_prob;  // (L*B): log p(x_r | z_ℓr), sample-major
  std::vector<double> kl;        // (B): analytic, or the mean over ℓ of log q(z_ℓr|x) − log p(z_ℓr)
  std::vector<double> elbo;      // (B): mean_ℓ log p − KL
  double loss = 0;               // −mean_r (mean_ℓ log p − β KL): what the gradient is of
  std::vector<double> grad;      // flat, same layout as the parameters
};

// x: (B, D) in [0, 1]; eps: (L*B, J) sample-major. kl: the estimator and β = weight ·
// min(1, step / warmup).
ReferenceResult reference_vae(const ModelConfig& c, const std::vector<double>& params, const std::vector<double>& x,
                              int batch, int samples, const std::vector<double>& eps, bool with_grad = true,
                              const KlTerm& kl = {}, uint64_t step = 0);

// ε as the latent kernel draws it: Philox4x32-10 keyed by curand_init(seed, (step << 3) | stream,
// (r * L + ℓ) * round_up(J, 4)), four normals per draw. The contract, written out independently.
std::vector<double> reference_noise(uint64_t seed, RandomStream stream, uint64_t step, int batch, int samples,
                                    int latent);

// The latent stage alone: heads (B, 2J) = μ | log σ², eps (L*B, J) → z (L*B, J), KL (B).
void reference_latent(const std::vector<double>& heads, const std::vector<double>& eps, int batch, int samples,
                      int latent, std::vector<double>& z, std::vector<double>& kl);

std::vector<double> to_double(const std::vector<float>& v);

}  // namespace vae::test
