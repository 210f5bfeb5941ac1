// Host execution layer costs on this machine: barriers (fiber switches) and barrier-free
// elementwise dispatch. Prints one line per case: median of repeated runs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "blas_core.h"

#include "runtime/compat.cuh"

namespace vae::cpu {

__global__ void barrier_kernel(int* out, int barriers) {
  __shared__ int s[256];
  int acc = 0;
  for (int b = 0; b < barriers; ++b) {
    s[threadIdx.x] = b + threadIdx.x;
    __syncthreads();
    acc += s[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();
  }
  out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

__global__ void one_thread_per_element_kernel(float* x, long long n) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] = x[i] * 1.0001f + 0.5f;
}

__global__ void element_loop_kernel(float* x, long long n) {
  VAE_ELEMENT_LOOP(i, n) { x[i] = x[i] * 1.0001f + 0.5f; }
}

}  // namespace vae::cpu

namespace {

template <typename F>
double median_ms(F f, int reps) {
  std::vector<double> t;
  f();  // warm up: fiber stacks, pool threads
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

int main(int, char** argv) {
  vae::reexec_with_better_openblas_core(argv);
  using namespace vae::cpu;
  std::printf("host execution on %d worker(s)\n", vae::hx::workers());
  std::printf("%-52s %12s %14s\n", "case", "median ms", "per unit");
  {
    const int grid = 128, block = 256;
    // 10 barriers per thread: 5 rounds of 2.
    std::vector<int> out(grid * block);
    const double ms = median_ms([&] { VAE_LAUNCH(barrier_kernel, grid, block, 0, nullptr, out.data(), 5); }, 15);
    std::printf("%-52s %12.3f %11.2f ns\n", "barriers: 128 blocks x 256 threads x 10 barriers", ms,
                ms * 1e6 / (grid * block * 10.0));
  }
  const long long n = 1 << 22;
  std::vector<float> x(n, 1.f);
  {
    const double ms = median_ms(
        [&] {
          VAE_LAUNCH(one_thread_per_element_kernel, static_cast<int>(ceil_div(n, 256)), 256, 0, nullptr, x.data(), n);
        },
        9);
    std::printf("%-52s %12.3f %11.2f ns\n", "elementwise, one thread per element (4 Mi)", ms, ms * 1e6 / n);
  }
  {
    const double ms =
        median_ms([&] { VAE_LAUNCH(element_loop_kernel, elementwise_grid(n, 256), 256, 0, nullptr, x.data(), n); }, 9);
    std::printf("%-52s %12.3f %11.2f ns\n", "elementwise, VAE_ELEMENT_LOOP launch shape (4 Mi)", ms, ms * 1e6 / n);
  }
  return 0;
}
