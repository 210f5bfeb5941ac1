// Each fused kernel against the unfused composition it replaces (bench/unfused.cu: cuRAND plus
// one elementwise kernel per stage; for the encoder, the product's own cuBLAS GEMMs + epilogue +
// latent kernel), over a sweep of batch sizes, next to this machine's ceilings measured in the
// same run (device copy, SGEMM, TF32 GEMM). Each figure is the median of many repeats timed
// with CUDA events (steady clock on the CPU), the caches emptied of device memory before each.
// GB/s counts the bytes the operation must move at least (inputs read once, outputs written
// once), the same for both variants; GFLOP/s counts the encoder's multiply-adds.
//
//   bench_kernels [--device cpu|cuda] [--batches 128,1024,8192] [--reps N] [--cache cold|warm]
//
// --cache warm leaves the inputs in cache between repeats, as a training step does.
//
// Without a GPU (or with --device cpu) it runs the same kernels under host execution at small
// batches, so that the program is known to work; its timings are then CPU timings.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "bench_timer.h"
#include "device_context.h"
#include "blas_core.h"
#include "unfused.h"
#include "vae.h"

using namespace vae;

namespace {

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    const int x = std::atoi(item.c_str());
    if (x <= 0) {
      std::fprintf(stderr, "bench_kernels: --batches: '%s' is not a positive integer\n", item.c_str());
      std::exit(2);
    }
    v.push_back(x);
  }
  return v;
}

std::vector<float> random_values(size_t n, uint32_t seed, float lo, float hi) {
  std::vector<float> v(n);
  uint64_t s = seed * 0x9E3779B97F4A7C15ull + 1;
  for (auto& x : v) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = lo + (hi - lo) * static_cast<float>(s >> 40) / static_cast<float>(1ull << 24);
  }
  return v;
}

// Before it is timed, each pair must agree: the fused kernel's outputs against the unfused
// composition's on the same inputs (float sums in another order: a relative tolerance).
struct Agreement {
  int passed = 0, failed = 0;
  void expect(const char* what, int batch, const std::vector<float>& fused, const std::vector<float>& unfused,
              double tol = 2e-4) {
    for (size_t i = 0; i < fused.size(); ++i) {
      const double a = fused[i], b = unfused[i];
      if (!(std::fabs(a - b) <= tol * (1e-3 + std::max(std::fabs(a), std::fabs(b))))) {
        std::printf("MISMATCH %s (batch %d) at %zu: fused %.7g, unfused %.7g\n", what, batch, i, a, b);
        ++failed;
        return;
      }
    }
    ++passed;
  }
  // GEMM outputs: within tol of the largest |value| of the two (summation order differs).
  void expect_gemm(const char* what, int batch, const std::vector<float>& fused, const std::vector<float>& unfused,
                   double tol = 1e-5) {
    double scale = 0;
    for (size_t i = 0; i < fused.size(); ++i)
      scale = std::max({scale, std::fabs(double(fused[i])), std::fabs(double(unfused[i]))});
    for (size_t i = 0; i < fused.size(); ++i) {
      if (!(std::fabs(double(fused[i]) - unfused[i]) <= tol * scale)) {
        std::printf("MISMATCH %s (batch %d) at %zu: fused %.7g, unfused %.7g (largest %.4g)\n", what, batch, i,
                    fused[i], unfused[i], scale);
        ++failed;
        return;
      }
    }
    ++passed;
  }
};

constexpr int D = 784, H = 400, J = 20;  // the default model's input, hidden and latent widths
constexpr double f4 = sizeof(float);

// What every section shares: the target, the timer, this machine's ceilings, the tally of
// agreement checks.
struct Bench {
  DeviceContext& ctx;
  bench::Timer& timer;
  bench::Peaks peak;
  int reps;
  Agreement agree;

  // Times the fused operation and its unfused composition; prints a row for each.
  void pair(const char* op, int batch, double bytes, double flops, const std::function<void()>& fused,
            const std::function<void()>& unfused, const char* unfused_name) {
    const double tf = timer.median_us(fused, reps), tu = timer.median_us(unfused, reps);
    for (int v = 0; v < 2; ++v) {
      const double us = v ? tu : tf;
      const double gbps = bytes / (us * 1e3), gflops = flops / (us * 1e3);
      std::printf("%-34s %6d %-8s %10.2f %9.1f %6.1f%%", v ? "" : op, batch, v ? unfused_name : "fused", us, gbps,
                  100 * gbps / peak.copy_gbps);
      if (flops > 0)
        std::printf(" %9.1f %6.1f%%", gflops, 100 * gflops / peak.sgemm_gflops);
      else
        std::printf(" %9s %7s", "", "");
      if (!v) std::printf(" %7.2fx", tu / tf);
      std::printf("\n");
    }
  }
};

