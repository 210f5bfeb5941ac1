// Fused encoder forward: for a tile of batch rows, every hidden layer (weights streamed from
// global memory, activations kept in shared memory), bias and activation, the μ and log σ²
// heads, ε from Philox, z and the KL, in one kernel. It writes to global memory only what the
// backward pass reads: each layer's output, the heads, z and the KL. The cuBLAS composition
// (GEMM + epilogue + latent kernel) computes the same; which is faster per shape is for the
// benchmarks to say.
#include "kernels/activation.cuh"
#include "kernels/lanes.cuh"
#include "kernels/latent_sample.cuh"

namespace vae::VAE_NS {

constexpr int kEncoderTile = 8;  // batch rows per block

// Block (lanes, columns): lanes share one output column's dot products for all rows of the tile;
// blockDim.y columns at a time. Shared memory: two (tile, width_max) activation buffers.
__global__ void fused_encoder_forward_kernel(FusedEncoderArgs a, int width_max) {
  VAE_DYNAMIC_SHARED(float, smem);
  float* buf[2] = {smem, smem + kEncoderTile * width_max};
  const int r0 = blockIdx.x * kEncoderTile;
  const int rows = a.batch - r0 < kEncoderTile ? a.batch - r0 : kEncoderTile;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x, nthreads = blockDim.x * blockDim.y;

  for (int i = tid; i < kEncoderTile * a.input_dim; i += nthreads) {
    buf[0][i] = i < rows * a.input_dim ? a.x[static_cast<long long>(r0) * a.input_dim + i] : 0.f;
  }
  __syncthreads();

  int in_width = a.input_dim, cur = 0;
  for (int l = 0; l <= a.hidden_layers; ++l) {
    const bool heads = l == a.hidden_layers;
    const int out_width = heads ? 2 * a.latent : a.width[l];
    const float* weight = heads ? a.heads_weight : a.weight[l];
    const float* bias = heads ? a.heads_bias : a.bias[l];
    float* global_out = heads ? a.heads : a.hidden[l];
    const Activation act = heads ? Activation::identity : a.activation;
    const float* in = buf[cur];
    float* out = buf[cur ^ 1];
    for (int n = threadIdx.y; n < out_width; n += blockDim.y) {
      const float* w = weight + static_cast<long long>(n) * in_width;
      float acc[kEncoderTile] = {};
      VAE_LANE_LOOP(k, in_width) {
        const float wk = w[k];
        for (int r = 0; r < kEncoderTile; ++r) acc[r] += in[r * in_width + k] * wk;
      }
      for (int r = 0; r < kEncoderTile; ++r) acc[r] = lanes_sum(acc[r]);
      if (threadIdx.x == 0) {
        for (int r = 0; r < kEncoderTile; ++r) {
          const float v = r < rows ? activate(acc[r] + bias[n], act) : 0.f;
          out[r * out_width + n] = v;
          if (r < rows) global_out[static_cast<long long>(r0 + r) * out_width + n] = v;
        }
      }
    }
    __syncthreads();
    cur ^= 1;
    in_width = out_width;
  }

  // Latent stage from the heads in shared memory: (row, sample) pairs over the block's threads.
  const uint64_t step = a.at->step;
  for (int t = tid; t < rows * a.samples; t += nthreads) {
    const int r = t % rows, s = t / rows, row = r0 + r;
    const float* mu = buf[cur] + r * 2 * a.latent;
    sample_latent(mu, mu + a.latent, a.latent, row, s, a.samples, a.seed, a.stream, step,
                  a.z + (static_cast<long long>(s) * a.batch + row) * a.latent, a.kl + row);
  }
}

void fused_encoder_forward(const FusedEncoderArgs& a, cudaStream_t stream) {
  VAE_REQUIRE(a.hidden_layers >= 0 && a.hidden_layers <= kMaxFusedLayers, "fused encoder: too many hidden layers");
  VAE_REQUIRE(a.latent > 0 && a.samples > 0 && a.input_dim > 0, "fused encoder: bad shape");
  if (a.batch == 0) return;
  int width_max = a.input_dim > 2 * a.latent ? a.input_dim : 2 * a.latent;
  for (int l = 0; l < a.hidden_layers; ++l) width_max = a.width[l] > width_max ? a.width[l] : width_max;
  const size_t smem = 2ull * kEncoderTile * width_max * sizeof(float);
  // A warp of lanes per column on the GPU; one lane per column on the CPU (no shuffles).
  const int lanes = launch_policy().row_lanes >= 32 ? 32 : 1;
  const dim3 block(lanes, 256 / lanes);
#if !VAE_HOST_EXEC
  // Above 48 KiB the kernel must opt in; set once per size increase (and so outside graph capture,
  // where the trainer's first step runs eagerly).
  static size_t opted_in = 48u << 10;
  if (smem > opted_in) {
    VAE_CUDA_CHECK(cudaFuncSetAttribute(fused_encoder_forward_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
    opted_in = smem;
  }
#endif
  VAE_LAUNCH(fused_encoder_forward_kernel, static_cast<int>(ceil_div(a.batch, kEncoderTile)), block, smem, stream, a,
             width_max);
}

}  // namespace vae::VAE_NS
