// Time of one SGVB training step by phase (batch gather, forward, backward, optimizer) for a
// model shape, on the CPU or the GPU, and the floor under it: the step's GEMMs (the same shapes
// and transposes the step issues) timed alone, and its GEMM work at the rate of a large square
// SGEMM measured in the same run. Prints a table; `--json 1` adds one JSON line.
//   bench_step [--device cpu|cuda] [--batch 128] [--hidden 400] [--latent 20] [--steps 200]
//              [--step composed|fused] [--tf32 0|1] [--json 0|1]
// --step fused times the whole step as the one cooperative kernel (one phase: "fused step").
// With --tf32 1 (GPU) the GEMMs use TF32 tensor cores and the peak is the TF32 rate.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "bench_timer.h"
#include "device_context.h"
#include "blas_core.h"
#include "trainer.h"
#include "vae.h"

using namespace vae;

namespace {

// The GEMMs of one step of Vae::forward + Vae::backward (host/vae.cpp: the same dense_*_gemm
// builders, without their epilogues), on scratch buffers:
// per layer the forward product, dW, and dX for every layer but the first encoder layer (the
// data needs no gradient). rows: B for the encoder and heads, L*B for the decoder.
struct StepGemms {
  std::vector<GemmOp> ops;
  std::vector<GemmOp> with_epilogues;  // the same products with the step's epilogues (ReLU layers)
  double flops = 0;
  std::deque<DeviceBuffer<float>> scratch;  // a deque: references stay valid as it grows
};

StepGemms step_gemms(const DeviceContext& ctx, const ParamLayout& layout, int batch, int samples) {
  StepGemms g;
  auto add = [&](const LinearSlot& s, int rows, bool grad_in) {
    auto& in = g.scratch.emplace_back(ctx, static_cast<size_t>(rows) * s.in);
    auto& w = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out) * s.in);
    auto& out = g.scratch.emplace_back(ctx, static_cast<size_t>(rows) * s.out);
    auto& dw = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out) * s.in);
    auto& b = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out));
    auto& db = g.scratch.emplace_back(ctx, static_cast<size_t>(s.out));
    // The products alone: no epilogues (the floor is the GEMM work).
    auto plain = [](GemmOp op) {
      op.epilogue = Epilogue::none;
      op.bias_grad = nullptr;
      return op;
    };
    g.with_epilogues.push_back(
        dense_forward_gemm(s, in.data(), w.data(), b.data(), out.data(), rows, Activation::relu));
    g.with_epilogues.push_back(dense_weight_grad_gemm(s, out.data(), in.data(), dw.data(), db.data(), rows));
    if (grad_in) {
      g.with_epilogues.push_back(
          dense_input_grad_gemm(s, out.data(), w.data(), in.data(), rows, in.data(), Activation::relu));
    }
    for (size_t i = g.ops.size(); i < g.with_epilogues.size(); ++i) g.ops.push_back(plain(g.with_epilogues[i]));
    g.flops += 2.0 * rows * s.out * s.in * (grad_in ? 3 : 2);
  };
  for (size_t i = 0; i < layout.encoder.size(); ++i) add(layout.encoder[i], batch, i > 0);
  add(layout.heads, batch, !layout.encoder.empty());
  for (const auto& s : layout.decoder) add(s, batch * samples, true);
  add(layout.output, batch * samples, true);
  return g;
}

}  // namespace