// Scratch of the two-stage reductions (tickets zero, as they need).
struct Scratch {
  DeviceBuffer<unsigned> tickets;
  DeviceBuffer<float> partial;
  explicit Scratch(const DeviceContext& ctx) : tickets(ctx, kReduceTickets), partial(ctx, kReducePartialFloats) {}
  ReduceScratch get() const { return {tickets.data(), partial.data()}; }
};

// The latent stage alone (ε, z = μ + σ ε, the KL per row) and its backward.
void latent_stages(Bench& b, int B) {
  DeviceContext& ctx = b.ctx;
  const Target target = ctx.target();
  const cudaStream_t s = ctx.stream();
  const size_t bj = static_cast<size_t>(B) * J;
  DeviceBuffer<float> heads(ctx, random_values(2 * bj, 3, -2.f, 2.f)), z(ctx, bj), eps(ctx, bj + 1), kl(ctx, B),
      grad_z(ctx, random_values(bj, 10, -1.f, 1.f)), grad_heads(ctx, 2 * bj);
  DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{3, 0}});

  NormalGenerator* gen = VAE_CALL(target, unfused::normal_generator_create, 7, s);
  {
    VAE_CALL(target, latent_forward, heads.data(), z.data(), kl.data(), B, J, 1, 1, RandomStream::latent_noise,
             at.data(), KlEstimator::analytic, s);
    const std::vector<float> fused_latent_kl = kl.download();
    VAE_CALL(target, unfused::latent_forward, gen, heads.data(), eps.data(), z.data(), kl.data(), B, J, s);
    b.agree.expect("latent KL", B, fused_latent_kl, kl.download());
    const auto hd = heads.download(), e = eps.download(), zz = z.download();
    std::vector<float> want(bj);  // z = μ + exp(½ log σ²) ε from the cuRAND draws
    for (size_t i = 0; i < bj; ++i) {
      const size_t r = i / J, j = i % J;
      want[i] = static_cast<float>(hd[r * 2 * J + j] + std::exp(0.5 * hd[r * 2 * J + J + j]) * e[i]);
    }
    b.agree.expect("unfused z", B, want, zz);
  }
  b.pair(
      "latent: eps, reparam, KL (J=20)", B, (2.0 * bj + bj + B) * f4, 0,
      [&] {
        VAE_CALL(target, latent_forward, heads.data(), z.data(), kl.data(), B, J, 1, 1, RandomStream::latent_noise,
                 at.data(), KlEstimator::analytic, s);
      },
      [&] { VAE_CALL(target, unfused::latent_forward, gen, heads.data(), eps.data(), z.data(), kl.data(), B, J, s); },
      "cuRAND+2");
  VAE_CALL(target, unfused::normal_generator_destroy, gen);

  // Latent backward: dμ and dlog σ² with the KL terms (z from the fused forward above).
  VAE_CALL(target, latent_backward, heads.data(), z.data(), grad_z.data(), grad_heads.data(), B, J, 1, 1.f / B,
           KlTerm{}, nullptr, nullptr, s);
  const std::vector<float> fused_gheads = grad_heads.download();
  VAE_CALL(target, unfused::latent_backward, heads.data(), z.data(), grad_z.data(), grad_heads.data(), B, J, 1.f / B,
           s);
  b.agree.expect("latent backward", B, fused_gheads, grad_heads.download());
  b.pair(
      "latent backward (J=20)", B, (2.0 * bj + 2 * bj + 2 * bj) * f4, 0,
      [&] {
        VAE_CALL(target, latent_backward, heads.data(), z.data(), grad_z.data(), grad_heads.data(), B, J, 1, 1.f / B,
                 KlTerm{}, nullptr, nullptr, s);
      },
      [&] {
        VAE_CALL(target, unfused::latent_backward, heads.data(), z.data(), grad_z.data(), grad_heads.data(), B, J,
                 1.f / B, s);
      },
      "2 kernels");
}

