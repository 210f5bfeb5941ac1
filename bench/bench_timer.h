// What the benchmarks share: a timer for target work (CUDA events on the GPU, the steady clock
// around a synchronize on the CPU) that empties the caches of device memory before every timed
// repeat (the runtime's evict_caches: the CPU's lines of every allocation flushed, the GPU's L2
// overwritten), so that no input is served from cache, and reports the median of the repeats;
// and the machine's ceilings measured in the same process (a large device copy, a large SGEMM,
// with TF32 on the GPU).
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <utility>
#include <vector>

#include "device_context.h"
#include "runtime/check.h"

namespace vae::bench {

// The median of v (the upper one of an even count).
inline double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

class Timer {
 public:
  explicit Timer(const DeviceContext& ctx) : ctx_(ctx), gpu_(ctx.target() == Target::cuda) {}

  // Off: inputs stay in cache between repeats, as in a training step, where each kernel reads
  // what the one before it just wrote.
  void set_flush(bool on) { flush_on_ = on; }
  bool flush_on() const { return flush_on_; }

  // Median microseconds of one call of f, over `reps` timed calls after `warmup` untimed ones.
  double median_us(const std::function<void()>& f, int reps, int warmup = 3) {
    for (int i = 0; i < warmup; ++i) f();
    std::vector<double> us(static_cast<size_t>(reps));
    if (gpu_) {
      std::vector<cudaEvent_t> ev(2 * us.size());
      for (auto& e : ev) VAE_CUDA_CHECK(cudaEventCreate(&e));
      for (size_t r = 0; r < us.size(); ++r) {
        flush();
        VAE_CUDA_CHECK(cudaEventRecord(ev[2 * r], ctx_.stream()));
        f();
        VAE_CUDA_CHECK(cudaEventRecord(ev[2 * r + 1], ctx_.stream()));
      }
      ctx_.synchronize();
      for (size_t r = 0; r < us.size(); ++r) {
        float ms = 0;
        VAE_CUDA_CHECK(cudaEventElapsedTime(&ms, ev[2 * r], ev[2 * r + 1]));
        us[r] = 1e3 * ms;
      }
      for (auto& e : ev) cudaEventDestroy(e);
    } else {
      for (auto& u : us) {
        flush();
        ctx_.synchronize();
        const auto t0 = std::chrono::steady_clock::now();
        f();
        ctx_.synchronize();
        u = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      }
    }
    return median(std::move(us));
  }

 private:
  void flush() {
    if (flush_on_) VAE_CALL(ctx_.target(), evict_caches, ctx_.stream());
  }

  const DeviceContext& ctx_;
  bool gpu_;
  bool flush_on_ = true;
};

// A square SGEMM C = A·B of side n on the context's GEMM path (TF32 where the handle has it on).
inline GemmOp square_gemm(const float* a, const float* b, float* c, int n) {
  GemmOp op;
  op.m = op.n = op.k = n;
  op.a = a, op.lda = n;
  op.b = b, op.ldb = n;
  op.c = c, op.ldc = n;
  return op;
}

// The ceilings of this machine, measured now.
struct Peaks {
  double copy_gbps = 0;     // device-to-device copy, bytes read + written
  double sgemm_gflops = 0;  // fp32
  double tf32_gflops = 0;   // GPU only (0 on the CPU)
  int gemm_side = 0;
  size_t copy_bytes = 0;
};

inline Peaks measure_peaks(const DeviceContext& ctx, Timer& timer) {
  const bool gpu = ctx.target() == Target::cuda;
  Peaks p;
  p.copy_bytes = gpu ? (size_t{1} << 30) : (size_t{256} << 20);
  {
    DeviceBuffer<unsigned char> src(ctx, p.copy_bytes), dst(ctx, p.copy_bytes);
    const double us = timer.median_us(
        [&] { VAE_CALL(ctx.target(), copy_on_device, dst.data(), src.data(), p.copy_bytes, ctx.stream()); },
        gpu ? 20 : 5);
    p.copy_gbps = 2.0 * static_cast<double>(p.copy_bytes) / (us * 1e3);
  }
  p.gemm_side = gpu ? 8192 : 1024;
  const size_t n2 = static_cast<size_t>(p.gemm_side) * p.gemm_side;
  std::vector<float> init(n2);
  for (size_t i = 0; i < n2; ++i) init[i] = static_cast<float>((i * 2654435761u) % 2001) / 1000.f - 1.f;
  DeviceBuffer<float> a(ctx, init), b(ctx, init), c(ctx, n2);
  const double flop = 2.0 * n2 * p.gemm_side;
  const auto rate = [&](GemmHandle* h) {
    const GemmOp op = square_gemm(a.data(), b.data(), c.data(), p.gemm_side);
    return flop / (timer.median_us([&] { VAE_CALL(ctx.target(), gemm, h, op); }, gpu ? 10 : 5, 2) * 1e3);
  };
  GemmHandle* fp32 = VAE_CALL(ctx.target(), gemm_create, ctx.stream(), false);
  p.sgemm_gflops = rate(fp32);
  VAE_CALL(ctx.target(), gemm_destroy, fp32);
  if (gpu) {
    GemmHandle* tf32 = VAE_CALL(ctx.target(), gemm_create, ctx.stream(), true);
    p.tf32_gflops = rate(tf32);
    VAE_CALL(ctx.target(), gemm_destroy, tf32);
  }
  return p;
}

}  // namespace vae::bench
