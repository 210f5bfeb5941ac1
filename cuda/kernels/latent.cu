// Latent stage: ε ~ N(0, I) from Philox, the reparameterization z = μ + exp(½ log σ²) ⊙ ε,
// the analytic KL(q(z|x) || N(0, I)) per row, and the backward pass of all three.
#include <algorithm>

#include "ops.h"  // the entry points this file defines
#include "kernels/lanes.cuh"
#include "kernels/latent_sample.cuh"
#include "kernels/models.cuh"

namespace vae::VAE_NS {

// heads is (B, 2J): μ in columns [0, J), log σ² in [J, 2J). z is (L*B, J), sample-major
// (row ℓ*B + r is sample ℓ of datapoint r). kl is (B). blockDim.x lanes share a (row, sample)
// item, each taking groups of 4 latent columns (one Philox draw each), so that batch × ⌈J/4⌉
// threads fill the GPU at large batch; blockDim.y items per block.
__global__ void latent_forward_kernel(const float* __restrict__ heads, float* __restrict__ z, float* __restrict__ kl,
                                      int batch, int latent, int samples, uint64_t seed, RandomStream rs,
                                      const StepState* __restrict__ at, KlEstimator estimator, Models ms) {
  heads = model_part(heads, ms.rows * 2 * latent);  // model blockIdx.z's (types.h: Models)
  z = model_part(z, samples * ms.rows * latent);
  kl = model_part(kl, ms.rows);
  at = model_part(at, 1);
  seed = model_seed(ms, seed);
  if (ms.each) estimator = ms.each[blockIdx.z].kl.estimator;
  const uint64_t step = at->step;
  const int row0 = static_cast<int>(at->row0);  // the global batch's row of this slice's first
  const long long n = static_cast<long long>(batch) * samples;
  const long long t = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = t < n;
  const int s = active ? static_cast<int>(t / batch) : 0;
  const int r = active ? static_cast<int>(t % batch) : 0;
  const float* mu = heads + static_cast<long long>(r) * 2 * latent;
  const float* logvar = mu + latent;
  const int groups = (latent + 3) / 4;
  float sum = 0.f;
  if (active) {
    for (int g = static_cast<int>(threadIdx.x); g < groups; g += static_cast<int>(blockDim.x)) {
      sample_latent_group(mu, logvar, latent, row0 + r, s, samples, seed, rs, step, g, z + t * latent);
      if (s == 0 && estimator == KlEstimator::analytic) {
        for (int j = 4 * g; j < 4 * g + 4 && j < latent; ++j) sum += -0.5f * kl_term(mu, logvar, j);
      } else if (s == 0) {  // the mean over the row's samples, their ε drawn again
        for (int s2 = 0; s2 < samples; ++s2)
          sum +=
              mc_kl_group(mu, logvar, latent, row0 + r, s2, samples, seed, rs, step, g) / static_cast<float>(samples);
      }
    }
  }
  sum = lanes_sum(sum);  // every lane calls it, past the end too: the shuffle masks stay full
  if (active && s == 0 && threadIdx.x == 0) kl[r] = sum;
}

// grad_z is (L*B, J) = dLoss/dz; grad_heads (B, 2J) receives dLoss/dμ | dLoss/dlog σ², with the
// KL term weighted by kl_scale (1/B for a batch mean, times any KL weight):
//   dμ      = Σ_ℓ dz + kl_scale μ
//   dlog σ² = Σ_ℓ dz ⊙ ½ σ ε + kl_scale ½ (σ² − 1),   with σ ε = z − μ.
__global__ void latent_backward_kernel(const float* __restrict__ heads, const float* __restrict__ z,
                                       const float* __restrict__ grad_z, float* __restrict__ grad_heads, int batch,
                                       int latent, int samples, float batch_scale, KlTerm kl,
                                       const StepState* __restrict__ at, const float* __restrict__ weights, Models ms) {
  heads = model_part(heads, ms.rows * 2 * latent);  // model blockIdx.z's (types.h: Models)
  z = model_part(z, samples * ms.rows * latent);
  grad_z = model_part(grad_z, samples * ms.rows * latent);
  grad_heads = model_part(grad_heads, ms.rows * 2 * latent);
  weights = model_part(weights, samples * ms.rows);
  at = model_part(at, 1);
  kl = model_kl(ms, kl);
  const float kl_scale = kl_scale_at(batch_scale, kl, at);
  // Row by row (whole rows per thread on the CPU: no division per element, and it vectorizes).
  VAE_ROW_COL_LOOP(r, j, batch, latent) {
    latent_backward_element(heads, z, grad_z, grad_heads, static_cast<int>(r), j, batch, latent, samples, kl_scale,
                            kl.estimator, kl.gradient == KlGradient::dreg, weights);
  }
}

// One thread per latent column j, its rows in order (a fixed sum): sums[j] += Σ_r μ_rj,
// sums[J + j] += Σ_r μ_rj², sums[2J + j] += Σ_r −½ (1 + log σ²_rj − μ_rj² − σ²_rj), in float64.
__global__ void latent_statistics_kernel(const float* __restrict__ heads, int batch, int latent,
                                         double* __restrict__ sums) {
  VAE_ELEMENT_LOOP(j, latent) {
    double mean = 0, square = 0, kl = 0;
    for (int r = 0; r < batch; ++r) {
      const float* mu = heads + static_cast<long long>(r) * 2 * latent;
      const double m = mu[j];
      mean += m;
      square += m * m;
      kl += -0.5 * static_cast<double>(kl_term(mu, mu + latent, static_cast<int>(j)));
    }
    sums[j] += mean;
    sums[latent + j] += square;
    sums[2 * latent + j] += kl;
  }
}

// Row m of the first `draws` rows: its draw z_m (J) against every row's q(z|x_n) in order, a
// running log-sum-exp in float64: aggregate[m] = log (1/N) Σ_n q(z_m | x_n) and own[m] =
// log q(z_m | x_m), each log N(z; μ_n, σ²_n) = Σ_j −½ (log 2π + log σ²_nj + (z_j − μ_nj)² / σ²_nj).
// A thread per draw. The rows go by in tiles of `tile`, whose 1/σ²_nj = exp(−log σ²_nj) do not
// depend on the draw: the block computes them once into shared memory, (tile, J) in float64, so a
// block takes N·J exponentials, not one per draw and row (the same values, the same sums).
constexpr int kAggregateBlock = 64;
constexpr int kAggregateTableBytes = 32 * 1024;
__global__ void aggregate_posterior_kernel(const float* __restrict__ heads, const float* __restrict__ z, int rows,
                                           int latent, int draws, int tile, double* __restrict__ aggregate,
                                           double* __restrict__ own) {
  constexpr double kLog2Pi = 1.8378770664093453;
  VAE_DYNAMIC_SHARED(double, inv_var);  // (tile, latent)
  const int m = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const bool drawn = m < draws;
  const float* zm = z + static_cast<long long>(drawn ? m : 0) * latent;
  double top = -INFINITY, sum = 0;
  for (int n0 = 0; n0 < rows; n0 += tile) {
    const int count = rows - n0 < tile ? rows - n0 : tile;
    __syncthreads();  // every thread is done with the tile before
    for (int e = static_cast<int>(threadIdx.x); e < count * latent; e += static_cast<int>(blockDim.x)) {
      const int r = e / latent, j = e - r * latent;
      inv_var[e] = exp(-static_cast<double>(heads[static_cast<long long>(n0 + r) * 2 * latent + latent + j]));
    }
    __syncthreads();
    if (!drawn) continue;
    for (int r = 0; r < count; ++r) {
      const int n = n0 + r;
      const float* mu = heads + static_cast<long long>(n) * 2 * latent;
      const double* iv = inv_var + static_cast<long long>(r) * latent;
      double lq = 0;
      for (int j = 0; j < latent; ++j) {
        const double d = static_cast<double>(zm[j]) - mu[j], lv = mu[latent + j];
        lq += -0.5 * (kLog2Pi + lv + d * d * iv[j]);
      }
      if (n == m) own[m] = lq;
      if (lq > top) {
        sum = sum * exp(top - lq) + 1;
        top = lq;
      } else {
        sum += exp(lq - top);
      }
    }
  }
  if (drawn) aggregate[m] = top + log(sum) - log(static_cast<double>(rows));
}

void aggregate_posterior(const float* heads, const float* z, int rows, int latent, int draws, double* aggregate,
                         double* own, cudaStream_t stream) {
  VAE_REQUIRE(rows > 0 && latent > 0 && draws >= 0 && draws <= rows, "aggregate_posterior: bad shape");
  VAE_REQUIRE(latent * static_cast<long long>(sizeof(double)) <= kAggregateTableBytes,
              "aggregate_posterior: more than 4096 latent dimensions");
  if (draws == 0) return;
  const int tile = std::min(256, kAggregateTableBytes / static_cast<int>(latent * sizeof(double)));
  VAE_LAUNCH(aggregate_posterior_kernel, static_cast<int>(ceil_div(draws, kAggregateBlock)), kAggregateBlock,
             static_cast<size_t>(tile) * latent * sizeof(double), stream, heads, z, rows, latent, draws, tile,
             aggregate, own);
}

void latent_statistics(const float* heads, int batch, int latent, double* sums, cudaStream_t stream) {
  VAE_REQUIRE(batch >= 0 && latent > 0, "latent_statistics: bad shape");
  if (batch == 0) return;
  constexpr int kBlock = 64;
  VAE_LAUNCH(latent_statistics_kernel, elementwise_grid(latent, kBlock), kBlock, 0, stream, heads, batch, latent, sums);
}

void latent_forward(const float* heads, float* z, float* kl, int batch, int latent, int samples, uint64_t seed,
                    RandomStream rs, const StepState* at, KlEstimator estimator, cudaStream_t stream, Models ms) {
  VAE_REQUIRE(batch >= 0 && latent > 0 && samples > 0, "latent_forward: bad shape");
  require_models(ms, batch, "latent_forward");
  const long long n = static_cast<long long>(batch) * samples;
  if (n == 0) return;
  const dim3 block = row_block(n, (latent + 3) / 4);
  VAE_LAUNCH(latent_forward_kernel, model_grid(static_cast<int>(ceil_div(n, block.y)), ms), block, 0, stream, heads, z,
             kl, batch, latent, samples, seed, rs, at, estimator, ms);
}

void latent_backward(const float* heads, const float* z, const float* grad_z, float* grad_heads, int batch, int latent,
                     int samples, float batch_scale, KlTerm kl, const StepState* at, const float* weights,
                     cudaStream_t stream, Models ms) {
  VAE_REQUIRE(batch >= 0 && latent > 0 && samples > 0, "latent_backward: bad shape");
  require_models(ms, batch, "latent_backward");
  const long long n = static_cast<long long>(batch) * latent;
  if (n == 0) return;
  constexpr int kBlock = 256;
  VAE_LAUNCH(latent_backward_kernel, model_grid(elementwise_grid(n, kBlock), ms), kBlock, 0, stream, heads, z, grad_z,
             grad_heads, batch, latent, samples, batch_scale, kl, at, weights, ms);
}

}  // namespace vae::VAE_NS
