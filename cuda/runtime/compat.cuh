// The one include of every kernel file. The same source is compiled twice: by nvcc for the
// GPU (namespace vae::gpu) and by the host compiler for the CPU (namespace vae::cpu), where
// the host execution layer provides the CUDA keywords, built-ins and launch.
#pragma once

#include <cuda_runtime.h>
#include <curand_kernel.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#include <mma.h>
#define VAE_NS gpu
#define VAE_HOST_EXEC 0
#else
#include "runtime/hostexec.h"
#include "runtime/wmma_host.h"
#define VAE_NS cpu
#define VAE_HOST_EXEC 1
#endif

// A device function kept out of line (its caller's registers and its own allocated apart): nvcc's
// __noinline__, which the host compiler spells as an attribute.
#if VAE_HOST_EXEC
#define VAE_NOINLINE __attribute__((noinline))
#else
#define VAE_NOINLINE __noinline__
#endif

// Unroll the loop that follows (fixed trip count): an array it indexes stays in registers.
#if VAE_HOST_EXEC
#define VAE_UNROLL _Pragma("GCC unroll 4")
#else
#define VAE_UNROLL _Pragma("unroll")
#endif

// Warp matrix products in TF32 (tensor cores on sm_80 and newer; emulated under host execution).
#if VAE_HOST_EXEC || !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define VAE_HAS_TF32_MMA 1
#else
#define VAE_HAS_TF32_MMA 0
#endif

#include "runtime/api.h"
#include "runtime/check.h"

// Dynamic shared memory: `extern __shared__ T s[]` does not link on the host.
#if VAE_HOST_EXEC
#define VAE_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::vae::hx::dynamic_shared())
#else
#define VAE_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(16) unsigned char vae_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(vae_dynamic_smem_)
#endif

