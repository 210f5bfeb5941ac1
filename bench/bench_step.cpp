// Time of one SGVB training step by phase (batch gather, forward, backward, optimizer) for a
// model shape, on the CPU or the GPU, and the floor under it: the step's GEMMs (the same shapes
// and transposes the step issues) timed alone, and its GEMM work at the rate of a large square
// SGEMM measured in the same run. Prints a table; `--json 1` adds one JSON line.
//   bench_step [--device cpu|cuda] [--batch 128] [--dim 784] [--hidden 400] [--latent 20] [--steps 200]
//              [--step composed|fused] [--tf32 0|1] [--json 0|1] [--phases] [--steps-per-launch K]
// --step fused times the whole step as the one cooperative kernel (one phase: "fused step");
// with --phases also each of its phases from the timers inside the kernel (the median and the
// largest over blocks and steps, against the step's wall time), its grid barriers and its split-K
// tickets (the sync points of a step); with
// --steps-per-launch K, K steps in each launch (persistent; the timers then see each launch's last).
// --fused-math ffma|tf32|3xtf32 sets the fused step's tile arithmetic (default: TF32 with --tf32 1,
// else FFMA); --fused-grid N|half launches it on N blocks, or half of fused_step_grid() (the default
// and most; on the GPU two blocks per SM, so half is one per SM); --ticket-chunks N has its GEMM
// phases split K only where that shortens their costliest item by more than N chunks, the cost of a
// split-K ticket (FusedVariant::ticket_chunks; default 0); --row-flags 1 has its GEMM phases meet
// at per-row-block counters instead of grid barriers, and prints the blocks' waits there with
// --phases (FusedVariant::row_flags); --cluster N (2-8; sm_90) launches it in thread-block clusters
// of N blocks, a split tile's K slices meeting in the cluster's shared memory instead of at tickets
// (FusedVariant::cluster).
// --kernels (CPU) adds each kernel's and GEMM's time a step and its share of the step.
// --models N times the composed step of N models as vae sweep's stack takes it (host/model_stack.h:
// every GEMM one strided-batched call, every kernel one launch for all), µs per stacked step and
// per model-step.
//   bench_step --sweep [--batches 32,64,128,256,512,1024] [--steps N] [--json 1] [--models N] [--sweep-flags 0]
//              [--sweep-clusters 0]
// times every variant (composed; fused one step a launch; fused 16 steps a launch; each in fp32
// and, on the GPU, TF32; on the GPU also fused 16 steps a launch with 3xTF32 tiles, with half
// the grid (one block per SM), with tickets of 4 and 12 chunks (fewer split-K splits), with row
// flags unless --sweep-flags 0, and where the GPU has thread-block clusters in clusters of 2, 4
// and 8 and with row flags in clusters of 4 unless --sweep-clusters 0) at every batch, one line
// each, and names the fastest per batch: the measurement `--step auto`'s rule is written from; with --models N (> 1)
// also the stack of N models (composed), its µs per stacked step and per model-step. With --tf32 1 (GPU) the GEMMs use
// TF32 tensor cores and the peak is the TF32 rate.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#include "bench_timer.h"
#include "fma_peak.h"
#include "fused_timers.h"
#include "step_gemms.h"
#include "device_context.h"
#include "blas_core.h"
#include "runtime/workers.h"
#include "trainer.h"
#include "vae.h"

using namespace vae;
using bench::FmaPeak;
using bench::measure_fma_peak;
using bench::step_gemms;
using bench::StepGemms;

