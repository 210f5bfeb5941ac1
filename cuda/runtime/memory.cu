// Memory API of one target: the CUDA runtime on the GPU, host memory on the CPU.
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

#include <unistd.h>

#include "runtime/compat.cuh"

namespace vae::VAE_NS {

#if VAE_HOST_EXEC

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) throw Error("out of host memory allocating " + std::to_string(bytes) + " bytes");
  return p;
}
void device_free(void* p) noexcept { std::free(p); }
size_t memory_available() {
  // MemAvailable (kB): free memory and what the kernel can reclaim without swapping.
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  size_t kb = 0;
  while (meminfo >> key >> kb) {
    if (key == "MemAvailable:") return kb * 1024;
    meminfo.ignore(256, '\n');
  }
  const long pages = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) : 0;
}
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
  VAE_CUDA_CHECK(cudaMalloc(&p, bytes));
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