// Columns of a row shared by blockDim.x lanes: strided on the GPU (coalesced), a contiguous
// chunk per lane under host execution (vectorizes; one lane per row is the CPU's shape).
#if VAE_HOST_EXEC
#define VAE_LANE_LOOP(d, n)                                                                               \
  for (int d##_chunk_ = ((n) + (int)blockDim.x - 1) / (int)blockDim.x, d = (int)threadIdx.x * d##_chunk_, \
           d##_end_ = d + d##_chunk_ < (n) ? d + d##_chunk_ : (n);                                        \
       d < d##_end_; ++d)
#else
#define VAE_LANE_LOOP(d, n) for (int d = (int)threadIdx.x; d < (n); d += (int)blockDim.x)
#endif

// Before a short fixed-length loop that the host compiler should turn into vector instructions:
// keeps GCC from unrolling it into scalar code first. Nothing on the GPU.
#if VAE_HOST_EXEC
#define VAE_HOST_VECTOR_LOOP _Pragma("GCC unroll 1") _Pragma("GCC ivdep")
#else
#define VAE_HOST_VECTOR_LOOP
#endif

// Element loops of elementwise kernels. On the GPU a grid-stride loop (coalesced); under host
// execution each block takes an equal share and each of its threads one contiguous chunk
// (a multiple of 16 elements), which the host compiler vectorizes.
#if VAE_HOST_EXEC
#define VAE_ELEMENT_LOOP(i, n) \
  for (long long i##_end_ = 0, i = ::vae::hx::thread_chunk((long long)(n), 16, &i##_end_); i < i##_end_; ++i)
// (rows, cols) elements, row-major: whole rows per thread, so no division per element.
#define VAE_ROW_COL_LOOP(r, c, rows, cols)                                                                      \
  for (long long r##_end_ = 0, r = ::vae::hx::thread_chunk((long long)(rows), 1, &r##_end_); r < r##_end_; ++r) \
    for (int c = 0; c < (cols); ++c)
#else
#define VAE_ELEMENT_LOOP(i, n)                                                             \
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (long long)(n); \
       i += (long long)blockDim.x * gridDim.x)
#define VAE_ROW_COL_LOOP(r, c, rows, cols)                                                                       \
  for (long long r##_i_ = (long long)blockIdx.x * blockDim.x + threadIdx.x; r##_i_ < (long long)(rows) * (cols); \
       r##_i_ += (long long)blockDim.x * gridDim.x)                                                              \
    for (long long r = r##_i_ / (cols), r##_once_ = 1; r##_once_; r##_once_ = 0)                                 \
      for (int c = (int)(r##_i_ - r * (cols)), c##_once_ = 1; c##_once_; c##_once_ = 0)
#endif

namespace vae::VAE_NS {

inline long long ceil_div(long long a, long long b) { return (a + b - 1) / b; }

// Blocks of `block` threads for an elementwise kernel over n elements.
inline int elementwise_grid(long long n, int block) {
  const LaunchPolicy& p = launch_policy();
  long long blocks = ceil_div(n, block);
  const long long by_work = ceil_div(n, p.min_block_work > 0 ? p.min_block_work : 1);
  if (blocks > by_work) blocks = by_work;
  if (blocks > p.max_blocks) blocks = p.max_blocks;
  return blocks < 1 ? 1 : static_cast<int>(blocks);
}

#if !VAE_HOST_EXEC
// The launch attribute of thread-block clusters of `cluster` blocks along x.
inline cudaLaunchAttribute cluster_attribute(unsigned cluster) {
  cudaLaunchAttribute a = {};
  a.id = cudaLaunchAttributeClusterDimension;
  a.val.clusterDim.x = cluster;
  a.val.clusterDim.y = a.val.clusterDim.z = 1;
  return a;
}
#endif

// Launches kernel<<<grid, block, smem, stream>>>(args...) and returns the launch status; with
// kCooperative, a cooperative launch (every block resident at once: grid barriers allowed), and
// with cluster > 1 (cooperative launches only) in thread-block clusters of `cluster` consecutive
// blocks of a 1-D grid (sm_90 or host execution; runtime/cluster.cuh).
template <bool kCooperative = false, typename... Params, typename... Args>
cudaError_t launch_kernel_in_clusters(const char* name, void (*kernel)(Params...), dim3 grid, unsigned cluster,
                                      dim3 block, size_t smem, cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel argument count");
  if (cluster != 1 && !kCooperative) return cudaErrorInvalidClusterSize;
  using Bound = std::tuple<std::decay_t<Params>...>;
  Bound bound(std::forward<Args>(args)...);
#if VAE_HOST_EXEC
  (void)stream;
  struct Call {
    void (*kernel)(Params...);
    Bound* bound;
  } call{kernel, &bound};
  ::vae::hx::KernelThunk thunk{[](const void* p) {
                                 const Call* c = static_cast<const Call*>(p);
                                 std::apply(c->kernel, *c->bound);
                               },
                               &call, name};
  return kCooperative ? ::vae::hx::launch_cooperative(thunk, grid, block, smem, cluster)
                      : ::vae::hx::launch(thunk, grid, block, smem);
#else
  (void)name;
  void* ptrs[sizeof...(Params) > 0 ? sizeof...(Params) : 1];
  std::apply(
      [&](auto&... v) {
        int i = 0;
        ((ptrs[i++] = static_cast<void*>(&v)), ...);
      },
      bound);
  cudaError_t err = cudaSuccess;
  if (cluster > 1) {
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = block;
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    cudaLaunchAttribute attrs[2] = {cluster_attribute(cluster), {}};
    attrs[1].id = cudaLaunchAttributeCooperative;
    attrs[1].val.cooperative = 1;
    config.attrs = attrs;
    config.numAttrs = 2;
    err = cudaLaunchKernelExC(&config, reinterpret_cast<const void*>(kernel), ptrs);
  } else if (kCooperative) {
    err = cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, ptrs, smem, stream);
  } else {
    err = cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, block, ptrs, smem, stream);
  }
  return err != cudaSuccess ? err : cudaGetLastError();
#endif
}
template <bool kCooperative = false, typename... Params, typename... Args>
cudaError_t launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, Args&&... args) {
  return launch_kernel_in_clusters<kCooperative>(name, kernel, grid, 1, block, smem, stream,
                                                 std::forward<Args>(args)...);
}

// The most blocks of `block_threads` threads and `smem` bytes of dynamic shared memory that can be
// resident at once: the grid of a cooperative launch. GPU: the occupancy times the SMs; CPU: one
// block per worker.
template <typename... Params>
int cooperative_max_blocks(void (*kernel)(Params...), int block_threads, size_t smem) {
#if VAE_HOST_EXEC
  (void)kernel, (void)block_threads, (void)smem;
  return ::vae::hx::workers();
#else
  int dev = 0, sms = 0, per_sm = 0;
  VAE_CUDA_CHECK(cudaGetDevice(&dev));
  VAE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  VAE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, reinterpret_cast<const void*>(kernel),
                                                               block_threads, smem));
  return per_sm * sms;
#endif
}

// The most clusters of `cluster` blocks (of `block_threads` threads and `smem` bytes of dynamic
// shared memory) that can be resident at once; 0 where the device has no clusters (before sm_90).
// CPU: the workers' blocks in clusters.
template <typename... Params>
int cooperative_max_clusters(void (*kernel)(Params...), int block_threads, size_t smem, int cluster) {
#if VAE_HOST_EXEC
  (void)kernel, (void)block_threads, (void)smem;
  return ::vae::hx::workers() / cluster;
#else
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(cluster));
  config.blockDim = dim3(static_cast<unsigned>(block_threads));
  config.dynamicSmemBytes = smem;
  cudaLaunchAttribute attr = cluster_attribute(static_cast<unsigned>(cluster));
  config.attrs = &attr;
  config.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();  // no clusters on this device
    return 0;
  }
  return clusters;
#endif
}

}  // namespace vae::VAE_NS

