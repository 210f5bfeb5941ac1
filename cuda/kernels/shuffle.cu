// Per-epoch shuffle of the sample order through Thrust: the CUDA system on the GPU, the CPP
// system under host execution.
#include "ops.h"  // the entry points this file defines
#include "runtime/compat.cuh"

#include <thrust/random.h>
#include <thrust/sequence.h>
#include <thrust/shuffle.h>
#if VAE_HOST_EXEC
#include <thrust/system/cpp/execution_policy.h>
#else
#include <thrust/system/cuda/execution_policy.h>
#endif

namespace vae::VAE_NS {

// perm (n) receives a permutation of 0..n−1 determined by seed alone.
void shuffle_permutation(int* perm, int n, uint64_t seed, cudaStream_t stream) {
  if (n == 0) return;
#if VAE_HOST_EXEC
  (void)stream;
  const auto policy = thrust::cpp::par;
#else
  const auto policy = thrust::cuda::par.on(stream);
#endif
  thrust::sequence(policy, perm, perm + n);
  thrust::default_random_engine rng(static_cast<uint32_t>(seed ^ (seed >> 32)));
  thrust::shuffle(policy, perm, perm + n, rng);
}

}  // namespace vae::VAE_NS
