// Each kernel alone at the default model's shapes (784-400-20, batch 128): time per launch and
// the bytes it must move per second; and the fused encoder against the composition it replaces
// (GEMM + epilogue, GEMM + epilogue, latent kernel). On a GPU, compare GB/s with the card's
// memory bandwidth (H100 SXM: 3.35 TB/s) — these shapes are small, so launch latency dominates.
//   bench_kernels [--device cpu|cuda] [--batch 128] [--reps 500]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "device_context.h"
#include "runtime/blas_core.h"
#include "vae.h"

using namespace vae;

int main(int argc, char** argv) {
  reexec_with_better_openblas_core(argv);
  std::string device = "auto";
  int B = 128, reps = 500;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--device")
      device = argv[i + 1];
    else if (k == "--batch")
      B = std::atoi(argv[i + 1]);
    else if (k == "--reps")
      reps = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "bench_kernels: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  DeviceContext ctx(resolve_target(device), false);
  const auto& ops = ctx.ops();
  const cudaStream_t s = ctx.stream();
  const int D = 784, H = 400, J = 20;
  ModelConfig mc;
  Vae model(ctx, mc, B, 1);
  model.params().upload(init_parameters(mc, model.layout(), 1));
  std::vector<float> noise(static_cast<size_t>(B) * D);
  for (size_t i = 0; i < noise.size(); ++i) noise[i] = static_cast<float>((i * 2654435761u) % 1000) / 1000.f;
  DeviceBuffer<float> x(ctx, noise), y(ctx, static_cast<size_t>(B) * D), g(ctx, static_cast<size_t>(B) * D),
      h(ctx, static_cast<size_t>(B) * H), bias(ctx, D), heads(ctx, static_cast<size_t>(B) * 2 * J),
      gheads(ctx, static_cast<size_t>(B) * 2 * J), z(ctx, static_cast<size_t>(B) * J),
      gz(ctx, static_cast<size_t>(B) * J), kl(ctx, B), lp(ctx, B), mean(ctx, static_cast<size_t>(B) * D);
  const size_t P = model.layout().total;
  DeviceBuffer<float> grads(ctx, P), s1(ctx, P), s2(ctx, P);
  DeviceBuffer<double> totals(ctx, 3);
  DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{0, 0}});
  std::vector<uint8_t> pixels(static_cast<size_t>(B) * D, 77);
  DeviceBuffer<uint8_t> data(ctx, pixels);
  y.upload(noise);
  h.upload(std::vector<float>(noise.begin(), noise.begin() + static_cast<size_t>(B) * H));

  auto time_us = [&](const std::function<void()>& f) {
    for (int i = 0; i < 10; ++i) f();
    ctx.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    ctx.synchronize();
    return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
  };
  std::printf("bench_kernels: batch %d, 784-400-20, %d launches each, %s\n", B, reps, ctx.description().c_str());
  std::printf("%-40s %12s %12s\n", "kernel", "us/launch", "GB/s");
  auto row = [&](const char* name, double bytes, const std::function<void()>& f) {
    const double us = time_us(f);
    std::printf("%-40s %12.2f %12.1f\n", name, us, bytes / (us * 1e3));
  };
  const double f4 = sizeof(float);
  row("gather_batch (uint8 -> float)", B * D * (1 + f4), [&] {
    ops.gather_batch(data.data(), PixelType::u8, nullptr, B, D, x.data(), false, 1, RandomStream::binarize, at.data(),
                     s);
  });
  row("gather_batch, dynamic binarization", B * D * (1 + f4), [&] {
    ops.gather_batch(data.data(), PixelType::u8, nullptr, B, D, x.data(), true, 1, RandomStream::binarize, at.data(),
                     s);
  });
  row("dense_bias_activation_forward 128x400", 2.0 * B * H * f4,
      [&] { ops.dense_bias_activation_forward(h.data(), bias.data(), B, H, Activation::relu, s); });
  row("dense_activation_backward 128x784", 3.0 * B * D * f4,
      [&] { ops.dense_activation_backward(g.data(), y.data(), bias.data(), B, D, Activation::relu, s); });
  row("latent_forward (J=20, L=1)", B * J * 4 * f4, [&] {
    ops.latent_forward(heads.data(), z.data(), kl.data(), B, J, 1, 1, RandomStream::latent_noise, at.data(), s);
  });
  row("latent_backward", B * J * 6 * f4,
      [&] { ops.latent_backward(heads.data(), z.data(), gz.data(), gheads.data(), B, J, 1, 1.f / B, s); });
  row("bernoulli_reconstruction (with grad)", 3.0 * B * D * f4,
      [&] { ops.bernoulli_reconstruction(y.data(), x.data(), lp.data(), g.data(), B, D, 1, 1.f / B, s); });
  row("elbo_totals", 2.0 * B * f4, [&] { ops.elbo_totals(lp.data(), kl.data(), B, 1, totals.data(), s); });
  row("optimizer_step (Adam, 652k params)", 7.0 * P * f4, [&] {
    ops.optimizer_step(OptimizerKind::adam, OptimizerHyper{}, model.params().data(), grads.data(), s1.data(), s2.data(),
                       static_cast<long long>(P), at.data(), s);
  });
  // The encoder forward both ways (inputs in model.input()).
  ops.copy_on_device(model.input(), x.data(), static_cast<size_t>(B) * D * sizeof(float), s);
  const double enc_bytes = (static_cast<double>(H) * D + 2.0 * J * H + B * D + B * H + 3.0 * B * J) * f4;
  for (bool fused : {false, true}) {
    model.set_fused_encoder(fused);
    // forward() also decodes; time the whole forward and subtract nothing: both variants decode alike.
    row(fused ? "forward pass, fused encoder" : "forward pass, GEMM encoder", enc_bytes, [&] {
      model.forward(B, {1, RandomStream::latent_noise, at.data()}, false);
    });
  }
  return 0;
}
