// Reconstruction stage: log p(x|z) per row and its gradient w.r.t. the decoder output in one
// pass, for the Bernoulli decoder (logits) and the Gaussian decoder (sigmoid mean, log
// variance: the paper's Frey Face model); the decoder mean for images; and the batch totals.
#include "kernels/lanes.cuh"

namespace vae::VAE_NS {

namespace {
constexpr float kHalfLog2Pi = 0.91893853320467274f;

__device__ __forceinline__ float sigmoid(float y) {
  const float e = expf(-fabsf(y));
  return y >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
}
}  // namespace

// logits and grad are (L*B, D) and must not alias; x is (B, D): row ℓ*B + r reconstructs x row r.
// log p = Σ_d x y − softplus(y); dLoss/dy = grad_scale (sigmoid(y) − x). kGrad: write grad.
template <bool kGrad>
__global__ void bernoulli_reconstruction_kernel(const float* __restrict__ logits, const float* __restrict__ x,
                                                float* __restrict__ log_prob, float* __restrict__ grad, int batch,
                                                int dim, int rows, float grad_scale) {
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  float sum = 0.f;
  if (active) {
    const float* y = logits + row * dim;
    const float* xr = x + (row % batch) * dim;
    float* g = grad + row * dim;
    VAE_LANE_LOOP(d, dim) {
      const float yd = y[d], xd = xr[d];
      const float e = expf(-fabsf(yd));
      sum += xd * yd - (fmaxf(yd, 0.f) + logf(1.f + e));  // logf vectorizes; log1pf does not
      if constexpr (kGrad) g[d] = grad_scale * ((yd >= 0.f ? 1.f : e) / (1.f + e) - xd);
    }
  }
  sum = lanes_sum(sum);
  if (active && threadIdx.x == 0) log_prob[row] = sum;
}

// out and grad are (L*B, 2D): mean logits in [0, D), log variance in [D, 2D); grad must not alias out.
// log p = −½ Σ_d (log 2π + v + (x − m)² e^{−v}),  m = sigmoid(out_mean), v = out_logvar.
template <bool kGrad>
__global__ void gaussian_reconstruction_kernel(const float* __restrict__ out, const float* __restrict__ x,
                                               float* __restrict__ log_prob, float* __restrict__ grad, int batch,
                                               int dim, int rows, float grad_scale) {
  const long long row = static_cast<long long>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  float sum = 0.f;
  if (active) {
    const float* o = out + row * 2 * dim;
    const float* xr = x + (row % batch) * dim;
    float* g = grad + row * 2 * dim;
    VAE_LANE_LOOP(d, dim) {
      const float m = sigmoid(o[d]), v = o[dim + d];
      const float diff = xr[d] - m, inv_var = expf(-v);
      const float sq = diff * diff * inv_var;
      sum -= kHalfLog2Pi + 0.5f * (v + sq);
      if constexpr (kGrad) {
        g[d] = -grad_scale * diff * inv_var * m * (1.f - m);
        g[dim + d] = grad_scale * 0.5f * (1.f - sq);
      }
    }
  }
  sum = lanes_sum(sum);
  if (active && threadIdx.x == 0) log_prob[row] = sum;
}

// mean (rows, D) = sigmoid of the first D columns of out (rows, out_stride).
__global__ void decoder_mean_kernel(const float* __restrict__ out, int out_stride, float* __restrict__ mean,
                                    long long n, int dim) {
  VAE_ELEMENT_LOOP(i, n) { mean[i] = sigmoid(out[(i / dim) * out_stride + i % dim]); }
}

// totals[0] += Σ_r (1/L) Σ_ℓ log p(x_r|z_ℓr), totals[1] += Σ_r KL_r, totals[2] += B. One block,
// a fixed reduction order in float64: the same inputs give the same bits on every run.
__global__ void elbo_totals_kernel(const float* __restrict__ log_prob, const float* __restrict__ kl, int batch,
                                   int samples, double* __restrict__ totals) {
  VAE_DYNAMIC_SHARED(double, partial);  // (2, blockDim.x)
  double recon = 0, kl_sum = 0;
  for (int r = static_cast<int>(threadIdx.x); r < batch; r += static_cast<int>(blockDim.x)) {
    double row = 0;
    for (int s = 0; s < samples; ++s) row += log_prob[static_cast<long long>(s) * batch + r];
    recon += row / samples;
    kl_sum += kl[r];
  }
  partial[threadIdx.x] = recon;
  partial[blockDim.x + threadIdx.x] = kl_sum;
  __syncthreads();
  for (unsigned stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) {
      partial[threadIdx.x] += partial[threadIdx.x + stride];
      partial[blockDim.x + threadIdx.x] += partial[blockDim.x + threadIdx.x + stride];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    totals[0] += partial[0];
    totals[1] += partial[blockDim.x];
    totals[2] += batch;
  }
}

namespace {
// Up to 128 threads per block, and rows spread over at least max_blocks blocks when there are
// enough (on the CPU: every worker gets rows).
dim3 row_block(int rows) {
  const LaunchPolicy& p = launch_policy();
  const int most = p.row_lanes >= 128 ? 1 : 128 / p.row_lanes;
  const int share = static_cast<int>(ceil_div(rows, p.max_blocks));
  return dim3(p.row_lanes, share < 1 ? 1 : (share < most ? share : most));
}
}  // namespace

void bernoulli_reconstruction(const float* logits, const float* x, float* log_prob, float* grad_logits, int batch,
                              int dim, int samples, float grad_scale, cudaStream_t stream) {
  const int rows = batch * samples;
  if (rows == 0) return;
  const dim3 block = row_block(rows);
  const int grid = static_cast<int>(ceil_div(rows, block.y));
  if (grad_logits) {
    VAE_LAUNCH(bernoulli_reconstruction_kernel<true>, grid, block, 0, stream, logits, x, log_prob, grad_logits, batch,
               dim, rows, grad_scale);
  } else {
    VAE_LAUNCH(bernoulli_reconstruction_kernel<false>, grid, block, 0, stream, logits, x, log_prob, nullptr, batch, dim,
               rows, grad_scale);
  }
}

void gaussian_reconstruction(const float* out, const float* x, float* log_prob, float* grad_out, int batch, int dim,
                             int samples, float grad_scale, cudaStream_t stream) {
  const int rows = batch * samples;
  if (rows == 0) return;
  const dim3 block = row_block(rows);
  const int grid = static_cast<int>(ceil_div(rows, block.y));
  if (grad_out) {
    VAE_LAUNCH(gaussian_reconstruction_kernel<true>, grid, block, 0, stream, out, x, log_prob, grad_out, batch, dim,
               rows, grad_scale);
  } else {
    VAE_LAUNCH(gaussian_reconstruction_kernel<false>, grid, block, 0, stream, out, x, log_prob, nullptr, batch, dim,
               rows, grad_scale);
  }
}

void decoder_mean(const float* out, int out_stride, float* mean, int rows, int dim, cudaStream_t stream) {
  const long long n = static_cast<long long>(rows) * dim;
  if (n == 0) return;
  constexpr int kBlock = 256;
  VAE_LAUNCH(decoder_mean_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, out, out_stride, mean, n, dim);
}

void elbo_totals(const float* log_prob, const float* kl, int batch, int samples, double* totals, cudaStream_t stream) {
  if (batch == 0) return;
  const int threads = launch_policy().reduce_threads;
  VAE_LAUNCH(elbo_totals_kernel, 1, threads, 2 * threads * sizeof(double), stream, log_prob, kl, batch, samples,
             totals);
}

}  // namespace vae::VAE_NS