namespace {

struct Options {
  std::string device = "auto", step_kind = "composed";
  int batch = 128, hidden = 400, latent = 20, steps = 200, dim = 784, json = 0, tf32 = 0, steps_per_launch = 1;
  int models = 1;        // --models: the composed step of a stack of this many models
  bool kernels = false;  // --kernels: the CPU's time per kernel and GEMM of the step
  bool phases = false, sweep = false;
  // The fused step's variant (Vae::set_fused_variant): --fused-math (else the context's tiles),
  // --fused-grid half, --ticket-chunks, --row-flags, --cluster; --fused-grid N: N blocks (0: the most).
  FusedVariant fused_variant;
  bool fused_math_given = false;
  int fused_grid = 0;
  std::string batches = "32,64,128,256,512,1024";  // --sweep's
  bool sweep_flags = true;                         // --sweep-flags: the sweep's row-flags variants (GPU)
  bool sweep_clusters = true;                      // --sweep-clusters: its variants in clusters (GPU, sm_90)
  bool fused() const { return step_kind == "fused"; }
};

Options parse_options(int argc, char** argv) {
  Options o;
  auto flag = [](const char* v, const char* name) {
    if (std::strcmp(v, "0") != 0 && std::strcmp(v, "1") != 0) {
      std::fprintf(stderr, "bench_step: %s must be 0 or 1, not '%s'\n", name, v);
      std::exit(2);
    }
    return v[0] == '1';
  };
  for (int i = 1; i < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--phases" || k == "--sweep" || k == "--kernels") {
      (k == "--phases" ? o.phases : k == "--sweep" ? o.sweep : o.kernels) = true;
      --i;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_step: %s needs a value\n", argv[i]);
      std::exit(2);
    }
    const char* v = argv[i + 1];
    if (k == "--device")
      o.device = v;
    else if (k == "--batch")
      o.batch = std::atoi(v);
    else if (k == "--dim")
      o.dim = std::atoi(v);
    else if (k == "--hidden")
      o.hidden = std::atoi(v);
    else if (k == "--latent")
      o.latent = std::atoi(v);
    else if (k == "--steps")
      o.steps = std::atoi(v);
    else if (k == "--batches")
      o.batches = v;
    else if (k == "--steps-per-launch")
      o.steps_per_launch = std::atoi(v);
    else if (k == "--step")
      o.step_kind = v;
    else if (k == "--json")
      o.json = std::atoi(v);
    else if (k == "--tf32")
      o.tf32 = std::atoi(v);
    else if (k == "--models")
      o.models = std::atoi(v);
    else if (k == "--ticket-chunks")
      o.fused_variant.ticket_chunks = std::atoi(v);
    else if (k == "--sweep-flags")
      o.sweep_flags = flag(v, "--sweep-flags");
    else if (k == "--row-flags")
      o.fused_variant.row_flags = flag(v, "--row-flags");
    else if (k == "--sweep-clusters")
      o.sweep_clusters = flag(v, "--sweep-clusters");
    else if (k == "--cluster")
      o.fused_variant.cluster = std::atoi(v);
    else if (k == "--fused-grid") {
      o.fused_variant.half_grid = std::strcmp(v, "half") == 0;
      o.fused_grid = o.fused_variant.half_grid ? 0 : std::atoi(v);
    } else if (k == "--fused-math") {
      o.fused_math_given = fused_math_from_name(v, &o.fused_variant.math);
      if (!o.fused_math_given) {
        std::fprintf(stderr, "bench_step: --fused-math must be ffma, tf32 or 3xtf32, not '%s'\n", v);
        std::exit(2);
      }
    } else {
      std::fprintf(stderr, "bench_step: unknown flag %s\n", argv[i]);
      std::exit(2);
    }
  }
  if (o.step_kind != "composed" && o.step_kind != "fused") {
    std::fprintf(stderr, "bench_step: --step must be composed or fused, not '%s'\n", o.step_kind.c_str());
    std::exit(2);
  }
  if (o.steps_per_launch < 1 || o.steps % o.steps_per_launch != 0 || (o.steps_per_launch > 1 && !o.fused())) {
    std::fprintf(stderr, "bench_step: --steps-per-launch must divide --steps, and needs --step fused\n");
    std::exit(2);
  }
  if (o.models < 1 || (o.models > 1 && o.fused())) {
    std::fprintf(stderr, "bench_step: --models must be positive; a stack of models takes the composed step\n");
    std::exit(2);
  }
  if (o.fused_variant.cluster < 1 || o.fused_variant.cluster > kFusedMaxCluster) {
    std::fprintf(stderr, "bench_step: --cluster must be a count of blocks from 1 to %d\n", kFusedMaxCluster);
    std::exit(2);
  }
  if (o.batch < 1 || o.dim < 1 || o.hidden < 1 || o.latent < 1) {
    std::fprintf(stderr, "bench_step: --batch, --dim, --hidden and --latent must be positive\n");
    std::exit(2);
  }
  if (o.fused_variant.ticket_chunks < 0) {
    std::fprintf(stderr, "bench_step: --ticket-chunks must be a count of K chunks, 0 or more\n");
    std::exit(2);
  }
  if (o.phases && !o.fused()) {
    std::fprintf(stderr, "bench_step: --phases times the fused step's phases: it needs --step fused\n");
    std::exit(2);
  }
  return o;
}

