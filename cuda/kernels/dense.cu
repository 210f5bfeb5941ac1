// Dense layer epilogue: bias + activation forward, and its backward (activation derivative
// and the bias gradient). The GEMMs around it go through the GEMM interface.
#include <algorithm>

#include "ops.h"  // the entry points this file defines
#include "kernels/activation.cuh"
#include "kernels/ticket.cuh"

namespace vae::VAE_NS {

// y is (rows, cols), bias is (cols). A template per activation keeps the element loop free of
// branches (the host compiler vectorizes it).
template <Activation act>
__global__ void dense_bias_activation_forward_kernel(float* __restrict__ y, const float* __restrict__ bias, int rows,
                                                     int cols, long long stride, long long bias_stride) {
  y += blockIdx.z * stride;  // matrix blockIdx.z of a batch
  bias += blockIdx.z * bias_stride;
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

// grad and h are (rows, cols). The grid is (column groups, row slabs): a thread takes columns
// [c0, c0 + kBackwardColumns) and every blockDim.y-th row of its block's slab, so that a few
// hundred columns still fill every SM at large batch. The bias gradient is a two-stage sum in a
// fixed order: the row groups of a block add up in shared memory, each slab writes its partial
// sums to scratch.partial (slabs, cols), and the slab that finishes last (its column group's
// ticket) adds the partials in slab order. Deterministic, without float atomics, one launch.
template <Activation act>
__global__ void dense_activation_backward_kernel(float* __restrict__ grad, const float* __restrict__ h,
                                                 float* __restrict__ grad_bias, int rows, int cols, int slab_rows,
                                                 ReduceScratch scratch, long long stride, long long bias_stride) {
  constexpr int K = kBackwardColumns;
  // Matrix blockIdx.z of a batch: its rows, bias gradient, tickets and partial sums.
  grad += blockIdx.z * stride;
  if (h) h += blockIdx.z * stride;
  if (grad_bias) grad_bias += blockIdx.z * bias_stride;
  scratch.tickets += blockIdx.z * gridDim.x;
  scratch.partial += static_cast<long long>(blockIdx.z) * gridDim.y * cols;
  VAE_DYNAMIC_SHARED(float, partial);  // (blockDim.y, blockDim.x * K) when blockDim.y > 1
  __shared__ bool last_slab;
  const int c0 = (blockIdx.x * blockDim.x + threadIdx.x) * K;
  const int n = c0 < cols ? (cols - c0 < K ? cols - c0 : K) : 0;
  const int slab_end = static_cast<int>(blockIdx.y + 1) * slab_rows;
  const int r_end = slab_end < rows ? slab_end : rows;
  float sum[K] = {};
  for (int r = static_cast<int>(blockIdx.y) * slab_rows + threadIdx.y; r < r_end && n > 0; r += blockDim.y) {
    float* __restrict__ g = grad + static_cast<long long>(r) * cols + c0;
    const float* __restrict__ hr = act == Activation::identity ? nullptr : h + static_cast<long long>(r) * cols + c0;
    if (n == K) {  // a whole chunk: a fixed trip count, which the host compiler vectorizes
      VAE_HOST_VECTOR_LOOP
      for (int k = 0; k < K; ++k) sum[k] += backward_element<act>(g, hr, k);
    } else {
      for (int k = 0; k < n; ++k) sum[k] += backward_element<act>(g, hr, k);
    }
  }
  if (!grad_bias) return;  // uniform over the grid
  if (blockDim.y > 1) {    // uniform over the block: the barrier is safe
    for (int k = 0; k < K; ++k) partial[(threadIdx.y * blockDim.x + threadIdx.x) * K + k] = sum[k];
    __syncthreads();
    if (threadIdx.y == 0) {
      for (unsigned y = 1; y < blockDim.y; ++y) {
        for (int k = 0; k < K; ++k) sum[k] += partial[(y * blockDim.x + threadIdx.x) * K + k];
      }
    }
  }
  if (gridDim.y == 1) {  // one slab: its sums are the column sums
    if (threadIdx.y == 0) {
      for (int k = 0; k < n; ++k) grad_bias[c0 + k] = sum[k];
    }
    return;
  }
  if (threadIdx.y == 0) {
    for (int k = 0; k < n; ++k) scratch.partial[static_cast<long long>(blockIdx.y) * cols + c0 + k] = sum[k];
  }
  __threadfence();  // each writer's partials are visible before the block arrives
  __syncthreads();
  if (threadIdx.x == 0 && threadIdx.y == 0) last_slab = arrives_last(&scratch.tickets[blockIdx.x], gridDim.y);
  __syncthreads();
  if (!last_slab || threadIdx.y != 0) return;
  for (int k = 0; k < n; ++k) {
    const volatile float* col = scratch.partial + c0 + k;  // written by other blocks: no cached copies
    float total = 0.f;
    for (unsigned s = 0; s < gridDim.y; ++s) total += col[static_cast<long long>(s) * cols];
    grad_bias[c0 + k] = total;
  }
}

void dense_bias_activation_forward(float* y, const float* bias, int rows, int cols, Activation act, cudaStream_t stream,
                                   int count, long long stride, long long bias_stride) {
  const long long n = static_cast<long long>(rows) * cols;
  if (n == 0 || count == 0) return;
  VAE_REQUIRE(count > 0 && count <= 65535, "dense_bias_activation_forward: batch count out of range");
  constexpr int kBlock = 256;
  const dim3 grid(elementwise_grid(n, kBlock), 1, count);
  switch (act) {
    case Activation::relu:
      VAE_LAUNCH(dense_bias_activation_forward_kernel<Activation::relu>, grid, kBlock, 0, stream, y, bias, rows, cols,
                 stride, bias_stride);
      break;
    case Activation::tanh:
      VAE_LAUNCH(dense_bias_activation_forward_kernel<Activation::tanh>, grid, kBlock, 0, stream, y, bias, rows, cols,
                 stride, bias_stride);
      break;
    default:
      VAE_LAUNCH(dense_bias_activation_forward_kernel<Activation::identity>, grid, kBlock, 0, stream, y, bias, rows,
                 cols, stride, bias_stride);
      break;
  }
}

void dense_activation_backward(float* grad, const float* h, float* grad_bias, int rows, int cols, Activation act,
                               ReduceScratch scratch, cudaStream_t stream, int count, long long stride,
                               long long bias_stride) {
  if (cols == 0 || rows == 0 || count == 0) return;
  VAE_REQUIRE(count > 0 && count <= 65535, "dense_activation_backward: batch count out of range");
  VAE_REQUIRE(h != nullptr || act == Activation::identity, "dense_activation_backward needs the layer output");
  // GPU: 32 columns × row groups per block; CPU: one row group (no barrier), 8 threads of 16
  // columns per block. Then row slabs until the grid fills the target (the launch policy's
  // block count), each slab at least two rows per row group.
  const LaunchPolicy& p = launch_policy();
  const int groups = p.column_row_groups;
  const dim3 block(groups > 1 ? 32 : 8, groups);
  const size_t smem = groups > 1 ? sizeof(float) * block.x * block.y * kBackwardColumns : 0;
  const int column_blocks = static_cast<int>(ceil_div(cols, static_cast<long long>(block.x) * kBackwardColumns));
  long long slabs = std::min(ceil_div(p.max_blocks, column_blocks), ceil_div(rows, 2ll * block.y));
  if (grad_bias) {  // the partial sums must fit the scratch, one ticket per column group (of each matrix)
    slabs = std::min<long long>(slabs, kReducePartialFloats / (static_cast<long long>(cols) * count));
    if (static_cast<long long>(column_blocks) * count > kReduceTickets) slabs = 1;
  }
  slabs = std::max(slabs, 1ll);
  if (slabs > 1 && grad_bias) VAE_REQUIRE(scratch.tickets && scratch.partial, "dense_activation_backward: no scratch");
  const int slab_rows = static_cast<int>(ceil_div(rows, slabs));
  const dim3 grid(column_blocks, static_cast<unsigned>(ceil_div(rows, slab_rows)), count);
  switch (act) {
    case Activation::relu:
      VAE_LAUNCH(dense_activation_backward_kernel<Activation::relu>, grid, block, smem, stream, grad, h, grad_bias,
                 rows, cols, slab_rows, scratch, stride, bias_stride);
      break;
    case Activation::tanh:
      VAE_LAUNCH(dense_activation_backward_kernel<Activation::tanh>, grid, block, smem, stream, grad, h, grad_bias,
                 rows, cols, slab_rows, scratch, stride, bias_stride);
      break;
    default:
      VAE_LAUNCH(dense_activation_backward_kernel<Activation::identity>, grid, block, smem, stream, grad, h, grad_bias,
                 rows, cols, slab_rows, scratch, stride, bias_stride);
      break;
  }
}

}  // namespace vae::VAE_NS
