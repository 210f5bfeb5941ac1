// Batch stage: gather rows of the resident data set by a permutation, scale to [0, 1],
// optionally binarize dynamically (x ~ Bernoulli(pixel), fresh every step).
#include "ops.h"  // the entry points this file defines
#include "kernels/batch.cuh"

namespace vae::VAE_NS {

// Pixels scaled to [0, 1]. On the CPU whole rows per thread: the conversion vectorizes.
template <typename T>
__global__ void gather_batch_kernel(const T* __restrict__ data, const int* __restrict__ perm, int batch, int dim,
                                    float* __restrict__ x, const StepState* __restrict__ at) {
  const long long offset = at->offset;
  VAE_ROW_COL_LOOP(r, d, batch, dim) { x[r * dim + d] = pixel_value(data[source_row(perm, offset, r) * dim + d]); }
}

// Dynamic binarization, x ~ Bernoulli(pixel): items are groups of 4 columns, so that one Philox
// draw serves a group.
template <typename T>
__global__ void gather_binarized_batch_kernel(const T* __restrict__ data, const int* __restrict__ perm, int batch,
                                              int dim, float* __restrict__ x, uint64_t seed, RandomStream rs,
                                              const StepState* __restrict__ at) {
  const int groups = (dim + 3) / 4;
  const long long n = static_cast<long long>(batch) * groups;
  const long long offset = at->offset;
  VAE_ELEMENT_LOOP(i, n) { binarized_group(data, perm, offset, dim, groups, i, x, seed, rs, at->step, at->row0); }
}

void gather_batch(const void* data, PixelType type, const int* perm, int batch, int dim, float* x, bool binarize,
                  uint64_t seed, RandomStream rs, const StepState* at, cudaStream_t stream) {
  const long long n = static_cast<long long>(batch) * (binarize ? (dim + 3) / 4 : dim);
  if (n == 0) return;
  constexpr int kBlock = 256;
  const int grid = elementwise_grid(n, kBlock);
  const auto* u8 = static_cast<const uint8_t*>(data);
  const auto* f32 = static_cast<const float*>(data);
  if (binarize && type == PixelType::u8) {
    VAE_LAUNCH(gather_binarized_batch_kernel<uint8_t>, grid, kBlock, 0, stream, u8, perm, batch, dim, x, seed, rs, at);
  } else if (binarize) {
    VAE_LAUNCH(gather_binarized_batch_kernel<float>, grid, kBlock, 0, stream, f32, perm, batch, dim, x, seed, rs, at);
  } else if (type == PixelType::u8) {
    VAE_LAUNCH(gather_batch_kernel<uint8_t>, grid, kBlock, 0, stream, u8, perm, batch, dim, x, at);
  } else {
    VAE_LAUNCH(gather_batch_kernel<float>, grid, kBlock, 0, stream, f32, perm, batch, dim, x, at);
  }
}

}  // namespace vae::VAE_NS
