// Dense layer epilogue: bias + activation forward, and its backward (activation derivative
// and the bias gradient). The GEMMs around it go through the GEMM interface.
#include "kernels/activation.cuh"

namespace vae::VAE_NS {

// y is (rows, cols), bias is (cols).
__global__ void dense_bias_activation_forward_kernel(float* __restrict__ y, const float* __restrict__ bias, int rows,
                                                     int cols, Activation act) {
  VAE_ROW_COL_LOOP(r, c, rows, cols) {
    float* yr = y + r * cols;
    yr[c] = activate(yr[c] + bias[c], act);
  }
}

// grad and h are (rows, cols). Block (columns, row groups): threadIdx.x takes a column
// (coalesced across a warp), threadIdx.y every blockDim.y-th row of it; the row groups' partial
// sums are then added in a fixed order. A deterministic bias gradient without atomics.
__global__ void dense_activation_backward_kernel(float* __restrict__ grad, const float* __restrict__ h,
                                                 float* __restrict__ grad_bias, int rows, int cols, Activation act) {
  VAE_DYNAMIC_SHARED(float, partial);  // (blockDim.y, blockDim.x) when blockDim.y > 1
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  float sum = 0.f;
  if (c < cols) {
    for (int r = threadIdx.y; r < rows; r += blockDim.y) {
      const long long i = static_cast<long long>(r) * cols + c;
      const float g = grad[i] * activation_grad(h ? h[i] : 0.f, act);
      if (act != Activation::identity) grad[i] = g;  // identity: the gradient passes through as it is
      sum += g;
    }
  }
  if (blockDim.y > 1) {  // uniform over the block: the barrier is safe
    partial[threadIdx.y * blockDim.x + threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y != 0) return;
    for (unsigned y = 1; y < blockDim.y; ++y) sum += partial[y * blockDim.x + threadIdx.x];
  }
  if (grad_bias && c < cols) grad_bias[c] = sum;
}

void dense_bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act,
                                   cudaStream_t stream) {
  const long long n = static_cast<long long>(rows) * cols;
  if (n == 0) return;
  constexpr int kBlock = 256;
  VAE_LAUNCH(dense_bias_activation_forward_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, y, bias, rows, cols,
             act);
}

void dense_activation_backward(float* grad, const float* h, float* grad_bias, int rows, int cols, Activation act,
                               cudaStream_t stream) {
  if (cols == 0) return;
  VAE_REQUIRE(h != nullptr || act == Activation::identity, "dense_activation_backward needs the layer output");
  // GPU: 32 columns × row groups per block, so that a few hundred columns still fill the SMs;
  // CPU: one row group (no barrier), 128 columns per block.
  const int groups = launch_policy().column_row_groups;
  const dim3 block(groups > 1 ? 32 : 128, groups);
  const size_t smem = groups > 1 ? sizeof(float) * block.x * block.y : 0;
  VAE_LAUNCH(dense_activation_backward_kernel, static_cast<int>(ceil_div(cols, block.x)), block, smem, stream, grad, h,
             grad_bias, rows, cols, act);
}

}  // namespace vae::VAE_NS
