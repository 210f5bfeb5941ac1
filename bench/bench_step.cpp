// Time of one SGVB training step by phase (batch gather, forward, backward, optimizer) for a
// model shape, on the CPU or the GPU. Prints a table; `--device cuda` on a machine with a GPU.
//   bench_step [--device cpu|cuda] [--batch 128] [--hidden 400] [--latent 20] [--steps 200] [--fused-encoder 0|1]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/blas_core.h"

#include "device_context.h"
#include "trainer.h"
#include "vae.h"

using namespace vae;

int main(int argc, char** argv) {
  vae::reexec_with_better_openblas_core(argv);
  std::string device = "auto";
  int batch = 128, hidden = 400, latent = 20, steps = 200, dim = 784, fused = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--device")
      device = v;
    else if (k == "--batch")
      batch = std::atoi(v);
    else if (k == "--hidden")
      hidden = std::atoi(v);
    else if (k == "--latent")
      latent = std::atoi(v);
    else if (k == "--steps")
      steps = std::atoi(v);
    else if (k == "--fused-encoder")
      fused = std::atoi(v);
    else {
      std::fprintf(stderr, "bench_step: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  DeviceContext ctx(resolve_target(device), false);
  ModelConfig mc;
  mc.input_dim = dim;
  mc.hidden = {hidden};
  mc.latent = latent;
  Vae model(ctx, mc, batch, 1);
  model.set_fused_encoder(fused != 0);
  Optimizer opt(ctx, model.layout().total, OptimizerKind::adam, OptimizerHyper{});
  model.params().upload(init_parameters(mc, model.layout(), 1));
  const long long n = static_cast<long long>(batch) * (steps + 10);  // every step its own rows
  std::vector<uint8_t> pixels(static_cast<size_t>(n) * dim);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 2654435761u) >> 24);
  DeviceBuffer<uint8_t> data(ctx, pixels);
  DeviceBuffer<double> totals(ctx, 3);
  DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{0, 0}});

  double t_gather = 0, t_fwd = 0, t_bwd = 0, t_opt = 0;
  auto now = [&] {
    ctx.synchronize();
    return std::chrono::steady_clock::now();
  };
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  for (int s = -10; s < steps; ++s) {  // 10 warm-up steps
    const auto t0 = now();
    ctx.ops().gather_batch(data.data(), PixelType::u8, nullptr, batch, dim, model.input(), false, 1,
                           RandomStream::binarize, at.data(), ctx.stream());
    const auto t1 = now();
    model.forward(batch, {1, RandomStream::latent_noise, at.data()}, true);
    model.accumulate_totals(batch, totals.data());
    const auto t2 = now();
    model.backward(batch);
    const auto t3 = now();
    opt.step(model.params().data(), model.grads().data(), at.data());
    ctx.ops().advance_step(at.data(), batch, ctx.stream());
    const auto t4 = now();
    if (s >= 0) {
      t_gather += ms(t0, t1);
      t_fwd += ms(t1, t2);
      t_bwd += ms(t2, t3);
      t_opt += ms(t3, t4);
    }
  }
  const double total = t_gather + t_fwd + t_bwd + t_opt;
  const double flops =
      2.0 * 3 * batch * (static_cast<double>(dim) * hidden * 2 + hidden * 2.0 * latent + latent * hidden);
  std::printf("bench_step: %d-%d-%d, batch %d, Adam, %s encoder, %d steps on %s\n", dim, hidden, latent, batch,
              fused ? "fused" : "GEMM", steps, ctx.description().c_str());
  std::printf("%-12s %10s %8s\n", "phase", "ms/step", "share");
  for (auto [name, t] :
       {std::pair{"gather", t_gather}, {"forward", t_fwd}, {"backward", t_bwd}, {"optimizer", t_opt}}) {
    std::printf("%-12s %10.4f %7.1f%%\n", name, t / steps, 100 * t / total);
  }
  std::printf("%-12s %10.4f  (%.0f samples/s, GEMM work %.1f GFLOP/s, 60000-image epoch %.2f s)\n", "step",
              total / steps, batch * steps / (total / 1e3), flops * steps / (total / 1e3) / 1e9,
              60000.0 / batch * total / steps / 1e3);
  return 0;
}