int main(int argc, char** argv) {
  vae::reexec_with_better_openblas_core(argv);
  std::string device = "auto", step_kind = "composed";
  int batch = 128, hidden = 400, latent = 20, steps = 200, dim = 784, json = 0, tf32 = 0;
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
    else if (k == "--step")
      step_kind = v;
    else if (k == "--json")
      json = std::atoi(v);
    else if (k == "--tf32")
      tf32 = std::atoi(v);
    else {
      std::fprintf(stderr, "bench_step: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  if (step_kind != "composed" && step_kind != "fused") {
    std::fprintf(stderr, "bench_step: --step must be composed or fused, not '%s'\n", step_kind.c_str());
    return 2;
  }
  const bool fused = step_kind == "fused";
  DeviceContext ctx(resolve_target(device), tf32 != 0);
  ModelConfig mc;
  mc.input_dim = dim;
  mc.hidden = {hidden};
  mc.latent = latent;
  Vae model(ctx, mc, batch, 1);
  Optimizer opt(ctx, model.layout().total, OptimizerKind::adam, OptimizerHyper{});
  model.params().upload(init_parameters(mc, model.layout(), 1));
  const long long n = static_cast<long long>(batch) * (steps + 10);  // every step its own rows
  std::vector<uint8_t> pixels(static_cast<size_t>(n) * dim);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 2654435761u) >> 24);
  DeviceBuffer<uint8_t> data(ctx, pixels);
  DeviceBuffer<double> totals(ctx, 3);
  DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{0, 0}});

  double t_gather = 0, t_fwd = 0, t_bwd = 0, t_opt = 0, t_fused = 0;
  auto now = [&] {
    ctx.synchronize();
    return std::chrono::steady_clock::now();
  };
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  for (int s = -10; s < steps && fused; ++s) {  // 10 warm-up steps; the step as one kernel
    FusedStepArgs a = model.fused_step_args(batch);
    a.data = data.data();
    a.type = PixelType::u8;
    a.seed = 1;
    a.at = at.data();
    a.totals = totals.data();
    opt.set_fused_step_optimizer(a);
    const auto t0 = now();
    VAE_ON(ctx.target(), fused_step)(a, ctx.stream());
    if (s >= 0) t_fused += ms(t0, now());
  }
  for (int s = -10; s < steps && !fused; ++s) {  // 10 warm-up steps
    const auto t0 = now();
    VAE_ON(ctx.target(), gather_batch)
    (data.data(), PixelType::u8, nullptr, batch, dim, model.input(), false, 1, RandomStream::binarize, at.data(),
     ctx.stream());
    const auto t1 = now();
    const Vae::Pass pass = model.forward(batch, {1, RandomStream::latent_noise, at.data()}, true);
    model.accumulate_totals(batch, totals.data());
    const auto t2 = now();
    model.backward(pass);
    const auto t3 = now();
    opt.step(model.params().data(), model.grads().data(), at.data(), batch);
    const auto t4 = now();
    if (s >= 0) {
      t_gather += ms(t0, t1);
      t_fwd += ms(t1, t2);
      t_bwd += ms(t2, t3);
      t_opt += ms(t3, t4);
    }
  }
  const double total = t_gather + t_fwd + t_bwd + t_opt + t_fused;
  const double step_ms = total / steps;
  const double epoch_steps = 60000.0 / batch;

  // The floor: the step's GEMMs alone, and its GEMM work at the large-SGEMM rate.
  bench::Timer timer(ctx);
  const bench::Peaks peak = bench::measure_peaks(ctx, timer);
  const double peak_gflops = ctx.tf32() ? peak.tf32_gflops : peak.sgemm_gflops;  // same precision as the step
  StepGemms gemms = step_gemms(ctx, model.layout(), batch, 1);
  const bool gpu = ctx.target() == Target::cuda;
  const double gemm_ms = 1e-3 * timer.median_us(
                                    [&] {
                                      for (const GemmOp& op : gemms.ops) VAE_ON(ctx.target(), gemm)(ctx.gemm(), op);
                                    },
                                    gpu ? 200 : 50);
  const double step_gemm_gflops = gemms.flops / (gemm_ms * 1e6);
  std::vector<double> cold_us, warm_us, epilogue_us;  // each GEMM alone, from a cold and from a warm cache
  for (const bool cold : {true, false}) {
    timer.set_flush(cold);
    for (const GemmOp& op : gemms.ops) {
      (cold ? cold_us : warm_us)
          .push_back(timer.median_us([&] { VAE_ON(ctx.target(), gemm)
                                           (ctx.gemm(), op); }, gpu ? 200 : 30));
    }
  }
  for (const GemmOp& op : gemms.with_epilogues)
    epilogue_us.push_back(timer.median_us([&] { VAE_ON(ctx.target(), gemm)(ctx.gemm(), op); }, gpu ? 200 : 30));

  std::printf("bench_step: %d-%d-%d, batch %d, Adam, %s step, %d steps on %s\n", dim, hidden, latent, batch,
              step_kind.c_str(), steps, ctx.description().c_str());
  std::printf("%-12s %10s %8s\n", "phase", "ms/step", "share");
  for (auto [name, t] : {std::pair{"gather", t_gather},
                         {"forward", t_fwd},
                         {"backward", t_bwd},
                         {"optimizer", t_opt},
                         {"fused step", t_fused}}) {
    if (t > 0) std::printf("%-12s %10.4f %7.1f%%\n", name, t / steps, 100 * t / total);
  }
  std::printf("%-12s %10.4f  (%.0f samples/s, GEMM work %.1f GFLOP/s, 60000-image epoch %.2f s)\n", "step", step_ms,
              batch / (step_ms / 1e3), gemms.flops / (step_ms * 1e6), epoch_steps * step_ms / 1e3);
  std::printf("%-12s %10.4f  (the step's %zu GEMMs alone, %.1f GFLOP/s: epoch floor %.2f s, the step is %.2fx)\n",
              "gemm floor", gemm_ms, gemms.ops.size(), step_gemm_gflops, epoch_steps * gemm_ms / 1e3,
              step_ms / gemm_ms);
  std::printf(
      "%-12s %10.4f  (its GEMM work at the %d^3 GEMM rate, %.1f GFLOP/s: epoch floor %.2f s, the step is "
      "%.2fx)\n",
      "peak floor", gemms.flops / (peak_gflops * 1e6), peak.gemm_side, peak_gflops,
      epoch_steps * gemms.flops / (peak_gflops * 1e9), step_ms * peak_gflops * 1e6 / gemms.flops);
  std::printf(
      "\nthe step's GEMMs, each alone (epilogue: warm, with the step's bias + ReLU, bias gradient or ReLU "
      "derivative):\n%-28s %10s %10s %10s %10s %12s\n",
      "m x n x k (op)", "cold us", "GFLOP/s", "warm us", "GFLOP/s", "epilogue us");
  for (size_t i = 0; i < gemms.ops.size(); ++i) {
    const GemmOp& op = gemms.ops[i];
    char shape[64];
    std::snprintf(shape, sizeof shape, "%d x %d x %d (%s)", op.m, op.n, op.k,
                  op.trans_a ? "AT B" : (op.trans_b ? "A BT" : "A B"));
    const double flop = 2.0 * op.m * op.n * op.k;
    std::printf("%-28s %10.1f %10.1f %10.1f %10.1f %12.1f\n", shape, cold_us[i], flop / (cold_us[i] * 1e3), warm_us[i],
                flop / (warm_us[i] * 1e3), epilogue_us[i]);
  }
  if (json) {
    std::printf(
        "{\"device\":\"%s\",\"step\":\"%s\",\"batch\":%d,\"step_ms\":%.6f,\"epoch_s\":%.6f,\"step_gemm_gflop\":%.6f,"
        "\"floor_step_gemms_s\":%.6f,\"floor_step_gemms_gflops\":%.3f,\"floor_peak_gemm_s\":%.6f,"
        "\"floor_peak_gemm_gflops\":%.3f}\n",
        ctx.description().c_str(), step_kind.c_str(), batch, step_ms, epoch_steps * step_ms / 1e3, gemms.flops / 1e9,
        epoch_steps * gemm_ms / 1e3, step_gemm_gflops, epoch_steps * gemms.flops / (peak_gflops * 1e9), peak_gflops);
  }
  return 0;
}
