// The CPU's arithmetic ceiling: every worker of the host-execution pool at once runs independent
// chains of fused multiply-adds on the widest vectors the CPU has (AVX-512, else AVX2 + FMA), with
// no loads; the sum of the workers' rates. No GEMM runs faster (bench_step's "fma floor": the step's
// GEMM work at this rate); with two vCPUs that are one core's two hyperthreads, it is one core's.
#pragma once

#include <atomic>
#include <chrono>
#include <vector>

#include "runtime/workers.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace vae::bench {

struct FmaPeak {
  double gflops = 0;  // all workers together (0: no FMA vectors)
  int workers = 0;
  const char* isa = "none";  // "AVX-512", "AVX2"
};

namespace fma_detail {

constexpr long kIterations = 4'000'000;
constexpr int kChains = 12;  // independent accumulators: enough to cover the FMA latency on both ports

#if defined(__x86_64__)
// Returns a value of the chains so that the compiler keeps them; flop += kIterations * kChains * 2 * lanes.
__attribute__((target("avx512f"))) inline float chains_avx512() {
  __m512 acc[kChains];
  const __m512 mul = _mm512_set1_ps(0.999999f), add = _mm512_set1_ps(1e-7f);
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(static_cast<float>(c));
  for (long i = 0; i < kIterations; ++i)
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
  alignas(64) float lanes[16];  // (not _mm512_reduce_add_ps: GCC 12 warns of an uninitialized value inside it)
  float sum = 0;
  for (int c = 0; c < kChains; ++c) {
    _mm512_store_ps(lanes, acc[c]);
    for (float v : lanes) sum += v;
  }
  return sum;
}
__attribute__((target("avx2,fma"))) inline float chains_avx2() {
  __m256 acc[kChains];
  const __m256 mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-7f);
  for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(static_cast<float>(c));
  for (long i = 0; i < kIterations; ++i)
#pragma GCC unroll 12
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
  alignas(32) float lanes[8];
  float sum = 0;
  for (int c = 0; c < kChains; ++c) {
    _mm256_store_ps(lanes, acc[c]);
    for (float v : lanes) sum += v;
  }
  return sum;
}
#endif

struct Run {
  int lanes = 0;
  bool avx512 = false;
  std::atomic<int> arrived{0};
  std::vector<double> gflops;  // per worker
  std::vector<float> sink;     // the chains' values, so that they are computed
};

inline void worker(int i, void* ctx) {
  Run& r = *static_cast<Run*>(ctx);
  // All workers start together (a worker that took two panels in turn would never pass this).
  r.arrived.fetch_add(1);
  while (r.arrived.load() < static_cast<int>(r.gflops.size())) {
  }
  const auto t0 = std::chrono::steady_clock::now();
#if defined(__x86_64__)
  r.sink[i] = r.avx512 ? chains_avx512() : chains_avx2();
#endif
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.gflops[i] = static_cast<double>(kIterations) * kChains * 2 * r.lanes / s / 1e9;
}

}  // namespace fma_detail

// The best of three runs.
inline FmaPeak measure_fma_peak() {
  FmaPeak p;
#if defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return p;
  p.isa = avx512 ? "AVX-512" : "AVX2";
  p.workers = hx::workers();
  for (int rep = 0; rep < 3; ++rep) {
    fma_detail::Run r;
    r.lanes = avx512 ? 16 : 8;
    r.avx512 = avx512;
    r.gflops.assign(p.workers, 0.0);
    r.sink.assign(p.workers, 0.f);
    hx::parallel_for(p.workers, fma_detail::worker, &r);
    double sum = 0;
    for (double g : r.gflops) sum += g;
    if (sum > p.gflops) p.gflops = sum;
  }
#endif
  return p;
}

}  // namespace vae::bench