// The row stages: the Bernoulli and Gaussian log-likelihoods with their gradients, and a dense
// layer's backward epilogue (ReLU derivative, bias gradient).
void row_stages(Bench& b, int B) {
  DeviceContext& ctx = b.ctx;
  const Target target = ctx.target();
  const cudaStream_t s = ctx.stream();
  const size_t bd = static_cast<size_t>(B) * D, bh = static_cast<size_t>(B) * H;
  DeviceBuffer<float> x(ctx, random_values(bd, 1, 0.f, 1.f)), logits(ctx, random_values(bd, 2, -6.f, 6.f)),
      grad(ctx, bd), lp_elements(ctx, bd), log_prob(ctx, B), h(ctx, random_values(bh, 4, -1.f, 1.f)),
      dh(ctx, random_values(bh, 5, -1.f, 1.f)), grad_bias(ctx, H), gauss_out(ctx, random_values(2 * bd, 11, -3.f, 3.f)),
      gauss_grad(ctx, 2 * bd);
  const Scratch reduce(ctx);
  const ReduceScratch scratch = reduce.get();

  // Bernoulli log-likelihood per row and its gradient.
  VAE_CALL(target, bernoulli_reconstruction, logits.data(), x.data(), log_prob.data(), grad.data(), B, D, 1, 1.f / B,
           nullptr, s);
  const std::vector<float> fused_lp = log_prob.download(), fused_grad = grad.download();
  VAE_CALL(target, unfused::bernoulli_reconstruction, logits.data(), x.data(), lp_elements.data(), log_prob.data(),
           grad.data(), B, D, 1.f / B, s);
  b.agree.expect("Bernoulli log p", B, fused_lp, log_prob.download());
  b.agree.expect("Bernoulli gradient", B, fused_grad, grad.download());
  b.pair(
      "Bernoulli recon + gradient (D=784)", B, (3.0 * bd + B) * f4, 0,
      [&] {
        VAE_CALL(target, bernoulli_reconstruction, logits.data(), x.data(), log_prob.data(), grad.data(), B, D, 1,
                 1.f / B, nullptr, s);
      },
      [&] {
        VAE_CALL(target, unfused::bernoulli_reconstruction, logits.data(), x.data(), lp_elements.data(),
                 log_prob.data(), grad.data(), B, D, 1.f / B, s);
      },
      "3 kernels");

  // Gaussian log-likelihood per row and both halves of its gradient.
  VAE_CALL(target, gaussian_reconstruction, gauss_out.data(), x.data(), log_prob.data(), gauss_grad.data(), B, D, 1,
           1.f / B, nullptr, s);
  const std::vector<float> fused_glp = log_prob.download(), fused_ggrad = gauss_grad.download();
  VAE_CALL(target, unfused::gaussian_reconstruction, gauss_out.data(), x.data(), lp_elements.data(), log_prob.data(),
           gauss_grad.data(), B, D, 1.f / B, s);
  b.agree.expect("Gaussian log p", B, fused_glp, log_prob.download());
  b.agree.expect("Gaussian gradient", B, fused_ggrad, gauss_grad.download());
  b.pair(
      "Gaussian recon + gradient (D=784)", B, (2.0 * bd + bd + 2.0 * bd + B) * f4, 0,
      [&] {
        VAE_CALL(target, gaussian_reconstruction, gauss_out.data(), x.data(), log_prob.data(), gauss_grad.data(), B, D,
                 1, 1.f / B, nullptr, s);
      },
      [&] {
        VAE_CALL(target, unfused::gaussian_reconstruction, gauss_out.data(), x.data(), lp_elements.data(),
                 log_prob.data(), gauss_grad.data(), B, D, 1.f / B, s);
      },
      "3 kernels");

  // Dense backward: ReLU derivative in place and the bias gradient (column sums).
  {
    const std::vector<float> dh0 = dh.download();
    VAE_CALL(target, dense_activation_backward, dh.data(), h.data(), grad_bias.data(), B, H, Activation::relu, scratch,
             s);
    const std::vector<float> fused_dh = dh.download(), fused_db = grad_bias.download();
    dh.upload(dh0);
    VAE_CALL(target, unfused::dense_relu_backward, dh.data(), h.data(), grad_bias.data(), B, H, scratch, s);
    b.agree.expect("dense backward gradient", B, fused_dh, dh.download());
    b.agree.expect("dense backward bias gradient", B, fused_db, grad_bias.download());
  }
  b.pair(
      "dense backward, ReLU (400 cols)", B, (3.0 * bh + H) * f4, 0,
      [&] {
        VAE_CALL(target, dense_activation_backward, dh.data(), h.data(), grad_bias.data(), B, H, Activation::relu,
                 scratch, s);
      },
      [&] { VAE_CALL(target, unfused::dense_relu_backward, dh.data(), h.data(), grad_bias.data(), B, H, scratch, s); },
      "2 kernels");
}

