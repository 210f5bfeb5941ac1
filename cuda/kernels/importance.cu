// The importance-weighted estimate of log p(x) (Burda et al., 2015):
//   log p(x) ≈ log (1/K) Σ_k p(x, z_k) / q(z_k|x),  z_k ~ q(z|x),
// accumulated chunk by chunk of samples as a running log-sum-exp per datapoint, so that the K
// decoder outputs of a row never exist at once.
#include "ops.h"  // the entry points this file defines
#include "kernels/lanes.cuh"
#include "kernels/models.cuh"

namespace vae::VAE_NS {

// log w of one (row, sample): log p(x|z) + Σ_j (−½ z_j² + ½ ε_j² + ½ log σ²_j), ε = (z − μ)/σ
// (the log 2π terms of log p(z) and log q(z|x) cancel).
__device__ __forceinline__ float log_weight(const float* mu, const float* logvar, const float* zk, float log_px,
                                            int latent) {
  float lw = log_px;
  for (int j = 0; j < latent; ++j) {
    const float e = (zk[j] - mu[j]) * expf(-0.5f * logvar[j]);
    lw += -0.5f * zk[j] * zk[j] + 0.5f * e * e + 0.5f * logvar[j];
  }
  return lw;
}

// A running log-sum-exp (m, s): the largest term so far and Σ exp(term − m); merge adds another.
__device__ __forceinline__ void lse_add(float lw, float& m, double& s) {
  if (lw > m) {
    s = s * exp(static_cast<double>(m - lw)) + 1.0;
    m = lw;
  } else {
    s += exp(static_cast<double>(lw - m));
  }
}
__device__ __forceinline__ void lse_merge(float m2, double s2, float& m, double& s) {
  const float top = m2 > m ? m2 : m;
  if (top > -INFINITY) s = s * exp(static_cast<double>(m - top)) + s2 * exp(static_cast<double>(m2 - top));
  m = top;
}
// The lanes' pairs merged in lane order; lane 0 ends with the row's.
__device__ __forceinline__ void lse_lanes(float& m, double& s) {
  for (int offset = blockDim.x / 2; offset > 0; offset /= 2) {
    const float m2 = __shfl_down_sync(0xffffffffu, m, offset, blockDim.x);
    const double s2 = __shfl_down_sync(0xffffffffu, s, offset, blockDim.x);
    lse_merge(m2, s2, m, s);
  }
}

// heads (B, 2J): μ | log σ²; z (S, B, J) sample-major as latent_forward writes it; log_px (S, B).
// log w = log p(x|z) + Σ_j (−½ z_j² + ½ ε_j² + ½ log σ²_j), ε = (z − μ)/σ (the log 2π terms of
// log p(z) and log q(z|x) cancel). Per row: lse_max (B) the largest log w so far, lse_sum (B)
// Σ exp(log w − lse_max). blockDim.x lanes share a row's samples; each lane keeps its own running
// pair, and the lanes' pairs are merged in lane order (the same sums every run).
__global__ void importance_accumulate_kernel(const float* __restrict__ heads, const float* __restrict__ z,
                                             const float* __restrict__ log_px, int batch, int latent, int samples,
                                             float* __restrict__ lse_max, double* __restrict__ lse_sum,
                                             bool first_chunk) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = r < batch;
  float m = -INFINITY;
  double s = 0.0;
  if (active) {
    const float* mu = heads + r * 2 * latent;
    const float* logvar = mu + latent;
    for (int k = static_cast<int>(threadIdx.x); k < samples; k += static_cast<int>(blockDim.x)) {
      const float* zk = z + (static_cast<long long>(k) * batch + r) * latent;
      lse_add(log_weight(mu, logvar, zk, log_px[static_cast<long long>(k) * batch + r], latent), m, s);
    }
  }
  lse_lanes(m, s);
  if (!active || threadIdx.x != 0) return;
  if (!first_chunk) lse_merge(lse_max[r], lse_sum[r], m, s);
  lse_max[r] = m;
  lse_sum[r] = s;
}

// One row per blockDim.x lanes, as importance_accumulate: log w_k of the row's K samples, their
// log-sum-exp (lanes merged in lane order), then w̃_k = exp(log w_k − lse) and the row's
// objective lse − log K. A row whose log w are all −∞ or NaN gets NaN (the non-finite guard
// names it).
__global__ void importance_weights_kernel(const float* __restrict__ heads, const float* __restrict__ z,
                                          const float* __restrict__ log_px, int batch, int latent, int samples,
                                          float* __restrict__ weights, float* __restrict__ objective, Models ms) {
  heads = model_part(heads, ms.rows * 2 * latent);  // model blockIdx.z's (types.h: Models)
  z = model_part(z, samples * ms.rows * latent);
  log_px = model_part(log_px, samples * ms.rows);
  weights = model_part(weights, samples * ms.rows);
  objective = model_part(objective, ms.rows);
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = r < batch;
  float m = -INFINITY;
  double s = 0.0;
  const float* mu = heads + (active ? r : 0) * 2 * latent;
  const float* logvar = mu + latent;
  auto lw_of = [&](int k) {
    const long long row = static_cast<long long>(k) * batch + r;
    return log_weight(mu, logvar, z + row * latent, log_px[row], latent);
  };
  if (active) {
    for (int k = static_cast<int>(threadIdx.x); k < samples; k += static_cast<int>(blockDim.x)) lse_add(lw_of(k), m, s);
  }
  lse_lanes(m, s);
  // Every lane needs the row's sum: lane 0's, shared.
  m = __shfl_sync(0xffffffffu, m, 0, blockDim.x);
  s = __shfl_sync(0xffffffffu, s, 0, blockDim.x);
  if (!active) return;
  const double lse = static_cast<double>(m) + log(s);
  for (int k = static_cast<int>(threadIdx.x); k < samples; k += static_cast<int>(blockDim.x)) {
    weights[static_cast<long long>(k) * batch + r] = static_cast<float>(exp(static_cast<double>(lw_of(k)) - lse));
  }
  if (threadIdx.x == 0) objective[r] = static_cast<float>(lse - log(static_cast<double>(samples)));
}

void importance_weights(const float* heads, const float* z, const float* log_px, int batch, int latent, int samples,
                        float* weights, float* objective, cudaStream_t stream, Models ms) {
  VAE_REQUIRE(batch >= 0 && latent > 0 && samples > 0, "importance_weights: bad shape");
  require_models(ms, batch, "importance_weights");
  if (batch == 0) return;
  const dim3 block = row_block(batch, samples);
  VAE_LAUNCH(importance_weights_kernel, model_grid(static_cast<int>(ceil_div(batch, block.y)), ms), block, 0, stream,
             heads, z, log_px, batch, latent, samples, weights, objective, ms);
}

void importance_accumulate(const float* heads, const float* z, const float* log_px, int batch, int latent, int samples,
                           float* lse_max, double* lse_sum, bool first_chunk, cudaStream_t stream) {
  VAE_REQUIRE(batch >= 0 && latent > 0 && samples > 0, "importance_accumulate: bad shape");
  if (batch == 0) return;
  const dim3 block = row_block(batch, samples);
  VAE_LAUNCH(importance_accumulate_kernel, static_cast<int>(ceil_div(batch, block.y)), block, 0, stream, heads, z,
             log_px, batch, latent, samples, lse_max, lse_sum, first_chunk);
}

}  // namespace vae::VAE_NS
