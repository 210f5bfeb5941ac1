// The model of a batched launch (types.h: Models): blockIdx.z, its share of each buffer and its
// scalars. A launch of one model (blockIdx.z = 0, no `each`) reads as before.
#pragma once

#include <string>

#include "kernels/types.h"
#include "runtime/check.h"
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

// Model blockIdx.z's part of a buffer that holds `per_model` elements for each model.
template <typename T>
__device__ __forceinline__ T* model_part(T* p, long long per_model) {
  return p ? p + static_cast<long long>(blockIdx.z) * per_model : p;
}
__device__ __forceinline__ uint64_t model_seed(const Models& ms, uint64_t seed) {
  return ms.each ? ms.each[blockIdx.z].seed : seed;
}
__device__ __forceinline__ KlTerm model_kl(const Models& ms, const KlTerm& kl) {
  return ms.each ? ms.each[blockIdx.z].kl : kl;
}
__device__ __forceinline__ OptimizerHyper model_hyper(const Models& ms, const OptimizerHyper& h) {
  return ms.each ? ms.each[blockIdx.z].hyper : h;
}

}  // namespace vae::VAE_NS

namespace vae::VAE_NS {

// The launch's grid with the models as its z dimension.
inline dim3 model_grid(dim3 grid, const Models& ms) {
  grid.z = static_cast<unsigned>(ms.count);
  return grid;
}
// A launch of several models covers at most their row capacity (`rows` of each).
inline void require_models(const Models& ms, long long rows, const char* launcher) {
  VAE_REQUIRE(ms.count >= 1 && ms.count <= 65535, std::string(launcher) + ": model count out of range");
  VAE_REQUIRE(ms.count == 1 || ms.rows >= rows, std::string(launcher) + ": more rows than each model's buffers hold");
}

}  // namespace vae::VAE_NS
