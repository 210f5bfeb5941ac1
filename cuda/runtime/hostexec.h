// Host execution layer: runs CUDA kernel source on the CPU.
//
// Each CUDA thread runs on a fiber; the fibers of one block share one OS thread; blocks are
// spread over a small worker pool. Fibers are lazy: a thread runs on the current fiber until
// it meets a barrier, so kernels without barriers run with no context switch at all.
// Included only by the host compiler, through compat.cuh.
#pragma once

#if defined(__CUDACC__)
#error "hostexec.h is for the host compiler; nvcc builds use the CUDA runtime directly"
#endif

// CUDA headers first: curand_mtgp32_kernel.h declares `extern const uint3 threadIdx`, which
// the macros below would otherwise rewrite.
#include <cuda_runtime.h>
#include <curand_kernel.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "runtime/workers.h"

#include "runtime/sanitizers.h"

namespace vae::hx {

// Built-in variables of the CUDA thread now running on this OS thread. Inline and constant-
// initialised, so that access needs no TLS wrapper call (cheaper, and GCC 12's UBSan null check
// misreads the wrapper's flags as a null address).
inline thread_local uint3 tls_thread_idx{};
inline thread_local uint3 tls_block_idx{};
inline thread_local dim3 tls_block_dim{};
inline thread_local dim3 tls_grid_dim{};

// A kernel invocation with its arguments bound: fn(args) runs one CUDA thread.
struct KernelThunk {
  void (*fn)(const void* args);
  const void* args;
  const char* name;
};

// Runs grid x block threads of `thunk`; returns when all blocks are done (the CPU target
// executes streams synchronously, so stream order holds trivially).
cudaError_t launch(const KernelThunk& thunk, dim3 grid, dim3 block, size_t dynamic_smem_bytes);
// A cooperative launch: every block resident at once, each on its own worker, so that the
// blocks can wait for each other at grid barriers (sync_grid). At most workers() blocks
// (cudaErrorCooperativeLaunchTooLarge otherwise).
// With cluster > 1, the blocks form thread-block clusters of `cluster` consecutive blocks along x
// (a 1-D grid of a multiple of `cluster` blocks; cudaErrorInvalidClusterSize otherwise): they meet
// at cluster barriers (cluster_arrive, cluster_wait) and read each other's dynamic shared memory
// (cluster_peer_shared), as sm_90's clusters do.
cudaError_t launch_cooperative(const KernelThunk& thunk, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
                               unsigned cluster = 1);

// This thread's share [begin, *end) of n elements: an equal share per block, then chunks of a
// multiple of `granule` per thread (the element loops of compat.cuh).
inline long long thread_chunk(long long n, long long granule, long long* end) {
  const long long blocks = tls_grid_dim.x, b = tls_block_idx.x;
  const long long block_begin = n * b / blocks, block_end = n * (b + 1) / blocks;
  const long long per_thread = (block_end - block_begin + tls_block_dim.x - 1) / tls_block_dim.x;
  const long long chunk = (per_thread + granule - 1) / granule * granule;
  const long long begin = block_begin + chunk * tls_thread_idx.x;
  *end = begin + chunk < block_end ? begin + chunk : block_end;
  return begin;
}

// Dynamic shared memory of the running block (poisoned with NaN bytes at block start).
void* dynamic_shared();

// Barriers and warp exchange, called from kernels through the CUDA-named wrappers below.
void sync_block(const char* file, int line);
// A grid barrier of a cooperative launch: the block's threads, then every block. A block that
// exits while others wait, or blocks at different barriers, abort with the file and line.
void sync_grid(const char* file, int line);
// The grid barrier in two halves, by every thread of the block: the block arrives once all its
// threads have, and grid_wait returns once every block has arrived at the barrier the block
// arrived at last. Arrivals and waits alternate (a second arrival or a full barrier before the
// wait, or a wait without an arrival, aborts with the file and line); a wait at a barrier that
// a block exited without reaching aborts as a deadlock.
void grid_arrive(const char* file, int line);
void grid_wait(const char* file, int line);
// By one thread of a block of a cooperative launch: returns once *counter (which other blocks
// raise atomically) reaches `count`. Every block waiting or exited for seconds aborts as a deadlock.
// A relaxed read, as the GPU's: the caller's __threadfence after it orders the reads that follow.
void wait_count(const unsigned* counter, unsigned count);
void sync_warp(unsigned mask);
// A cluster barrier in two halves (barrier.cluster.arrive / .wait), by every thread of the block: the
// block arrives once all its threads have (what they wrote before is then visible to the cluster's
// blocks after their wait), and a wait returns once every block of the cluster has arrived since
// the block's own arrival. Arrivals and waits alternate; a block that exits while a peer waits for
// it, or a wait without an arrival, aborts with the file and line.
void cluster_arrive(const char* file, int line);
void cluster_wait(const char* file, int line);
// The address in the dynamic shared memory of block `rank` of this block's cluster that p has in
// this block's (mapa): p must lie in this block's dynamic shared memory.
void* cluster_peer_shared(const void* p, unsigned rank);
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane);  // value of src_lane
unsigned warp_ballot(unsigned mask, bool predicate);