// Milliseconds summed over the timed steps, per phase (the fused step is one phase); with
// --phases, the fused step's own phases from its timers.
struct PhaseTimes {
  double gather = 0, forward = 0, backward = 0, optimizer = 0, fused = 0;
  double total() const { return gather + forward + backward + optimizer + fused; }
  bench::FusedTimes timers;
};

// Runs 10 warm-up steps (at least) and o.steps timed ones, every step on its own rows of synthetic
// data; the fused step o.steps_per_launch at a time.
PhaseTimes time_steps(const Options& o, const DeviceContext& ctx, Vae& model, Optimizer& opt) {
  const int K = o.steps_per_launch, warm_launches = (10 + K - 1) / K;
  const long long n = static_cast<long long>(o.batch) * (o.steps + warm_launches * K);
  std::vector<uint8_t> pixels(static_cast<size_t>(n) * o.dim);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<uint8_t>((i * 2654435761u) >> 24);
  DeviceBuffer<uint8_t> data(ctx, pixels);
  // A stack's models: their step states, sums and seeds (all read the same rows).
  const int M = model.models();
  DeviceBuffer<double> totals(ctx, 4 * static_cast<size_t>(M));
  DeviceBuffer<StepState> at(ctx, std::vector<StepState>(M));
  std::vector<ModelScalars> each(M);
  for (int m = 0; m < M; ++m) each[m].seed = 1 + m;
  DeviceBuffer<ModelScalars> scalars(ctx, each);
  model.set_model_scalars(scalars.data());
  opt.set_model_scalars(scalars.data());
  const Models models{M, o.batch, 0, scalars.data()};
  PhaseTimes t;
  FusedVariant variant = o.fused_variant;  // the context's tiles unless --fused-math
  if (!o.fused_math_given) variant.math = ctx.tf32() ? FusedMath::tf32 : FusedMath::ffma;
  model.set_fused_variant(variant);
  const int grid = VAE_CALL(ctx.target(), fused_step_grid);
  const int launched = o.fused_grid > 0 ? o.fused_grid : VAE_CALL(ctx.target(), fused_step_variant_grid, variant);
  if (o.fused() && launched == 0) {
    std::fprintf(stderr, "bench_step: --cluster %d: this device has no thread-block clusters of that size (sm_90+)\n",
                 variant.cluster);
    std::exit(2);
  }
  DeviceBuffer<unsigned long long> phase_ns(ctx, o.phases ? static_cast<size_t>(grid) * kFusedPhaseSlots : 0);
  auto now = [&] {
    ctx.synchronize();
    return std::chrono::steady_clock::now();
  };
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  for (int s = -warm_launches * K; s < o.steps && o.fused(); s += K) {  // K steps as one kernel
    FusedStepArgs a = model.fused_step_args(o.batch);
    a.data = data.data();
    a.type = PixelType::u8;
    a.seed = 1;
    a.at = at.data();
    a.totals = totals.data();
    opt.set_fused_step_optimizer(a);
    a.phase_ns = o.phases ? phase_ns.data() : nullptr;
    a.steps = K;
    a.grid = launched;
    const auto t0 = now();
    VAE_CALL(ctx.target(), fused_step, a, ctx.stream());
    if (s >= 0) t.fused += ms(t0, now());
    if (s >= 0 && o.phases) bench::add_fused_times(phase_ns.download(), launched, t.timers);
  }
  for (int s = -10; s < o.steps && !o.fused(); ++s) {
    if (s == 0 && o.kernels) hx::set_profiling(true);  // the timed steps' launches and GEMMs
    const auto t0 = now();
    VAE_CALL(ctx.target(), gather_batch, data.data(), PixelType::u8, nullptr, o.batch, o.dim, model.input(), false, 1,
             RandomStream::binarize, at.data(), ctx.stream(), models);
    const auto t1 = now();
    const Vae::Pass pass = model.forward(o.batch, {1, RandomStream::latent_noise, at.data()}, true);
    model.accumulate_totals(o.batch, totals.data());
    const auto t2 = now();
    model.backward(pass);
    const auto t3 = now();
    opt.step(model.params().data(), model.grads().data(), at.data(), o.batch);
    const auto t4 = now();
    if (s >= 0) {
      t.gather += ms(t0, t1);
      t.forward += ms(t1, t2);
      t.backward += ms(t2, t3);
      t.optimizer += ms(t3, t4);
    }
  }
  return t;
}

