// Thread-block clusters (sm_90) inside a kernel launched in clusters (launch_kernel_in_clusters,
// VAE_LAUNCH_COOPERATIVE_CLUSTERS): the cluster barrier in its two halves, and another block's
// shared memory (distributed shared memory). Under host execution the host layer runs a cluster's
// blocks at once and emulates both (hostexec.h); on the GPU before sm_90 they trap (the launch in
// clusters fails there first).
#pragma once

#include "runtime/compat.cuh"

#if !VAE_HOST_EXEC && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define VAE_HAS_CLUSTERS 1
#else
#define VAE_HAS_CLUSTERS 0
#endif

// By every thread of the block: the block arrives at its cluster's barrier (what its threads wrote
// before, shared memory included, is released to the cluster), then waits until every block of the
// cluster has arrived (their writes acquired). Arrivals and waits alternate; between the two halves
// a block may work on.
#if VAE_HOST_EXEC
#define VAE_CLUSTER_ARRIVE() ::vae::hx::cluster_arrive(__FILE__, __LINE__)
#define VAE_CLUSTER_WAIT() ::vae::hx::cluster_wait(__FILE__, __LINE__)
#else
#define VAE_CLUSTER_ARRIVE() ::vae::VAE_NS::cluster_arrive_release()
#define VAE_CLUSTER_WAIT() ::vae::VAE_NS::cluster_wait_acquire()
#endif

namespace vae::VAE_NS {

#if !VAE_HOST_EXEC
__device__ __forceinline__ void cluster_arrive_release() {
#if VAE_HAS_CLUSTERS
  asm volatile("barrier.cluster.arrive.release;" ::: "memory");
#else
  __trap();
#endif
}
__device__ __forceinline__ void cluster_wait_acquire() {
#if VAE_HAS_CLUSTERS
  asm volatile("barrier.cluster.wait.acquire;" ::: "memory");
#else
  __trap();
#endif
}
#endif

// The address that p (in this block's dynamic shared memory) has in block `rank` of the cluster.
template <typename T>
__device__ __forceinline__ T* cluster_peer(T* p, unsigned rank) {
#if VAE_HOST_EXEC
  return static_cast<T*>(::vae::hx::cluster_peer_shared(p, rank));
#elif VAE_HAS_CLUSTERS
  unsigned long long out;
  asm volatile("mapa.u64 %0, %1, %2;" : "=l"(out) : "l"(reinterpret_cast<unsigned long long>(p)), "r"(rank));
  return reinterpret_cast<T*>(out);
#else
  (void)rank;
  __trap();
  return p;
#endif
}

}  // namespace vae::VAE_NS