inline unsigned linear_thread() {
  return tls_thread_idx.x + tls_block_dim.x * (tls_thread_idx.y + tls_block_dim.y * tls_thread_idx.z);
}
inline int lane_id() { return static_cast<int>(linear_thread() & 31u); }

template <typename T>
inline T shfl_to(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "warp shuffle of types up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(mask, bits, src);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// The GPU's fences told to ThreadSanitizer. Kernels order what blocks share as CUDA does: relaxed
// atomics, made ordering by __threadfence (writes, a fence, then the atomic that publishes them: a
// release; an atomic read of a counter, then a fence, then reads of what it counts: an acquire).
// TSan does not model fences, so a TSan build (VAE_TSAN=ON; cmake/test.sh builds one) tells it
// these pairs, per CUDA thread: a fence makes the thread's next atomic write a release of all that
// came before it, and acquires what was released to every atomic the thread read (or wrote) since
// its last fence. A block that reads another's data without the counter, the counter without the
// fence, or publishes before it writes, is then a race that TSan reports. A block's threads share
// its worker's OS thread, one TSan thread: races within a block are not what this finds.
#ifdef VAE_HX_TSAN
struct TsanFences {
  bool release_next = false;  // a fence came after the thread's last atomic write
  int reads = 0;              // atomics read since the last fence (past kMax, the first kMax)
  static constexpr int kMax = 64;
  const void* read[kMax] = {};
};
inline thread_local TsanFences* tls_tsan_fences = nullptr;  // the running CUDA thread's (hostexec.cpp)
inline void tsan_fence() {
  TsanFences* f = tls_tsan_fences;
  if (!f) return;
  for (int i = 0; i < f->reads; ++i) __tsan_acquire(const_cast<void*>(f->read[i]));
  f->reads = 0;
  f->release_next = true;
}
inline void tsan_atomic_read(const void* p) {
  TsanFences* f = tls_tsan_fences;
  if (f && f->reads < TsanFences::kMax) f->read[f->reads++] = p;
}
// Before the atomic write (a release after it could come after another thread's acquire that saw it).
inline void tsan_atomic_write(void* p) {
  TsanFences* f = tls_tsan_fences;
  if (!f) return;
  if (f->release_next) __tsan_release(p);
  f->release_next = false;
  tsan_atomic_read(p);
}
// A TSan build's fence: the annotations, and the compiler kept from moving memory accesses across
// it (TSan warns of a real fence, which it would not see; the atomics are its calls anyway).
inline void fence() {
  __atomic_signal_fence(__ATOMIC_SEQ_CST);
  tsan_fence();
}
#else
inline void tsan_atomic_read(const void*) {}
inline void tsan_atomic_write(void*) {}
inline void fence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#endif

// Read-modify-write as a compare-and-swap loop: blocks run in parallel on the worker pool.
template <typename T, typename F>
inline T atomic_update(T* p, F f) {
  tsan_atomic_write(p);
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  T desired = f(old);
  while (!__atomic_compare_exchange(p, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) desired = f(old);
  return old;
}
template <typename T>
inline T atomic_add(T* p, T v) {
  if constexpr (std::is_integral_v<T>) {
    tsan_atomic_write(p);
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
  } else {
    return atomic_update(p, [v](T o) { return o + v; });
  }
}
template <typename T>
inline T atomic_exchange(T* p, T v) {
  tsan_atomic_write(p);
  return __atomic_exchange_n(p, v, __ATOMIC_RELAXED);
}
template <typename T>
inline T atomic_cas(T* p, T expected, T desired) {
  tsan_atomic_write(p);
  __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}

}  // namespace vae::hx

// ---- CUDA keywords and built-ins under the host compiler -----------------------------------
#undef __shared__
#define __shared__ static thread_local
// Kernels are built for AVX-512, AVX2 and baseline x86-64; the loader picks the best the CPU has.
#undef __global__
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(VAE_NO_TARGET_CLONES)
#define VAE_KERNEL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VAE_KERNEL_CLONES
#endif
#define __global__ VAE_KERNEL_CLONES
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __grid_constant__
#define __grid_constant__
#endif
#define threadIdx (::vae::hx::tls_thread_idx)
#define blockIdx (::vae::hx::tls_block_idx)
#define blockDim (::vae::hx::tls_block_dim)
#define gridDim (::vae::hx::tls_grid_dim)
#ifndef warpSize
#define warpSize 32
#endif

#define __syncthreads() ::vae::hx::sync_block(__FILE__, __LINE__)
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::vae::hx::sync_warp(mask); }
inline void __threadfence() { ::vae::hx::fence(); }
inline void __threadfence_block() { ::vae::hx::fence(); }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  const int lane = ::vae::hx::lane_id();
  return ::vae::hx::shfl_to(mask, v, (lane & ~(width - 1)) + (src_lane & (width - 1)));
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::vae::hx::lane_id();
  const int seg = lane & (width - 1);
  const int src = seg + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return ::vae::hx::shfl_to(mask, v, src);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = ::vae::hx::lane_id();
  const int seg = lane & (width - 1);
  const int src = seg - static_cast<int>(delta) >= 0 ? lane - static_cast<int>(delta) : lane;
  return ::vae::hx::shfl_to(mask, v, src);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = ::vae::hx::lane_id();
  const int src = lane ^ lane_mask;
  return ::vae::hx::shfl_to(mask, v, ((src & ~(width - 1)) == (lane & ~(width - 1))) ? src : lane);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return ::vae::hx::warp_ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return ::vae::hx::warp_ballot(mask, pred != 0) != 0; }
