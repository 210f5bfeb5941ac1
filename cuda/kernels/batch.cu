// Batch stage: gather rows of the resident data set by a permutation, scale to [0, 1],
// optionally binarize dynamically (x ~ Bernoulli(pixel), fresh every step).
#include "ops.h"  // the entry points this file defines
#include "kernels/batch.cuh"
#include "kernels/models.cuh"

namespace vae::VAE_NS {

// Pixels scaled to [0, 1]. On the CPU whole rows per thread: the conversion vectorizes.
// Per model (blockIdx.z): its permutation, rows of x and step state (types.h: Models).
template <typename T>
__global__ void gather_batch_kernel(const T* __restrict__ data, const int* __restrict__ perm, int batch, int dim,
                                    float* __restrict__ x, const StepState* __restrict__ at, Models ms) {
  perm = model_part(perm, ms.perm_stride);
  x = model_part(x, ms.rows * dim);
  at = model_part(at, 1);
  const long long offset = at->offset;
  VAE_ROW_COL_LOOP(r, d, batch, dim) { x[r * dim + d] = pixel_value(data[source_row(perm, offset, r) * dim + d]); }
}

// Dynamic binarization, x ~ Bernoulli(pixel): items are groups of 4 columns, so that one Philox
// draw serves a group.
template <typename T>
__global__ void gather_binarized_batch_kernel(const T* __restrict__ data, const int* __restrict__ perm, int batch,
                                              int dim, float* __restrict__ x, uint64_t seed, RandomStream rs,
                                              const StepState* __restrict__ at, Models ms) {
  perm = model_part(perm, ms.perm_stride);
  x = model_part(x, ms.rows * dim);
  at = model_part(at, 1);
  seed = model_seed(ms, seed);
  const int groups = (dim + 3) / 4;
  const long long n = static_cast<long long>(batch) * groups;
  const long long offset = at->offset;
  VAE_ELEMENT_LOOP(i, n) { binarized_group(data, perm, offset, dim, groups, i, x, seed, rs, at->step, at->row0); }
}

void gather_batch(const void* data, PixelType type, const int* perm, int batch, int dim, float* x, bool binarize,
                  uint64_t seed, RandomStream rs, const StepState* at, cudaStream_t stream, Models ms) {
  require_models(ms, batch, "gather_batch");
  VAE_REQUIRE(ms.count == 1 || !perm || ms.perm_stride > 0, "gather_batch: the models' permutations need a stride");
  const long long n = static_cast<long long>(batch) * (binarize ? (dim + 3) / 4 : dim);
  if (n == 0) return;
  constexpr int kBlock = 256;
  const dim3 grid = model_grid(elementwise_grid(n, kBlock), ms);
  const auto* u8 = static_cast<const uint8_t*>(data);
  const auto* f32 = static_cast<const float*>(data);
  if (binarize && type == PixelType::u8) {
    VAE_LAUNCH(gather_binarized_batch_kernel<uint8_t>, grid, kBlock, 0, stream, u8, perm, batch, dim, x, seed, rs, at,
               ms);
  } else if (binarize) {
    VAE_LAUNCH(gather_binarized_batch_kernel<float>, grid, kBlock, 0, stream, f32, perm, batch, dim, x, seed, rs, at,
               ms);
  } else if (type == PixelType::u8) {
    VAE_LAUNCH(gather_batch_kernel<uint8_t>, grid, kBlock, 0, stream, u8, perm, batch, dim, x, at, ms);
  } else {
    VAE_LAUNCH(gather_batch_kernel<float>, grid, kBlock, 0, stream, f32, perm, batch, dim, x, at, ms);
  }
}

}  // namespace vae::VAE_NS