// The floor under the step: its GEMMs timed together and each alone (from a cold and a warm
// cache, and with the step's epilogues), and this machine's large-GEMM rate.
struct Floor {
  StepGemms gemms;
  bench::Peaks peak;
  double peak_gflops = 0;  // the large GEMM's rate in the step's precision
  FmaPeak fma;             // the CPU's FMA peak (not measured on the GPU)
  double gemm_ms = 0;      // the step's GEMMs back to back
  std::vector<double> cold_us, warm_us, epilogue_us;
};

Floor measure_floor(const DeviceContext& ctx, const Vae& model, int batch) {
  Floor f;
  bench::Timer timer(ctx);
  f.peak = bench::measure_peaks(ctx, timer);
  f.peak_gflops = ctx.tf32() ? f.peak.tf32_gflops : f.peak.sgemm_gflops;
  if (ctx.target() == Target::cpu) f.fma = measure_fma_peak();
  f.gemms = step_gemms(ctx, model.layout(), batch, 1);
  const int reps = ctx.target() == Target::cuda ? 200 : 30;
  auto run = [&](const GemmOp& op) { VAE_CALL(ctx.target(), gemm, ctx.gemm(), op); };
  f.gemm_ms = 1e-3 * timer.median_us(
                         [&] {
                           for (const GemmOp& op : f.gemms.ops) run(op);
                         },
                         ctx.target() == Target::cuda ? 200 : 50);
  for (const bool cold : {true, false}) {
    timer.set_flush(cold);
    for (const GemmOp& op : f.gemms.ops)
      (cold ? f.cold_us : f.warm_us).push_back(timer.median_us([&] { run(op); }, reps));
  }
  for (const GemmOp& op : f.gemms.with_epilogues) f.epilogue_us.push_back(timer.median_us([&] { run(op); }, reps));
  return f;
}