inline int __all_sync(unsigned mask, int pred) {
  return ::vae::hx::warp_ballot(mask, pred != 0) == ::vae::hx::warp_ballot(mask, true);
}

inline int atomicAdd(int* p, int v) { return ::vae::hx::atomic_add(p, v); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return ::vae::hx::atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) { return ::vae::hx::atomic_add(p, v); }
inline float atomicAdd(float* p, float v) { return ::vae::hx::atomic_add(p, v); }
inline double atomicAdd(double* p, double v) { return ::vae::hx::atomic_add(p, v); }
inline int atomicMax(int* p, int v) {
  return ::vae::hx::atomic_update(p, [v](int o) { return o > v ? o : v; });
}
inline int atomicMin(int* p, int v) {
  return ::vae::hx::atomic_update(p, [v](int o) { return o < v ? o : v; });
}
inline int atomicExch(int* p, int v) { return ::vae::hx::atomic_exchange(p, v); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return ::vae::hx::atomic_exchange(p, v); }
inline int atomicCAS(int* p, int expected, int desired) { return ::vae::hx::atomic_cas(p, expected, desired); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long expected, unsigned long long desired) {
  return ::vae::hx::atomic_cas(p, expected, desired);
}
inline unsigned atomicCAS(unsigned* p, unsigned expected, unsigned desired) {
  return ::vae::hx::atomic_cas(p, expected, desired);
}

inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(static_cast<int>(x)); }

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