// A dense layer's GEMMs with their epilogues riding on them (the step's way: cuBLASLt's
// epilogues on the GPU where it has them, panel epilogues on the CPU) against plain GEMMs and
// separate kernels: the hidden layer's forward (784 -> 400, bias + ReLU) and the output layer's
// backward (400 -> 784: dW and the bias gradient, dh through the ReLU derivative).
void dense_layer(Bench& b, int B) {
  DeviceContext& ctx = b.ctx;
  const Target target = ctx.target();
  const cudaStream_t s = ctx.stream();
  const LinearSlot hidden{0, 0, H, D}, output{0, 0, D, H};
  DeviceBuffer<float> x(ctx, random_values(static_cast<size_t>(B) * D, 21, 0.f, 1.f)),
      w1(ctx, random_values(static_cast<size_t>(H) * D, 22, -0.05f, 0.05f)), b1(ctx, random_values(H, 23, -0.1f, 0.1f)),
      w2(ctx, random_values(static_cast<size_t>(D) * H, 24, -0.05f, 0.05f)),
      g(ctx, random_values(static_cast<size_t>(B) * D, 25, -1.f, 1.f)), y(ctx, static_cast<size_t>(B) * H),
      dw(ctx, static_cast<size_t>(D) * H), db(ctx, D), dh(ctx, static_cast<size_t>(B) * H);
  const Scratch reduce(ctx);
  const ReduceScratch scratch = reduce.get();
  auto plain = [](GemmOp op) {
    op.epilogue = Epilogue::none;
    op.bias_grad = nullptr;
    return op;
  };
  const GemmOp forward = dense_forward_gemm(hidden, x.data(), w1.data(), b1.data(), y.data(), B, Activation::relu);
  const GemmOp weight_grad = dense_weight_grad_gemm(output, g.data(), y.data(), dw.data(), db.data(), B);
  const GemmOp input_grad =
      dense_input_grad_gemm(output, g.data(), w2.data(), dh.data(), B, y.data(), Activation::relu);
  auto with_epilogues = [&] {
    VAE_CALL(target, gemm, ctx.gemm(), forward);
    VAE_CALL(target, gemm, ctx.gemm(), weight_grad);
    VAE_CALL(target, gemm, ctx.gemm(), input_grad);
  };
  auto separate_forward = [&] {
    VAE_CALL(target, gemm, ctx.gemm(), plain(forward));
    VAE_CALL(target, dense_bias_activation_forward, y.data(), b1.data(), B, H, Activation::relu, s);
  };
  auto separate_backward = [&] {
    VAE_CALL(target, gemm, ctx.gemm(), plain(weight_grad));
    VAE_CALL(target, dense_activation_backward, g.data(), nullptr, db.data(), B, D, Activation::identity, scratch, s);
    VAE_CALL(target, gemm, ctx.gemm(), plain(input_grad));
    VAE_CALL(target, dense_activation_backward, dh.data(), y.data(), nullptr, B, H, Activation::relu, scratch, s);
  };
  auto separate = [&] {
    separate_forward();
    separate_backward();
  };
  with_epilogues();
  const auto fy = y.download(), fdw = dw.download(), fdb = db.download(), fdh = dh.download();
  // Two GEMM algorithms sum in different orders: outputs agree to a share of the largest one,
  // and the backward runs on the fused forward's y (a y near 0 may be +tiny in one and 0 in the
  // other, which flips the ReLU derivative there).
  separate_forward();
  b.agree.expect_gemm("dense layer output", B, fy, y.download());
  y.upload(fy);
  separate_backward();
  b.agree.expect_gemm("dense layer weight gradient", B, fdw, dw.download());
  b.agree.expect_gemm("dense layer bias gradient", B, fdb, db.download());
  b.agree.expect_gemm("dense layer input gradient", B, fdh, dh.download());
  b.pair("dense layer, 3 GEMMs + epilogues", B, 0, 3 * 2.0 * B * D * H, with_epilogues, separate, "+3 kern");
}