// Launch with a check that names the kernel, file and line.
#define VAE_LAUNCH(kernel, grid, block, smem, stream, ...) \
  VAE_CUDA_CHECK(::vae::VAE_NS::launch_kernel(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__))
#define VAE_LAUNCH_COOPERATIVE(kernel, grid, block, smem, stream, ...) \
  VAE_CUDA_CHECK(::vae::VAE_NS::launch_kernel<true>(#kernel, kernel, grid, block, smem, stream, __VA_ARGS__))
#define VAE_LAUNCH_COOPERATIVE_CLUSTERS(kernel, grid, cluster, block, smem, stream, ...)                             \
  VAE_CUDA_CHECK(::vae::VAE_NS::launch_kernel_in_clusters<true>(#kernel, kernel, grid, cluster, block, smem, stream, \
                                                                __VA_ARGS__))

// Nanoseconds on a clock every block of a launch shares, for timers inside kernels: the GPU's
// %globaltimer, or the steady clock under host execution.
namespace vae::VAE_NS {
__device__ __forceinline__ unsigned long long global_timer_ns() {
#if VAE_HOST_EXEC
  return static_cast<unsigned long long>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
#else
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
#endif
}
}  // namespace vae::VAE_NS

// A grid-wide barrier in a kernel launched with VAE_LAUNCH_COOPERATIVE; and the same barrier in its
// two halves, by every thread of the block: VAE_GRID_ARRIVE(token) (the block's writes before it
// are released; thread 0's `token`, an unsigned lvalue, says which barrier) and later
// VAE_GRID_WAIT(token) (returns once every block has arrived; their writes acquired). Between
// them the block may work on what no other block writes before the barrier. Arrivals and waits
// alternate, and every block arrives at the same barriers in the same order.
#if VAE_HOST_EXEC
#define VAE_GRID_SYNC() ::vae::hx::sync_grid(__FILE__, __LINE__)
#define VAE_GRID_ARRIVE(token) ((void)(token), ::vae::hx::grid_arrive(__FILE__, __LINE__))
#define VAE_GRID_WAIT(token) ((void)(token), ::vae::hx::grid_wait(__FILE__, __LINE__))
#else
#define VAE_GRID_SYNC() ::cooperative_groups::this_grid().sync()
#define VAE_GRID_ARRIVE(token)                                                           \
  do {                                                                                   \
    const unsigned vae_grid_token_ = ::cooperative_groups::this_grid().barrier_arrive(); \
    if (threadIdx.x == 0) (token) = vae_grid_token_;                                     \
  } while (0)
#define VAE_GRID_WAIT(token) ::cooperative_groups::this_grid().barrier_wait(static_cast<unsigned>(token))
#endif
