// Memory API of one target: the CUDA runtime on the GPU, host memory on the CPU.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <unistd.h>

#include "runtime/compat.cuh"
#include "runtime/host_memory.h"

#if VAE_HOST_EXEC && defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace vae::VAE_NS {

#if VAE_HOST_EXEC

namespace {
// Every live allocation and its size, for evict_caches. Never destroyed: buffers may be freed
// while the program's statics are.
struct Allocations {
  std::mutex mutex;
  std::unordered_map<void*, size_t> live;
};
Allocations& allocations() {
  static auto* a = new Allocations;
  return *a;
}

#if defined(__x86_64__)
// Writes back and invalidates the cache lines of [p, p + bytes) in every cache of the machine:
// CLFLUSHOPT where the CPU has it (~0.04 ms a MiB on the Xeon of bench/RESULTS-cpu-step.md), else
// CLFLUSH (~0.6 ms a MiB: each waits for the one before).
__attribute__((target("clflushopt"))) void evict_lines_opt(char* p, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 64) _mm_clflushopt(p + i);
}
void evict_lines(char* p, size_t bytes) {
  static const bool opt = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_CLFLUSHOPT);
  }();
  if (opt) {
    evict_lines_opt(p, bytes);
  } else {
    for (size_t i = 0; i < bytes; i += 64) _mm_clflush(p + i);
  }
}
#endif

// Allocations from this size on are checked against the memory left and touched at once (the
// kernel commits host memory lazily: unchecked, a model too large for the machine would be killed
// by it while its buffers fill, with no word; touched, the next check sees them).
constexpr size_t kCheckedAllocation = size_t{16} << 20;
}  // namespace

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t rounded = (bytes + 63) / 64 * 64;
  const bool checked = rounded >= kCheckedAllocation;
  if (checked) {
    const size_t available = host_memory_available();
    if (rounded > available) {
      throw OutOfMemory("cannot allocate " + mebibytes(rounded) + " of host memory: " + mebibytes(available) +
                        " available");
    }
  }
  void* p = std::aligned_alloc(64, rounded);
  if (!p) throw OutOfMemory("cannot allocate " + mebibytes(rounded) + " of host memory");
  if (checked) std::memset(p, 0, rounded);
  Allocations& a = allocations();
  const std::lock_guard<std::mutex> lock(a.mutex);
  a.live.emplace(p, rounded);
  return p;
}
void device_free(void* p) noexcept {
  if (!p) return;
  {
    Allocations& a = allocations();
    const std::lock_guard<std::mutex> lock(a.mutex);
    a.live.erase(p);
  }
  std::free(p);
}
void evict_caches(cudaStream_t) {
  Allocations& a = allocations();
  const std::lock_guard<std::mutex> lock(a.mutex);
#if defined(__x86_64__)
  for (const auto& [p, bytes] : a.live) evict_lines(static_cast<char*>(p), bytes);
  _mm_mfence();  // the evictions done before the timed work starts
#else
  // Elsewhere: overwrite a scratch buffer of twice the last-level cache (or 64 MiB), kept for reuse.
  static std::vector<unsigned char> scratch;
  if (scratch.empty()) {
    const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    scratch.resize(std::max<size_t>(2 * static_cast<size_t>(std::max({l3, l2, 0L})), size_t{64} << 20));
  }
  std::memset(scratch.data(), 1, scratch.size());
#endif
}
size_t memory_available() { return host_memory_available(); }
void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t) {
  if (bytes) std::memcpy(dst, src, bytes);
}
void copy_on_device(void* dst, const void* src, size_t bytes, cudaStream_t) {
  if (bytes) std::memmove(dst, src, bytes);
}
void fill_zero(void* p, size_t bytes, cudaStream_t) {
  if (bytes) std::memset(p, 0, bytes);
}
void synchronize(cudaStream_t) {}
cudaStream_t create_stream() { return nullptr; }
void destroy_stream(cudaStream_t) noexcept {}

LaunchPolicy& launch_policy() {
  // A few blocks per worker, each thread a long contiguous loop; one lane per row.
  static LaunchPolicy p{2 * hx::workers(), 1 << 15, 1, 1, 1, 1};
  return p;
}

#else

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t err = cudaMalloc(&p, bytes);
  if (err == cudaErrorMemoryAllocation) {
    (void)cudaGetLastError();  // not sticky: the context goes on
    size_t free = 0, total = 0;
    cudaMemGetInfo(&free, &total);
    throw OutOfMemory("cannot allocate " + mebibytes(bytes) + " of GPU memory: " + mebibytes(free) + " free");
  }
  VAE_CUDA_CHECK(err);
  return p;
}
void device_free(void* p) noexcept {
  if (p) cudaFree(p);
}
size_t memory_available() {
  size_t free = 0, total = 0;
  VAE_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  return free;
}
void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  VAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
  VAE_CUDA_CHECK(cudaStreamSynchronize(s));  // the host buffer may go away when we return
}
void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  VAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
  VAE_CUDA_CHECK(cudaStreamSynchronize(s));
}
void copy_on_device(void* dst, const void* src, size_t bytes, cudaStream_t s) {
  VAE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, s));
}
void fill_zero(void* p, size_t bytes, cudaStream_t s) { VAE_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, s)); }
void synchronize(cudaStream_t s) { VAE_CUDA_CHECK(cudaStreamSynchronize(s)); }
cudaStream_t create_stream() {
  cudaStream_t s = nullptr;
  VAE_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  return s;
}
void destroy_stream(cudaStream_t s) noexcept {
  if (s) cudaStreamDestroy(s);
}
void evict_caches(cudaStream_t s) {
  // The GPU's L2 overwritten: a scratch buffer of twice its size (at least 32 MiB), made once and
  // kept for the process.
  static const std::pair<void*, size_t> scratch = [] {
    int dev = 0, l2 = 0;
    VAE_CUDA_CHECK(cudaGetDevice(&dev));
    VAE_CUDA_CHECK(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    const size_t bytes = std::max<size_t>(2 * static_cast<size_t>(l2), size_t{32} << 20);
    void* p = nullptr;
    VAE_CUDA_CHECK(cudaMalloc(&p, bytes));
    return std::make_pair(p, bytes);
  }();
  VAE_CUDA_CHECK(cudaMemsetAsync(scratch.first, 0, scratch.second, s));
}

LaunchPolicy& launch_policy() {
  static LaunchPolicy p = [] {
    int dev = 0, sms = 1;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    return LaunchPolicy{8 * sms, 1024, 32, 256, 8, 256};
  }();
  return p;
}

#endif

}  // namespace vae::VAE_NS