// Adam over P parameters.
void adam(Bench& b, long long P) {
  DeviceContext& ctx = b.ctx;
  const Target target = ctx.target();
  const cudaStream_t s = ctx.stream();
  const OptimizerHyper hyper;
  const size_t n = static_cast<size_t>(P);
  DeviceBuffer<float> p(ctx, random_values(n, 6, -0.1f, 0.1f)), g(ctx, random_values(n, 7, -1.f, 1.f)),
      m(ctx, random_values(n, 8, -0.01f, 0.01f)), v(ctx, random_values(n, 9, 0.f, 0.01f));
  DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{100, 0}});
  {
    const auto p0 = p.download(), m0 = m.download(), v0 = v.download();
    VAE_CALL(target, optimizer_step, OptimizerKind::adam, hyper, p.data(), g.data(), m.data(), v.data(), P, at.data(),
             0, nullptr, nullptr, s);
    const auto fp = p.download(), fm = m.download(), fv = v.download();
    p.upload(p0), m.upload(m0), v.upload(v0);
    VAE_CALL(target, unfused::adam_step, hyper, p.data(), g.data(), m.data(), v.data(), P, 100, s);
    b.agree.expect("Adam parameters", 0, fp, p.download(), 1e-5);
    b.agree.expect("Adam first moments", 0, fm, m.download(), 1e-5);
    b.agree.expect("Adam second moments", 0, fv, v.download(), 1e-5);
  }
  char name[64];
  std::snprintf(name, sizeof name, "Adam step (%.2fM params)", P / 1e6);
  b.pair(
      name, 0, 7.0 * P * f4, 0,
      [&] {
        VAE_CALL(target, optimizer_step, OptimizerKind::adam, hyper, p.data(), g.data(), m.data(), v.data(), P,
                 at.data(), 0, nullptr, nullptr, s);
      },
      [&] { VAE_CALL(target, unfused::adam_step, hyper, p.data(), g.data(), m.data(), v.data(), P, 100, s); },
      "3 kernels");
}

}  // namespace

int main(int argc, char** argv) {
  reexec_with_better_openblas_core(argv);
  std::string device = "auto", batches_arg, cache = "cold";
  int reps = 0;
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_kernels: %s needs a value\n", argv[i]);
      return 2;
    }
    if (k == "--device")
      device = argv[i + 1];
    else if (k == "--batches")
      batches_arg = argv[i + 1];
    else if (k == "--reps")
      reps = std::atoi(argv[i + 1]);
    else if (k == "--cache")
      cache = argv[i + 1];
    else {
      std::fprintf(stderr, "bench_kernels: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  DeviceContext ctx(resolve_target(device), false);
  const bool gpu = ctx.target() == Target::cuda;
  const std::vector<int> batches = parse_list(batches_arg.empty() ? (gpu ? "128,1024,8192" : "32,128") : batches_arg);
  if (reps <= 0) reps = gpu ? 200 : 9;
  if (cache != "cold" && cache != "warm") {
    std::fprintf(stderr, "bench_kernels: --cache must be cold or warm, not '%s'\n", cache.c_str());
    return 2;
  }
  bench::Timer timer(ctx);
  const bench::Peaks peak = bench::measure_peaks(ctx, timer);
  timer.set_flush(cache == "cold");

  std::printf("bench_kernels on %s: median of %d repeats, ", ctx.description().c_str(), reps);
  if (timer.flush_on())
    std::printf("the caches emptied of device memory before each (cold cache)\n");
  else
    std::printf("inputs left in cache (warm)\n");
  if (!gpu) {
    std::printf(
        "(no GPU in use: these are CPU timings of the kernels under host execution; the copy ceiling is one\n"
        " thread's memmove from memory, which kernels on every worker, from cache, can exceed)\n");
  }
  std::printf("ceilings: device copy %.1f GB/s (%zu MiB, read + write); SGEMM %d^3 %.0f GFLOP/s", peak.copy_gbps,
              peak.copy_bytes >> 20, peak.gemm_side, peak.sgemm_gflops);
  if (gpu) std::printf("; TF32 %.0f GFLOP/s", peak.tf32_gflops);
  std::printf("\n\n%-34s %6s %-8s %10s %9s %7s %9s %7s %8s\n", "operation", "batch", "variant", "us", "GB/s", "%copy",
              "GFLOP/s", "%SGEMM", "speedup");

  Bench b{ctx, timer, peak, reps, {}};
  for (const int B : batches) {
    latent_stages(b, B);
    row_stages(b, B);
  }
  for (const int B : batches) dense_layer(b, B);
  // The default model's parameters, and a large model's on the GPU.
  for (const long long P : gpu ? std::vector<long long>{652824, 16 << 20} : std::vector<long long>{652824}) adam(b, P);
  std::printf("\nfused against unfused outputs: %d agree, %d differ\n", b.agree.passed, b.agree.failed);
  return b.agree.failed ? 1 : 0;
}
