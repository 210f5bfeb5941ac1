// Dense layer epilogue: bias + activation forward, and its backward (activation derivative
// and the bias gradient). The GEMMs around it go through the GEMM interface.
#include "kernels/activation.cuh"

namespace vae::VAE_NS {

// y is (rows, cols), bias is (cols). A template per activation keeps the element loop free of
// branches (the host compiler vectorizes it).
template <Activation act>
__global__ void dense_bias_activation_forward_kernel(float* __restrict__ y, const float* __restrict__ bias, int rows,
                                                     int cols) {
  VAE_ROW_COL_LOOP(r, c, rows, cols) {
    float* yr = y + r * cols;
    yr[c] = activate(yr[c] + bias[c], act);
  }
}

// Columns per thread of the backward kernel: one on the GPU (a warp reads 32 neighbouring
// columns of a row: coalesced); a 16-wide chunk under host execution, walked row by row, which
// the host compiler turns into vector loads, stores and adds.
constexpr int kBackwardColumns = VAE_HOST_EXEC ? 16 : 1;

// dL/d(pre-activation) of element k: written back over the gradient (unless the activation is
// the identity, whose gradient passes through as it is) and returned for the bias sum.
template <Activation act>
__device__ __forceinline__ float backward_element(float* __restrict__ g, const float* __restrict__ h, int k) {
  if constexpr (act == Activation::identity) {
    return g[k];
  } else {
    const float v = act == Activation::relu ? (h[k] > 0.f ? g[k] : 0.f) : g[k] * activation_grad(h[k], act);
    g[k] = v;
    return v;
  }
}

// grad and h are (rows, cols). Block (column groups, row groups): a thread takes columns
// [c0, c0 + kBackwardColumns) and every blockDim.y-th row of them; the row groups' partial sums
// are then added in a fixed order. A deterministic bias gradient without atomics.
template <Activation act>
__global__ void dense_activation_backward_kernel(float* __restrict__ grad, const float* __restrict__ h,
                                                 float* __restrict__ grad_bias, int rows, int cols) {
  constexpr int K = kBackwardColumns;
  VAE_DYNAMIC_SHARED(float, partial);  // (blockDim.y, blockDim.x * K) when blockDim.y > 1
  const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * K;
  float sum[K] = {};
  if (c0 < cols) {
    const int n = cols - c0 < K ? cols - c0 : K;
    for (int r = threadIdx.y; r < rows; r += blockDim.y) {
      float* __restrict__ g = grad + static_cast<long long>(r) * cols + c0;
      const float* __restrict__ hr = act == Activation::identity ? nullptr : h + static_cast<long long>(r) * cols + c0;
      if (n == K) {  // a whole chunk: a fixed trip count, which the host compiler vectorizes
        VAE_HOST_VECTOR_LOOP
        for (int k = 0; k < K; ++k) sum[k] += backward_element<act>(g, hr, k);
      } else {
        for (int k = 0; k < n; ++k) sum[k] += backward_element<act>(g, hr, k);
      }
    }
  }
  if (blockDim.y > 1) {  // uniform over the block: the barrier is safe
    for (int k = 0; k < K; ++k) partial[(threadIdx.y * blockDim.x + threadIdx.x) * K + k] = sum[k];
    __syncthreads();
    if (threadIdx.y != 0) return;
    for (unsigned y = 1; y < blockDim.y; ++y) {
      for (int k = 0; k < K; ++k) sum[k] += partial[(y * blockDim.x + threadIdx.x) * K + k];
    }
  }
  if (grad_bias) {
    for (int k = 0; k < K && c0 + k < cols; ++k) grad_bias[c0 + k] = sum[k];
  }
}

void dense_bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,
                                   cudaStream_t stream) {
  const long long n = static_cast<long long>(rows) * cols;
  if (n == 0) return;
  constexpr int kBlock = 256;
  const int grid = elementwise_grid(n, kBlock);
  switch (act) {
    case Activation::relu:
      VAE_LAUNCH(dense_bias_activation_forward_kernel<Activation::relu>, grid, kBlock, 0, stream, y, bias, rows, cols);
      break;
    case Activation::tanh:
      VAE_LAUNCH(dense_bias_activation_forward_kernel<Activation::tanh>, grid, kBlock, 0, stream, y, bias, rows, cols);
      break;
    default:
      VAE_LAUNCH(dense_bias_activation_forward_kernel<Activation::identity>, grid, kBlock, 0, stream, y, bias, rows,
                 cols);
      break;
  }
}

void dense_activation_backward(float* grad, const float* h, float* grad_bias, int rows, int cols, Activation act,
                               cudaStream_t stream) {
  if (cols == 0) return;
  VAE_REQUIRE(h != nullptr || act == Activation::identity, "dense_activation_backward needs the layer output");
  // GPU: 32 columns × row groups per block, so that a few hundred columns still fill the SMs;
  // CPU: one row group (no barrier), 8 threads of 16 columns per block.
  const int groups = launch_policy().column_row_groups;
  const dim3 block(groups > 1 ? 32 : 8, groups);
  const size_t smem = groups > 1 ? sizeof(float) * block.x * block.y * kBackwardColumns : 0;
  const int grid = static_cast<int>(ceil_div(cols, static_cast<long long>(block.x) * kBackwardColumns));
  switch (act) {
    case Activation::relu:
      VAE_LAUNCH(dense_activation_backward_kernel<Activation::relu>, grid, block, smem, stream, grad, h, grad_bias,
                 rows, cols);
      break;
    case Activation::tanh:
      VAE_LAUNCH(dense_activation_backward_kernel<Activation::tanh>, grid, block, smem, stream, grad, h, grad_bias,
                 rows, cols);
      break;
    default:
      VAE_LAUNCH(dense_activation_backward_kernel<Activation::identity>, grid, block, smem, stream, grad, h, grad_bias,
                 rows, cols);
      break;
  }
}

}  // namespace vae::VAE_NS