void print_report(const Options& o, const DeviceContext& ctx, const PhaseTimes& t, const Floor& f) {
  const double total = t.total(), step_ms = total / o.steps, epoch_steps = 60000.0 / o.batch;
  // A stack's GEMM work is its models'; its GEMM floor, one model's GEMMs o.models times over.
  const double flops = f.gemms.flops * o.models, gemm_ms = f.gemm_ms * o.models;
  const double step_gemm_gflops = flops / (gemm_ms * 1e6);
  std::printf("bench_step: %d-%d-%d, batch %d, Adam, %s step, %d steps on %s\n", o.dim, o.hidden, o.latent, o.batch,
              o.step_kind.c_str(), o.steps, ctx.description().c_str());
  if (o.models > 1) {
    std::printf("a stack of %d models: %.4f ms a stacked step, %.4f ms a model-step\n", o.models, step_ms,
                step_ms / o.models);
  }
  std::printf("%-12s %10s %8s\n", "phase", "ms/step", "share");
  for (auto [name, ms] : {std::pair{"gather", t.gather},
                          {"forward", t.forward},
                          {"backward", t.backward},
                          {"optimizer", t.optimizer},
                          {"fused step", t.fused}}) {
    if (ms > 0) std::printf("%-12s %10.4f %7.1f%%\n", name, ms / o.steps, 100 * ms / total);
  }
  if (o.phases) {  // the timers hold each launch's last step, gathered by the step before where a launch has several
    bench::print_fused_times(t.timers, 1e3 * t.fused / o.steps, o.steps_per_launch == 1, o.fused_variant.row_flags);
  }
  std::printf("%-12s %10.4f  (%.0f samples/s, GEMM work %.1f GFLOP/s, 60000-image epoch %.2f s)\n", "step", step_ms,
              o.models * o.batch / (step_ms / 1e3), flops / (step_ms * 1e6), epoch_steps * step_ms / 1e3);
  std::printf("%-12s %10.4f  (the step's %zu GEMMs alone, %.1f GFLOP/s: epoch floor %.2f s, the step is %.2fx)\n",
              "gemm floor", gemm_ms, f.gemms.ops.size() * o.models, step_gemm_gflops, epoch_steps * gemm_ms / 1e3,
              step_ms / gemm_ms);
  std::printf(
      "%-12s %10.4f  (its GEMM work at the %d^3 GEMM rate, %.1f GFLOP/s: epoch floor %.2f s, the step is "
      "%.2fx)\n",
      "peak floor", flops / (f.peak_gflops * 1e6), f.peak.gemm_side, f.peak_gflops,
      epoch_steps * flops / (f.peak_gflops * 1e9), step_ms * f.peak_gflops * 1e6 / flops);
  if (f.fma.gflops > 0) {
    std::printf(
        "%-12s %10.4f  (its GEMM work at the FMA peak, %.1f GFLOP/s: %d workers' %s chains without loads; epoch "
        "floor %.2f s, the step is %.2fx)\n",
        "fma floor", flops / (f.fma.gflops * 1e6), f.fma.gflops, f.fma.workers, f.fma.isa,
        epoch_steps * flops / (f.fma.gflops * 1e9), step_ms * f.fma.gflops * 1e6 / flops);
  }
  std::printf(
      "\nthe step's GEMMs, each alone (epilogue: warm, with the step's bias + ReLU, bias gradient or ReLU "
      "derivative):\n%-28s %10s %10s %10s %10s %12s\n",
      "m x n x k (op)", "cold us", "GFLOP/s", "warm us", "GFLOP/s", "epilogue us");
  for (size_t i = 0; i < f.gemms.ops.size(); ++i) {
    const GemmOp& op = f.gemms.ops[i];
    char shape[64];
    std::snprintf(shape, sizeof shape, "%d x %d x %d (%s)", op.m, op.n, op.k,
                  op.trans_a ? "AT B" : (op.trans_b ? "A BT" : "A B"));
    const double flop = 2.0 * op.m * op.n * op.k;
    std::printf("%-28s %10.1f %10.1f %10.1f %10.1f %12.1f\n", shape, f.cold_us[i], flop / (f.cold_us[i] * 1e3),
                f.warm_us[i], flop / (f.warm_us[i] * 1e3), f.epilogue_us[i]);
  }
  if (o.json) {
    std::printf(
        "{\"device\":\"%s\",\"step\":\"%s\",\"batch\":%d,\"models\":%d,\"step_ms\":%.6f,\"epoch_s\":%.6f,"
        "\"step_gemm_gflop\":%.6f,\"floor_step_gemms_s\":%.6f,\"floor_step_gemms_gflops\":%.3f,"
        "\"floor_peak_gemm_s\":%.6f,\"floor_peak_gemm_gflops\":%.3f",
        ctx.description().c_str(), o.step_kind.c_str(), o.batch, o.models, step_ms, epoch_steps * step_ms / 1e3,
        flops / 1e9, epoch_steps * gemm_ms / 1e3, step_gemm_gflops, epoch_steps * flops / (f.peak_gflops * 1e9),
        f.peak_gflops);
    if (f.fma.gflops > 0) {
      std::printf(",\"floor_fma_s\":%.6f,\"floor_fma_gflops\":%.3f,\"fma_isa\":\"%s\"",
                  epoch_steps * flops / (f.fma.gflops * 1e9), f.fma.gflops, f.fma.isa);
    }
    std::printf("}\n");
  }
}

