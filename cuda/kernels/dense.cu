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

// grad and h are (rows, cols). One thread per column walks the rows in order: a
// deterministic bias gradient without atomics, and coalesced across the threads of a warp.
__global__ void dense_activation_backward_kernel(float* __restrict__ grad, const float* __restrict__ h,
                                                 float* __restrict__ grad_bias, int rows, int cols, Activation act) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  float sum = 0.f;
  for (int r = 0; r < rows; ++r) {
    const long long i = static_cast<long long>(r) * cols + c;
    const float g = grad[i] * activation_grad(h ? h[i] : 0.f, act);
    if (act != Activation::identity) grad[i] = g;  // identity: the gradient passes through as it is
    sum += g;
  }
  if (grad_bias) grad_bias[c] = sum;
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
  constexpr int kBlock = 128;
  VAE_LAUNCH(dense_activation_backward_kernel, static_cast<int>(ceil_div(cols, kBlock)), kBlock, 0, stream, grad, h,
             grad_bias, rows, cols, act);
}

}  // namespace vae::VAE_NS
