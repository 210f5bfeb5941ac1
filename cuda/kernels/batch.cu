// Batch stage: gather rows of the resident uint8 data set by a permutation, scale to [0, 1],
// optionally binarize dynamically (x ~ Bernoulli(pixel / 255), fresh every step).
#include "kernels/philox.cuh"

namespace vae::VAE_NS {

// data is (N, D) uint8, perm is (N) or null for the identity, x is (B, D).
// Rows offset .. offset+B−1 of the permuted order. Items are groups of 4 columns so that one
// Philox draw serves one group.
__global__ void gather_batch_kernel(const uint8_t* __restrict__ data, const int* __restrict__ perm,
                                    long long offset, int batch, int dim, float* __restrict__ x, bool binarize,
                                    uint64_t seed, uint64_t step) {
  const int groups = (dim + 3) / 4;
  const long long n = static_cast<long long>(batch) * groups;
  VAE_ELEMENT_LOOP(i, n) {
    const int r = static_cast<int>(i / groups);
    const int d0 = static_cast<int>(i % groups) * 4;
    const long long src = perm ? perm[offset + r] : offset + r;
    const uint8_t* in = data + src * dim;
    float* out = x + static_cast<long long>(r) * dim;
    if (binarize) {
      curandStatePhilox4_32_10_t state;
      philox_init(seed, RandomStream::binarize, step, static_cast<uint64_t>(i) * 4, &state);
      const float4 u = curand_uniform4(&state);  // in (0, 1]
      const float uq[4] = {u.x, u.y, u.z, u.w};
      for (int q = 0; q < 4 && d0 + q < dim; ++q) out[d0 + q] = uq[q] * 255.f <= in[d0 + q] ? 1.f : 0.f;
    } else {
      for (int q = 0; q < 4 && d0 + q < dim; ++q) out[d0 + q] = in[d0 + q] * (1.f / 255.f);
    }
  }
}

void gather_batch(const uint8_t* data, const int* perm, long long offset, int batch, int dim, float* x,
                  bool binarize, uint64_t seed, uint64_t step, cudaStream_t stream) {
  const long long n = static_cast<long long>(batch) * ((dim + 3) / 4);
  if (n == 0) return;
  constexpr int kBlock = 256;
  VAE_LAUNCH(gather_batch_kernel, elementwise_grid(n, kBlock), kBlock, 0, stream, data, perm, offset, batch, dim, x,
             binarize, seed, step);
}

}  // namespace vae::VAE_NS