// --kernels: each kernel's and GEMM's time a step (host execution runs each launch to its end
// before the next), its share of the step, and what is left (the host's own work between them).
void print_kernel_shares(const Options& o, const PhaseTimes& t) {
  const double step_us = 1e3 * t.total() / o.steps;
  std::printf("\nthe step by kernel and GEMM (%d steps; host execution's wall time of each launch):\n", o.steps);
  std::printf("%-36s %10s %8s %8s\n", "kernel or GEMM (m x n x k)", "us/step", "share", "calls");
  double sum = 0, gemm = 0;
  for (const hx::ProfileEntry& e : hx::profile()) {
    const double us = 1e6 * e.seconds / o.steps;
    sum += us;
    if (e.name.rfind("gemm", 0) == 0) gemm += us;
    std::printf("%-36.36s %10.1f %7.1f%% %8.2f\n", e.name.c_str(), us, 100 * us / step_us,
                static_cast<double>(e.calls) / o.steps);
  }
  std::printf("%-36s %10.1f %7.1f%%\n%-36s %10.1f %7.1f%%\n", "all GEMMs", gemm, 100 * gemm / step_us,
              "the rest (host work between launches)", step_us - sum, 100 * (step_us - sum) / step_us);
}

ModelConfig model_config(const Options& o) {
  ModelConfig mc;
  mc.input_dim = o.dim;
  mc.hidden = {o.hidden};
  mc.latent = o.latent;
  return mc;
}

// The model (o.models of them: a stack) and its optimizer, initialised alike.
struct Bench {
  Vae model;
  Optimizer opt;
  Bench(const Options& o, const DeviceContext& ctx, const ModelConfig& mc)
      : model(ctx, mc, o.batch, 1, o.models),
        opt(ctx, model.layout().total, OptimizerKind::adam, OptimizerHyper{}, o.models) {
    std::vector<float> params;
    const std::vector<float> one = init_parameters(mc, model.layout(), 1);
    for (int m = 0; m < o.models; ++m) params.insert(params.end(), one.begin(), one.end());
    model.params().upload(params);
  }
};

// Microseconds per step of one variant: its own model (initialised alike) at o.batch.
double step_us(const Options& o, const DeviceContext& ctx) {
  Bench b(o, ctx, model_config(o));
  return 1e3 * time_steps(o, ctx, b.model, b.opt).total() / o.steps;
}

