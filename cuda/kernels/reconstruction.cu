// Reconstruction stage: log p(x|z) per row and its gradient w.r.t. the decoder output in one
// pass, for the Bernoulli decoder (logits) and the Gaussian decoder (sigmoid mean, log
// variance: the paper's Frey Face model); the decoder mean for images; and the batch totals.
#include <algorithm>

#include "ops.h"  // the entry points this file defines
#include "kernels/lanes.cuh"
#include "kernels/models.cuh"
#include "kernels/non_finite.cuh"
#include "kernels/reconstruction.cuh"
#include "kernels/ticket.cuh"

namespace vae::VAE_NS {

// logits and grad are (L*B, D) and must not alias; x is (B, D): row ℓ*B + r reconstructs x row r.
// log p = Σ_d x y − softplus(y); dLoss/dy = grad_scale (sigmoid(y) − x), times row_scale[row]
// where given (the IWAE objective's normalised weights). kGrad: write grad.
template <bool kGrad>
__global__ void bernoulli_reconstruction_kernel(const float* __restrict__ logits, const float* __restrict__ x,
                                                float* __restrict__ log_prob, float* __restrict__ grad, int batch,
                                                int dim, int rows, float grad_scale,
                                                const float* __restrict__ row_scale, Models ms) {
  // Model blockIdx.z's rows (types.h: Models): rows = L·B of its L·R sample rows.
  const long long sample_rows = static_cast<long long>(rows / batch) * ms.rows;
  logits = model_part(logits, sample_rows * dim);
  x = model_part(x, ms.rows * dim);
  log_prob = model_part(log_prob, sample_rows);
  grad = model_part(grad, sample_rows * dim);
  row_scale = model_part(row_scale, sample_rows);
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  float sum = 0.f;
  if (active) {
    const float* y = logits + row * dim;
    const float* xr = x + (row % batch) * dim;
    float* g = grad + row * dim;
    const float scale = kGrad && row_scale ? grad_scale * row_scale[row] : grad_scale;
    VAE_LANE_LOOP(d, dim) { sum += bernoulli_term<kGrad>(y, xr, g, d, scale); }
  }
  sum = lanes_sum(sum);
  if (active && threadIdx.x == 0) log_prob[row] = sum;
}

// out and grad are (L*B, 2D): mean logits in [0, D), log variance in [D, 2D); grad must not alias out.
// log p = −½ Σ_d (log 2π + v + (x − m)² e^{−v}),  m = sigmoid(out_mean), v = out_logvar.
template <bool kGrad>
__global__ void gaussian_reconstruction_kernel(const float* __restrict__ out, const float* __restrict__ x,
                                               float* __restrict__ log_prob, float* __restrict__ grad, int batch,
                                               int dim, int rows, float grad_scale, const float* __restrict__ row_scale,
                                               Models ms) {
  // Model blockIdx.z's rows (types.h: Models): rows = L·B of its L·R sample rows.
  const long long sample_rows = static_cast<long long>(rows / batch) * ms.rows;
  out = model_part(out, sample_rows * 2 * dim);
  x = model_part(x, ms.rows * dim);
  log_prob = model_part(log_prob, sample_rows);
  grad = model_part(grad, sample_rows * 2 * dim);
  row_scale = model_part(row_scale, sample_rows);
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  float sum = 0.f;
  if (active) {
    const float* o = out + row * 2 * dim;
    const float* xr = x + (row % batch) * dim;
    float* g = grad + row * 2 * dim;
    const float scale = kGrad && row_scale ? grad_scale * row_scale[row] : grad_scale;
    VAE_LANE_LOOP(d, dim) { sum += gaussian_term<kGrad>(o, xr, g, d, dim, scale); }
  }
  sum = lanes_sum(sum);
  if (active && threadIdx.x == 0) log_prob[row] = sum;
}

// mean (rows, D) = sigmoid of the first D columns of out (rows, out_stride).
__global__ void decoder_mean_kernel(const float* __restrict__ out, int out_stride, float* __restrict__ mean,
                                    long long n, int dim) {
  VAE_ELEMENT_LOOP(i, n) { mean[i] = sigmoid(out[(i / dim) * out_stride + i % dim]); }
}

// totals[0] += Σ_r (1/L) Σ_ℓ log p(x_r|z_ℓr), totals[1] += Σ_r KL_r, totals[2] += B, and where
// objective (B) is given totals[3] += Σ_r objective_r, in float64.
// Two stages in a fixed order: each block reduces its rows in shared memory and writes its two
// sums to scratch; the block that finishes last (the ticket) adds them in block order. The same
// inputs and grid give the same bits on every run.
__global__ void elbo_totals_kernel(const float* __restrict__ log_prob, const float* __restrict__ kl,
                                   const float* __restrict__ objective, int batch, int samples,
                                   double* __restrict__ totals, ReduceScratch scratch, const StepState* __restrict__ at,
                                   NonFinite* __restrict__ watch, Models ms) {
  VAE_DYNAMIC_SHARED(double, partial);  // (3, blockDim.x)
  // Model blockIdx.z's rows, sums, step, watch and share of the scratch (types.h: Models).
  log_prob = model_part(log_prob, samples * ms.rows);
  kl = model_part(kl, ms.rows);
  objective = model_part(objective, ms.rows);
  totals = model_part(totals, 4);
  at = model_part(at, 1);
  watch = model_part(watch, 1);
  scratch.tickets = model_part(scratch.tickets, 1);
  scratch.partial = model_part(scratch.partial, 6ll * gridDim.x);
  double recon = 0, kl_sum = 0, objective_sum = 0;
  const int stride = static_cast<int>(gridDim.x * blockDim.x);
  for (int r = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); r < batch; r += stride) {
    double row = 0;
    bool finite = true;
    for (int s = 0; s < samples; ++s) {
      const float lp = log_prob[static_cast<long long>(s) * batch + r];
      finite = finite && finite_bits(lp);
      row += lp;
    }
    recon += row / samples;
    kl_sum += kl[r];
    if (objective) objective_sum += objective[r];
    if (watch && !(finite && finite_bits(kl[r]))) {
      record_non_finite(watch, at->step, finite ? NonFiniteTerm::kl : NonFiniteTerm::reconstruction, r);
    }
  }
  const unsigned n = blockDim.x;
  partial[threadIdx.x] = recon;
  partial[n + threadIdx.x] = kl_sum;
  partial[2 * n + threadIdx.x] = objective_sum;
  __syncthreads();
  for (unsigned half = n / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      for (unsigned q = 0; q < 3; ++q) partial[q * n + threadIdx.x] += partial[q * n + threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x != 0) return;
  double sums[3] = {partial[0], partial[n], partial[2 * n]};
  if (gridDim.x > 1) {
    volatile double* block_sums = reinterpret_cast<double*>(scratch.partial);  // (gridDim.x, 3)
    for (unsigned q = 0; q < 3; ++q) block_sums[3 * blockIdx.x + q] = sums[q];
    if (!arrives_last(&scratch.tickets[0], gridDim.x)) return;
    for (unsigned q = 0; q < 3; ++q) {
      sums[q] = 0;
      for (unsigned b = 0; b < gridDim.x; ++b) sums[q] += block_sums[3 * b + q];
    }
  }
  totals[0] += sums[0];
  totals[1] += sums[1];
  totals[2] += batch;
  if (objective) totals[3] += sums[2];
}

void bernoulli_reconstruction(const float* logits, const float* x, float* log_prob, float* grad_logits, int batch,
                              int dim, int samples, float grad_scale, const float* row_scale, cudaStream_t stream,
                              Models ms) {
  require_models(ms, batch, "bernoulli_reconstruction");
  const int rows = batch * samples;
  if (rows == 0) return;
  const dim3 block = row_block(rows, dim);
  const dim3 grid = model_grid(static_cast<int>(ceil_div(rows, block.y)), ms);
  if (grad_logits) {
    VAE_LAUNCH(bernoulli_reconstruction_kernel<true>, grid, block, 0, stream, logits, x, log_prob, grad_logits, batch,
               dim, rows, grad_scale, row_scale, ms);
  } else {
    VAE_LAUNCH(bernoulli_reconstruction_kernel<false>, grid, block, 0, stream, logits, x, log_prob, nullptr, batch, dim,
               rows, grad_scale, nullptr, ms);
  }
}

void gaussian_reconstruction(const float* out, const float* x, float* log_prob, float* grad_out, int batch, int dim,
                             int samples, float grad_scale, const float* row_scale, cudaStream_t stream, Models ms) {
  require_models(ms, batch, "gaussian_reconstruction");
  const int rows = batch * samples;
  if (rows == 0) return;
  const dim3 block = row_block(rows, dim);
  const dim3 grid = model_grid(static_cast<int>(ceil_div(rows, block.y)), ms);
  if (grad_out) {
    VAE_LAUNCH(gaussian_reconstruction_kernel<true>, grid, block, 0, stream, out, x, log_prob, grad_out, batch, dim,
               rows, grad_scale, row_scale, ms);
  } else {
    VAE_LAUNCH(gaussian_reconstruction_kernel<false>, grid, block, 0, stream, out, x, log_prob, nullptr, batch, dim,
               rows, grad_scale, nullptr, ms);
  }
}

void decoder_mean(const float* out, int out_stride, float* mean, int rows, int dim, cudaStream_t stream) {
  const long long n = static_cast<long long>(rows) * dim;
  if (n == 0) return;
  constexpr int kBlock = 256;
  VAE_LAUNCH(decoder_mean_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, out, out_stride, mean, n, dim);
}

void elbo_totals(const float* log_prob, const float* kl, const float* objective, int batch, int samples, double* totals,
                 ReduceScratch scratch, const StepState* at, NonFinite* watch, cudaStream_t stream, Models ms) {
  VAE_REQUIRE(!watch || at, "elbo_totals: the non-finite watch needs the step");
  require_models(ms, batch, "elbo_totals");
  if (batch == 0) return;
  // At least 4 rows per thread; at most as many blocks as the launch policy's cap and the
  // scratch (three doubles per block) allow.
  const LaunchPolicy& p = launch_policy();
  const int threads = p.reduce_threads;
  const int most = std::min(p.max_blocks, kReducePartialFloats / 6);
  const int blocks = static_cast<int>(std::clamp<long long>(ceil_div(batch, 4ll * threads), 1, most));
  if (blocks > 1) {  // each model its ticket and its blocks' partial sums
    VAE_REQUIRE(scratch.tickets && scratch.partial, "elbo_totals: no scratch");
    VAE_REQUIRE(ms.count <= kReduceTickets && 6ll * blocks * ms.count <= kReducePartialFloats,
                "elbo_totals: too many models for the scratch");
  }
  VAE_LAUNCH(elbo_totals_kernel, model_grid(blocks, ms), threads, 3 * threads * sizeof(double), stream, log_prob, kl,
             objective, batch, samples, totals, scratch, at, watch, ms);
}

}  // namespace vae::VAE_NS
