// Copies from global into shared memory that a thread requests and waits for later, in groups
// (sm_80's cp.async): several loads in flight while the block computes on earlier ones. Before
// sm_80 and under host execution the copy happens at once and the waits have nothing to wait for.
// A copy must be followed by async_wait and __syncthreads before another thread reads its target.
#pragma once

#include "runtime/compat.cuh"

#if !VAE_HOST_EXEC && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define VAE_HAS_CP_ASYNC 1
#else
#define VAE_HAS_CP_ASYNC 0
#endif

namespace vae::VAE_NS {

// *dst = valid ? *src : 0, one float (src is not read when !valid).
__device__ __forceinline__ void async_copy_float(float* dst, const float* src, bool valid) {
#if VAE_HAS_CP_ASYNC
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(to), "l"(src), "r"(valid ? 4 : 0) : "memory");
#else
  *dst = valid ? *src : 0.f;
#endif
}

// dst[0..3] = src[0..3], four floats, both 16-byte aligned (L2 only: the operands of the fused
// step's tiles are read once per block).
__device__ __forceinline__ void async_copy_float4(float* dst, const float* src) {
#if VAE_HAS_CP_ASYNC
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(to), "l"(src) : "memory");
#else
  for (int t = 0; t < 4; ++t) dst[t] = src[t];
#endif
}

// Closes the group of the copies this thread requested since the last commit.
__device__ __forceinline__ void async_commit() {
#if VAE_HAS_CP_ASYNC
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `pending` of this thread's committed groups are still in flight.
template <int pending>
__device__ __forceinline__ void async_wait() {
#if VAE_HAS_CP_ASYNC
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#endif
}

// Asks for the line holding *p in the SM's L1 (no register, no wait): a later load of it hits
// there. Nothing under host execution.
__device__ __forceinline__ void prefetch_l1(const float* p) {
#if !VAE_HOST_EXEC && defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L1 [%0];\n" ::"l"(p));
#else
  (void)p;
#endif
}

// A load that bypasses the SM's L1 (another block wrote it during this launch and made it
// visible with a fence; an L1 line from an earlier phase could be stale).
__device__ __forceinline__ float load_global_coherent(const float* p) {
#if VAE_HOST_EXEC
  return *p;
#else
  return __ldcg(p);
#endif
}

}  // namespace vae::VAE_NS