int run_sweep(const Options& o) {
  const Target target = resolve_target(o.device);
  struct Variant {
    const char* name;
    bool fused;
    int steps_per_launch;
    bool tf32;
    FusedVariant fused_variant;  // its tiles (the context's: FFMA, or TF32 with tf32), grid, ticket, row flags
  };
  std::vector<Variant> variants;
  const bool gpu = target == Target::cuda;
  for (const bool tf32 : {false, true}) {
    if (tf32 && !gpu) break;  // TF32 is a GPU option: the CPU computes fp32 either way
    const FusedMath tiles = tf32 ? FusedMath::tf32 : FusedMath::ffma;
    auto fused = [&](const char* name, int steps_per_launch, const FusedVariant& v) {
      variants.push_back({name, true, steps_per_launch, tf32, v});
    };
    variants.push_back({tf32 ? "composed tf32" : "composed", false, 1, tf32, {tiles}});
    fused(tf32 ? "fused tf32" : "fused", 1, {tiles});
    fused(tf32 ? "fused x16 tf32" : "fused x16", 16, {tiles});
    // On the GPU: fp32 on the tensor cores (3xTF32) against FFMA, and one block per SM against two.
    if (gpu && !tf32) fused("fused x16 3xtf32", 16, {FusedMath::tf32x3});
    if (gpu) fused(tf32 ? "fused x16 tf32 half" : "fused x16 half", 16, {tiles, true});
    // On the GPU: fewer split-K tickets (a phase splits only where that saves more than 4 or 12
    // chunks), and row flags instead of grid barriers.
    if (gpu) {
      fused(tf32 ? "fused x16 tf32 ticket 4" : "fused x16 ticket 4", 16, {tiles, false, 4});
      fused(tf32 ? "fused x16 tf32 ticket 12" : "fused x16 ticket 12", 16, {tiles, false, 12});
      if (o.sweep_flags) fused(tf32 ? "fused x16 tf32 flags" : "fused x16 flags", 16, {tiles, false, 0, true});
    }
    // On the GPU from sm_90: split tiles' K slices meeting in thread-block clusters, not at tickets.
    if (gpu && o.sweep_clusters && VAE_CALL(target, fused_step_cluster_grid, 4) > 0) {
      if (!tf32) {
        fused("fused x16 cluster 2", 16, {tiles, false, 0, false, 2});
        fused("fused x16 cluster 8", 16, {tiles, false, 0, false, 8});
      }
      fused(tf32 ? "fused x16 tf32 cluster 4" : "fused x16 cluster 4", 16, {tiles, false, 0, false, 4});
      if (o.sweep_flags) {
        fused(tf32 ? "fused x16 tf32 flags cluster 4" : "fused x16 flags cluster 4", 16, {tiles, false, 0, true, 4});
      }
    }
    if (o.models > 1) variants.push_back({tf32 ? "stack tf32" : "stack", false, 1, tf32, {tiles}});
  }
  std::vector<int> batches;
  std::stringstream in(o.batches);
  for (std::string item; std::getline(in, item, ',');) {
    if (std::atoi(item.c_str()) <= 0) {
      std::fprintf(stderr, "bench_step: --batches: '%s' is not a positive integer\n", item.c_str());
      return 2;
    }
    batches.push_back(std::atoi(item.c_str()));
  }
  std::printf("bench_step --sweep: %d-%d-%d, Adam, %d steps a variant (x16: in launches of 16 steps)\n", o.dim,
              o.hidden, o.latent, o.steps);
  std::printf("%6s  %-20s %12s %12s\n", "batch", "variant", "us/step", "epoch s");
  for (const int batch : batches) {
    double best = std::numeric_limits<double>::infinity();
    const char* best_name = "";
    for (const Variant& v : variants) {
      DeviceContext ctx(target, v.tf32);
      Options vo = o;
      vo.batch = batch;
      vo.step_kind = v.fused ? "fused" : "composed";
      vo.steps_per_launch = v.steps_per_launch;
      vo.steps = (o.steps + v.steps_per_launch - 1) / v.steps_per_launch * v.steps_per_launch;
      vo.phases = false;
      vo.fused_variant = v.fused_variant;
      vo.fused_math_given = true;
      vo.fused_grid = 0;
      const bool stack = std::strncmp(v.name, "stack", 5) == 0;
      vo.models = stack ? o.models : 1;
      const double us = step_us(vo, ctx);
      std::printf("%6d  %-20s %12.2f %12.4f", batch, v.name, us, 60000.0 / batch * us / 1e6);
      if (stack) std::printf("  (%d models: %.2f us a model-step)", vo.models, us / vo.models);
      std::printf("\n");
      if (o.json) {
        const FusedVariant& f = v.fused_variant;
        std::printf(
            "{\"device\":\"%s\",\"batch\":%d,\"variant\":\"%s\",\"step\":\"%s\",\"steps_per_launch\":%d,"
            "\"precision\":\"%s\",\"models\":%d,\"fused_math\":\"%s\",\"fused_grid\":%d,\"half_grid\":%s,"
            "\"ticket_chunks\":%d,\"row_flags\":%s,\"cluster\":%d,"
            "\"step_us\":%.3f,"
            "\"epoch_s\":%.6f}\n",
            ctx.description().c_str(), batch, v.name, vo.step_kind.c_str(), v.steps_per_launch,
            v.tf32 ? "tf32" : "fp32", vo.models, fused_math_name(f.math), VAE_CALL(target, fused_step_variant_grid, f),
            f.half_grid ? "true" : "false", f.ticket_chunks, f.row_flags ? "true" : "false", std::max(1, f.cluster), us,
            60000.0 / batch * us / 1e6);
      }
      if (!stack && us < best) best = us, best_name = v.name;
    }
    std::printf("%6d  fastest: %s (%.2f us/step)\n", batch, best_name, best);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  vae::reexec_with_better_openblas_core(argv);
  const Options o = parse_options(argc, argv);
  if (o.sweep) return run_sweep(o);
  DeviceContext ctx(resolve_target(o.device), o.tf32 != 0);
  Bench b(o, ctx, model_config(o));
  hx::clear_profile();
  const PhaseTimes t = time_steps(o, ctx, b.model, b.opt);
  hx::set_profiling(false);
  print_report(o, ctx, t, measure_floor(ctx, b.model, o.batch));
  if (o.kernels) print_kernel_shares(o, t);
  return 0;
}
