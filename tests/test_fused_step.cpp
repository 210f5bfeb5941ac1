// The fused step kernel (cuda/kernels/fused_step.cu), optimizer update included, against the float64
// reference for each optimizer and tile arithmetic (FusedStep), in thread-block clusters (FusedClusters),
// and its launches: timers, barriers, row flags, shared workspaces, persistent steps (FusedStepLaunch,
// FusedClustersLaunch). How its phases split K: test_fused_plan.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <set>
#include <tuple>

#include "device_context.h"
#include "train_config.h"  // estimator_name
#include "optimizer.h"
#include "reference_vae.h"
#include "runtime/workers.h"
#include "step_checks.h"
#include "support.h"
#include "vae.h"

namespace vae {
namespace {

using test::expect_matches_reference;
using test::small_config;
using test::step_case_name;
using test::StepCase;
using test::to_double;

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

// The fused step's arguments for `batch` rows of float pixels `data`, keyed by seed, at the step
// state `at`, with opt's update.
FusedStepArgs fused_args(Vae& vae, Optimizer& opt, int batch, const float* data, uint64_t seed, StepState* at,
                         double* totals) {
  FusedStepArgs a = vae.fused_step_args(batch);
  a.data = data;
  a.type = PixelType::f32;
  a.seed = seed;
  a.at = at;
  a.totals = totals;
  opt.set_fused_step_optimizer(a);
  return a;
}

// One fused step of them; with `math`, its tiles' arithmetic instead of the context's; with row flags, in
// clusters of `cluster` blocks (the most whole clusters), on `grid` blocks (0: the most).
void run_fused_step(const DeviceContext& ctx, Vae& vae, Optimizer& opt, int batch, const float* data, uint64_t seed,
                    StepState* at, double* totals, const KlTerm& kl = {}, std::optional<FusedMath> math = std::nullopt,
                    bool row_flags = false, int cluster = 1, int grid = 0) {
  FusedStepArgs a = fused_args(vae, opt, batch, data, seed, at, totals);
  a.kl_term = kl;
  EXPECT_EQ(a.math == FusedMath::tf32, ctx.tf32());
  if (math) a.math = *math;
  a.row_flags = row_flags;
  a.cluster = cluster;
  a.grid = grid;
  if (cluster > 1) a.grid = VAE_CALL(ctx.target(), fused_step_cluster_grid, cluster);
  VAE_CALL(ctx.target(), fused_step, a, ctx.stream());
  ctx.synchronize();
}

// One fused step with Adam of model c (initial parameters of seed 3, at step 2) on `batch` rows of
// `data` (keyed by seed 4), on `grid` blocks (0: the most), its arguments changed by `adjust`, with
// the phase timers on where `timed`: the parameters after it, and the timers (grid rows).
struct TimedStep {
  std::vector<float> params, grads;  // after the step; its gradients (each weight's, written where it is final)
  std::vector<unsigned long long> ns;
};
template <typename Adjust>
TimedStep timed_step(const DeviceContext& ctx, const ModelConfig& c, int batch, const float* data, int grid, bool timed,
                     Adjust&& adjust) {
  Vae vae(ctx, c, batch, 1);
  vae.params().upload(init_parameters(c, vae.layout(), 3));
  Optimizer opt(ctx, vae.layout().total, OptimizerKind::adam, OptimizerHyper{});
  DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{2, 0}});
  DeviceBuffer<double> totals(ctx, 3);
  const int rows = grid > 0 ? grid : VAE_CALL(ctx.target(), fused_step_grid);
  DeviceBuffer<unsigned long long> timers(ctx, static_cast<size_t>(rows) * kFusedPhaseSlots);
  FusedStepArgs a = fused_args(vae, opt, batch, data, 4, at.data(), totals.data());
  a.grid = grid;
  a.phase_ns = timed ? timers.data() : nullptr;
  adjust(a);
  VAE_CALL(ctx.target(), fused_step, a, ctx.stream());
  ctx.synchronize();
  return {vae.params().download(), vae.grads().download(),
          timed ? timers.download() : std::vector<unsigned long long>{}};
}

// The fused step kernel (one cooperative launch: gather, forward, losses, backward, optimizer)
// for three steps against the float64 reference with each optimizer: log p and KL, every
// gradient, the parameters and the optimizer state after each update, the ELBO totals and the
// step state. Batches 1, 7, 129 with L = 1 or 3, no, one and two hidden layers, both decoders,
// ReLU and tanh; the analytic KL at β = 1, at β = 0.4 in a 30-step warm-up, and the Monte-Carlo
// KL (estimator A) at β = 0.7. The steps start at t = 18: Adam's bias correction is not at its
// first values, and the warm-up's ramp is at 17/30..19/30. With grid barriers, and with row flags
// (FusedStepArgs::row_flags: on the CPU's grid of 7 with Adam and Adagrad, on the GPU with each).
class FusedStep : public ::testing::TestWithParam<std::tuple<Target, StepCase>> {};

// A run of the reference test: its blocks (the CPU's workers, 0: as they are; on the GPU 0: the most), row flags (not
// with SGD on the CPU), blocks a thread-block cluster.
struct ReferenceRun {
  int grid;
  bool flags;
  int cluster;
};
void expect_three_steps_match_reference(Target target, const StepCase& sc, const std::vector<ReferenceRun>& runs);

TEST_P(FusedStep, ThreeStepsOfEachOptimizerMatchReference) {
  const auto [target, sc] = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  // On the CPU also a grid of 7 blocks (7 workers): phases with fewer tiles than blocks split K, and
  // a weight update's rows beyond a round go to the next phase (fused_update_rows_kept), or in the
  // last phase split in K (fused_remainder_split: batch 129, the first encoder layer's last row of
  // tiles in 3 slices; also on 8 blocks in clusters, whose full phases meet at tickets); there the
  // phases meet at row flags (with SGD at barriers). On the GPU its grid, with barriers and with row
  // flags, and 7 blocks with each (the CPU's splits and carried rows: on the GPU's grid these models'
  // phases fit one round). The fp32 tiles by FFMA, and by 3xTF32 in the first run (how a tile
  // multiplies and how its K slices meet are apart; the sanitizers' CI time is kept).
  expect_three_steps_match_reference(
      target, sc,
      target == Target::cpu ? std::vector<ReferenceRun>{{hx::workers(), false, 1}, {7, true, 1}}
                            : std::vector<ReferenceRun>{{0, false, 1}, {0, true, 1}, {7, false, 1}, {7, true, 1}});
}

// In thread-block clusters (FusedStepArgs::cluster): split tiles' K slices summed through the cluster's shared memory
// instead of at tickets, against the reference as above: on the CPU two clusters of 4 with row flags (Adam and
// Adagrad), on the GPU (sm_90 and newer) clusters of 4 with row flags and of 2 with grid barriers. A suite of its own:
// bench/gpu_check.sh runs it apart, so that a fault of the clusters costs the cluster variants only.
class FusedClusters : public ::testing::TestWithParam<std::tuple<Target, StepCase>> {};

TEST_P(FusedClusters, ThreeStepsOfEachOptimizerMatchReference) {
  const auto [target, sc] = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  if (target == Target::cuda && VAE_CALL(target, fused_step_cluster_grid, 4) == 0) {
    GTEST_SKIP() << "this GPU has no thread-block clusters (sm_90+)";
  }
  expect_three_steps_match_reference(target, sc,
                                     target == Target::cpu ? std::vector<ReferenceRun>{{8, true, 4}}
                                                           : std::vector<ReferenceRun>{{0, true, 4}, {0, false, 2}});
}

void expect_three_steps_match_reference(Target target, const StepCase& sc, const std::vector<ReferenceRun>& runs) {
  DeviceContext ctx(target, false);
  for (size_t run = 0; run < runs.size(); ++run)
    for (FusedMath math : {FusedMath::ffma, FusedMath::tf32x3})
      for (OptimizerKind kind : {OptimizerKind::sgd, OptimizerKind::adam, OptimizerKind::adagrad})
        // Input 37 and odd widths: operands staged a float at a time; the last case's rows are all multiples of
        // four floats (input 36, hidden 32, latent 4), staged four floats to a copy, chunks cut at 36 and 4.
        for (auto [batch, hidden, latent, kl, dim] :
             {std::tuple{1, std::vector<int>{5}, 1, KlTerm{}, 37},
              {7, std::vector<int>{}, 3, KlTerm{KlEstimator::monte_carlo, 0.7f, 0, KlGradient::standard}, 37},
              {129, std::vector<int>{65, 5}, 20, KlTerm{KlEstimator::analytic, 0.4f, 30, KlGradient::standard}, 37},
              {7, std::vector<int>{32}, 4, KlTerm{}, 36}}) {
          const auto [blocks, flags, cluster] = runs[run];
          if (math == FusedMath::tf32x3 && (run > 0 || cluster > 1)) continue;
          // Under the sanitizers (CI's second build, whose task is memory and undefined behaviour; the values are
          // checked in the first) the split-K grid and 3xTF32 with Adam only: the three optimizers' code runs in
          // the first grid's FFMA steps. This test, fiber by fiber under ASan, was half of that build's test time.
          if (kSanitized && (run > 0 || cluster > 1 || math != FusedMath::ffma) && kind != OptimizerKind::adam)
            continue;
          const bool row_flags = flags && (target == Target::cuda || kind != OptimizerKind::sgd);
          if (cluster > 1 && flags && !row_flags) continue;
          const test::ScopedWorkers grid_of(target, blocks);
          const int grid = target == Target::cuda ? blocks : 0;  // on the CPU the workers'
          const int launched = grid > 0 ? grid : VAE_CALL(ctx.target(), fused_step_cluster_grid, cluster);
          SCOPED_TRACE(std::string(fused_math_name(math)) + (row_flags ? ", row flags, " : ", ") +
                       (cluster > 1 ? "clusters of " + std::to_string(cluster) + ", " : "") + optimizer_name(kind) +
                       ", batch " + std::to_string(batch) + ", " + std::to_string(hidden.size()) +
                       " hidden layers, KL " + estimator_name(kl.estimator) + " at beta " + std::to_string(kl.weight) +
                       ", grid " + std::to_string(launched));
          const ModelConfig c = small_config(sc.decoder, sc.activation, hidden, latent, dim);
          Vae vae(ctx, c, batch + 3, sc.samples);
          ASSERT_TRUE(vae.fused_step_fits());
          const test::ReferenceLayout rl = test::reference_layout(c);
          std::vector<double> p = test::reference_parameters(rl, 200 + batch), s1(p.size(), 0.0), s2(p.size(), 0.0);
          vae.params().upload(test::from_reference(vae.layout(), rl, p));
          const OptimizerHyper hyper = test::tested_hyper(kind);
          Optimizer opt(ctx, vae.layout().total, kind, hyper);
          const int steps = 3;
          const auto data = test::random_uniform(static_cast<size_t>(steps) * batch * c.input_dim, 9 + batch, 0, 1);
          const DeviceBuffer<float> data_dev(ctx, data);
          DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{17, 0}});
          DeviceBuffer<double> totals(ctx, std::vector<double>{0, 0, 0});

          double want_recon = 0, want_kl = 0;
          for (int step = 0; step < steps; ++step) {
            run_fused_step(ctx, vae, opt, batch, data_dev.data(), 5, at.data(), totals.data(), kl, math, row_flags,
                           cluster, grid);

            const std::vector<double> x(data.begin() + static_cast<size_t>(step) * batch * c.input_dim,
                                        data.begin() + static_cast<size_t>(step + 1) * batch * c.input_dim);
            const auto eps = test::reference_noise(5, RandomStream::latent_noise, 17 + step, batch, sc.samples, latent);
            const auto ref = test::reference_vae(c, p, x, batch, sc.samples, eps, true, kl, 17 + step);
            const std::string where = "step " + std::to_string(step);
            expect_matches_reference(vae, rl, ref, batch, sc.samples, where);
            for (int r = 0; r < batch; ++r) {
              double m = 0;
              for (int l = 0; l < sc.samples; ++l) m += ref.log_prob[static_cast<size_t>(l) * batch + r];
              want_recon += m / sc.samples;
              want_kl += ref.kl[r];
            }
            test::reference_optimizer_step(kind, hyper, 18 + step, ref.grad, p, s1, s2);
            // The parameters within 3e-6, FFMA and 3xTF32 alike. The worst case, encoder.logvar.bias at batch 1
            // after three SGD steps, is 2.2e-6 relative with both: a small value left by larger updates, where
            // the rounding of the gradients' sums shows (FFMA's K order decides it: within 1e-6 when a thread
            // summed each output's K steps in order, 2.2e-6 with the four groups of K steps summed in turn).
            test::expect_tensors_near(vae.layout(), vae.params().download(), rl, p, 1e-6, 3e-6, "parameters, " + where);
            test::expect_tensors_near(vae.layout(), opt.state(0).download(), rl, s1, 1e-6, 1e-4, "state 1, " + where);
            if (kind == OptimizerKind::adam) {
              test::expect_tensors_near(vae.layout(), opt.state(1).download(), rl, s2, 1e-6, 1e-4, "state 2, " + where);
            }
          }
          const auto st = at.download()[0];
          EXPECT_EQ(st.step, 20u);
          EXPECT_EQ(st.offset, 3 * batch);
          const auto tot = totals.download();
          EXPECT_NEAR(tot[0], want_recon, 1e-6 * std::fabs(want_recon));
          EXPECT_NEAR(tot[1], want_kl, 1e-5 * want_kl + 1e-5);
          EXPECT_EQ(tot[2], 3.0 * batch);
        }
}

// The tiles' arithmetic (FusedMath; the tensor cores emulated under host execution: TF32-rounded
// inputs, float sums), one step against the float64 reference: TF32 (--tf32) within TF32's
// precision and visibly not the FFMA step; 3xTF32 within the fp32 tolerances, at least ten times
// closer to the reference than TF32, and not the FFMA step either.
TEST_P(FusedStep, EachTileArithmeticMatchesReferenceWithinItsPrecision) {
  const auto [target, sc] = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  const int batch = 33, latent = 3;
  const ModelConfig c = small_config(sc.decoder, sc.activation, {40}, latent, 37);
  const test::ReferenceLayout rl = test::reference_layout(c);
  const auto params = test::reference_parameters(rl, 300);
  const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 11, 0, 1);
  const auto eps = test::reference_noise(8, RandomStream::latent_noise, 4, batch, sc.samples, latent);
  const auto ref = test::reference_vae(c, params, to_double(x), batch, sc.samples, eps);
  const ParamLayout layout = make_layout(c);
  std::vector<float> grads[3];
  for (FusedMath math : {FusedMath::ffma, FusedMath::tf32, FusedMath::tf32x3}) {
    DeviceContext ctx(target, math == FusedMath::tf32);
    Vae vae(ctx, c, batch, sc.samples);
    vae.params().upload(test::from_reference(vae.layout(), rl, params));
    Optimizer opt(ctx, vae.layout().total, OptimizerKind::sgd, OptimizerHyper{});
    const DeviceBuffer<float> data(ctx, x);
    DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{4, 0}});
    DeviceBuffer<double> totals(ctx, 3);
    run_fused_step(ctx, vae, opt, batch, data.data(), 8, at.data(), totals.data(), {}, math);
    if (math == FusedMath::tf32x3) expect_matches_reference(vae, rl, ref, batch, sc.samples, "3xTF32");
    grads[static_cast<int>(math)] = vae.grads().download();
  }
  test::expect_tensors_near(layout, grads[1], rl, ref.grad, 1e-2, 2e-2, "TF32");
  auto largest_difference = [](const std::vector<double>& a, const std::vector<double>& b) {
    double d = 0;
    for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
    return d;
  };
  const auto ffma = test::to_reference(layout, grads[0], rl), tf32 = test::to_reference(layout, grads[1], rl),
             tf32x3 = test::to_reference(layout, grads[2], rl);
  EXPECT_GT(largest_difference(tf32, ffma), 1e-7) << "the TF32 step computed exactly what the FFMA step did";
  EXPECT_GT(largest_difference(tf32x3, ffma), 0.0) << "the 3xTF32 step computed exactly what the FFMA step did";
  EXPECT_LT(largest_difference(tf32x3, ref.grad), 0.1 * largest_difference(tf32, ref.grad));
}

// The fused step's phase timers (FusedStepArgs::phase_ns, bench_step --phases) change nothing the
// step computes; every block's times rise phase by phase, and every block counts the same grid
// barriers: 2·(encoder + decoder layers) + 4 with one sample a row. The blocks' split-K tickets
// add up to the K slices of the split tiles, and the blocks' GEMM work in each phase to its
// planned items and all of its tiles' K chunks, phase by phase as fused_split_plan splits them.
// Also with a ticket of a chunk (FusedStepArgs::ticket_chunks: no split in this model then), and
// with row flags (FusedStepArgs::row_flags): the same bits, every GEMM phase after the gather's
// barrier, the only one; without them no block waits at a counter.
class FusedStepLaunch : public ::testing::TestWithParam<Target> {};
TEST_P(FusedStepLaunch, TimeEachPhaseAndCountTheBarriersWithoutChangingTheStep) {
  const Target target = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  const int batch = 29;
  const ModelConfig c = small_config(DecoderKind::bernoulli, Activation::relu, {70, 17}, 3, 70);
  const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 12, 0, 1);
  DeviceContext ctx(target, false);
  const DeviceBuffer<float> data(ctx, x);
  const test::ScopedWorkers grid_of(target, 7);  // on the CPU too, phases with fewer tiles than blocks split K
  const int grid = VAE_CALL(target, fused_step_grid);
  struct Run {
    bool timed;
    int ticket;
    bool row_flags;
    std::vector<float> params;
    std::vector<unsigned long long> ns;
  } runs[] = {{false, 0, false, {}, {}}, {true, 0, false, {}, {}}, {true, 1, false, {}, {}}, {true, 0, true, {}, {}}};
  for (Run& run : runs) {
    TimedStep step = timed_step(ctx, c, batch, data.data(), 0, run.timed, [&](FusedStepArgs& a) {
      a.ticket_chunks = run.ticket;
      a.row_flags = run.row_flags;
    });
    run.params = std::move(step.params);
    run.ns = std::move(step.ns);
  }
  EXPECT_EQ(runs[0].params, runs[1].params) << "the timers changed the step";
  EXPECT_EQ(runs[0].params, runs[3].params) << "row flags changed the step";
  // The step's GEMM phases, each GEMM as (tiles of 32 × 32, K chunks of 32, rows of tiles where it is a weight
  // update left from the phase before, else 0): M = 29 rows, one row tile (the weight gradients: M = the layer's
  // outputs, N = its inputs and the bias column, K = 29).
  struct Gemm {
    int tiles, chunks, deferred_rows;
  };
  const std::vector<std::vector<Gemm>> phases = {
      {{3, 3, 0}},             // encoder layer 1: N 70, K 70
      {{1, 3, 0}},             // encoder layer 2: N 17, K 70
      {{1, 1, 0}},             // heads: 3 pairs, K 17
      {{1, 1, 0}},             // decoder layer 1: N 17, K 3
      {{3, 1, 0}},             // decoder layer 2: N 70, K 17
      {{3, 3, 0}},             // output: N 70, K 70
      {{3, 3, 0}},             // output backward: dh (N 70, K 70)
      {{1, 3, 0}, {9, 1, 3}},  // decoder layer 2 backward (N 17, K 70), the output's update (70 × 71)
      {{1, 1, 0}, {3, 1, 3}},  // decoder layer 1 backward: dz (N 3, K 17); layer 2's update (70 × 18)
      {{1, 1, 0}, {1, 1, 1}},  // heads backward (N 17, K 6); decoder layer 1's update (17 × 4)
      {{3, 1, 0}, {1, 1, 1}},  // encoder layer 2 backward (N 70, K 17); the heads' update (6 × 18)
      {{3, 1, 1}, {9, 1, 0}},  // layer 2's update (17 × 71), layer 1's (70 × 71)
  };
  ASSERT_EQ(static_cast<int>(phases.size()), fused_step_gemm_phases(2, 2, 1));
  // Each phase's GEMMs as (tiles, K chunks): a deferred update's rows that do not fit in one round
  // of its phase go to the next (fused_update_rows_kept: on 7 blocks the output layer's update keeps
  // 1 of its 3 rows of tiles beside decoder layer 2's input gradient split in two, 2 with a ticket of
  // a chunk beside it whole); `carried` counts the phases that carry rows.
  auto plan_phases = [&](int ticket, int* carried) {
    std::vector<std::vector<std::pair<int, int>>> planned(phases.size());
    std::pair<int, int> carry{0, 0};
    *carried = 0;
    for (size_t p = 0; p < phases.size(); ++p) {
      auto& ops = planned[p];
      for (const Gemm& g : phases[p]) ops.emplace_back(g.tiles, g.chunks);
      if (carry.first > 0) ops.push_back(carry);
      carry = {0, 0};
      int tiles[kFusedMaxPhaseGemms] = {}, chunks[kFusedMaxPhaseGemms] = {};
      for (size_t o = 0; o < ops.size(); ++o) std::tie(tiles[o], chunks[o]) = ops[o];
      for (size_t u = 0; u < phases[p].size() && p + 1 < phases.size(); ++u) {
        const int rows = phases[p][u].deferred_rows;
        if (rows == 0) continue;
        const int kept = fused_update_rows_kept(tiles, chunks, static_cast<int>(ops.size()), static_cast<int>(u), rows,
                                                grid, ticket);
        const int columns = tiles[u] / rows;
        if (kept < rows) {
          ops[u].first = kept * columns;
          carry = {(rows - kept) * columns, ops[u].second};
          ++*carried;
        }
        break;
      }
    }
    return planned;
  };
  for (const Run& run : runs) {
    if (!run.timed) continue;
    SCOPED_TRACE("ticket_chunks " + std::to_string(run.ticket) + (run.row_flags ? ", row flags" : ""));
    const std::vector<unsigned long long>& ns = run.ns;
    int carried = 0;
    const auto planned_phases = plan_phases(run.ticket, &carried);
    if (grid == 7) {
      EXPECT_EQ(carried, 1);
    }
    // Split-K slices meet at tickets: no barrier beyond the phases' own, whatever the grid.
    const unsigned barriers = run.row_flags ? 1 : 2 * (2 + 2) + 4;  // L = 1: the latent backward in an epilogue
    EXPECT_EQ(static_cast<int>(barriers), fused_step_barriers(2, 2, 1, run.row_flags));
    unsigned long long tickets = 0;
    std::vector<unsigned long long> last_arrival(barriers, 0), first_departure(barriers, ~0ull);
    for (int b = 0; b < grid; ++b) {
      const unsigned long long* row = ns.data() + static_cast<size_t>(b) * kFusedPhaseSlots;
      EXPECT_GT(row[0], 0u) << "block " << b;
      for (int p = 0; p < kFusedPhases; ++p)
        EXPECT_LE(row[p], row[p + 1]) << "block " << b << ", " << fused_phase_name(p);
      EXPECT_EQ(row[1 + kFusedPhases], barriers) << "block " << b;
      tickets += row[2 + kFusedPhases];
      if (!run.row_flags) {
        EXPECT_EQ(row[3 + kFusedPhases], 0u) << "block " << b << " waited at a counter";
      }
      // Each barrier's arrival and departure, in order from the block's start to its end.
      unsigned long long before = row[0];
      for (unsigned i = 0; i < barriers; ++i) {
        const unsigned long long arrive = row[kFusedBarrierSlots + 2 * i], leave = row[kFusedBarrierSlots + 2 * i + 1];
        EXPECT_LE(before, arrive) << "block " << b << ", barrier " << i;
        EXPECT_LE(arrive, leave) << "block " << b << ", barrier " << i;
        last_arrival[i] = std::max(last_arrival[i], arrive);
        first_departure[i] = std::min(first_departure[i], leave);
        before = leave;
      }
      EXPECT_LE(before, row[kFusedPhases]) << "block " << b << ": the last barrier after the end";
      // The block done with each GEMM phase in order, before the barrier after it (the gather's first).
      for (size_t p = 0; p < phases.size(); ++p) {
        const unsigned long long done = row[kFusedGemmSlots + p];
        EXPECT_LE(p ? row[kFusedGemmSlots + p - 1] : row[0], done) << "block " << b << ", GEMM phase " << p;
        EXPECT_LE(done, row[kFusedPhases]) << "block " << b << ", GEMM phase " << p;
        if (!run.row_flags && p + 1 < phases.size()) {
          EXPECT_LE(done, row[kFusedBarrierSlots + 2 * (p + 1)]) << "block " << b << ", GEMM phase " << p;
        }
      }
    }
    // No block leaves a barrier before every block has arrived. Across the GPU's multiprocessors
    // within a microsecond: %globaltimer ticks coarsely, and its ticks may reach them apart.
    const unsigned long long skew = target == Target::cuda ? 1000 : 0;
    for (unsigned i = 0; i < barriers; ++i) EXPECT_LE(last_arrival[i], first_departure[i] + skew) << "barrier " << i;
    for (unsigned i = 0; i < barriers; ++i)
      EXPECT_FALSE(fused_barrier_name(i, 2, 2, 1, true, run.row_flags).empty()) << i;
    EXPECT_EQ(fused_barrier_name(barriers, 2, 2, 1, true, run.row_flags), "");
    EXPECT_EQ(fused_barrier_name(0, 2, 2, 1, true, run.row_flags), "gather");
    if (!run.row_flags) {
      EXPECT_EQ(fused_barrier_name(1, 2, 2, 1, true), "encoder 1");
      EXPECT_EQ(fused_barrier_name(barriers - 1, 2, 2, 1, true), "encoder 2 backward");
    }
    // Each barrier's phases' work items over the blocks, as planned, and all of their tiles' K chunks (the phases
    // after the gather's barrier: timers' work slots 1 on); with row flags all of them after the gather's.
    unsigned long long want = 0;
    size_t next = 0;  // of phases
    for (unsigned i = 0; i <= barriers; ++i) {
      unsigned long long items = 0, chunks_run = 0;
      for (int b = 0; b < grid; ++b) {
        const unsigned long long ran = ns[static_cast<size_t>(b) * kFusedPhaseSlots + kFusedWorkSlots + i];
        items += ran >> 32;
        chunks_run += ran & 0xffffffffull;
      }
      if (i == 0) {
        EXPECT_EQ(items, 0u) << "the gather ran GEMM work";
        continue;
      }
      unsigned long long planned = 0, all_chunks = 0;
      const size_t end = run.row_flags ? phases.size() : next + 1;
      for (; next < end; ++next) {
        const auto& phase = planned_phases[next];
        int tiles[kFusedMaxPhaseGemms] = {}, chunks[kFusedMaxPhaseGemms] = {}, slices[kFusedMaxPhaseGemms] = {};
        const int count = static_cast<int>(phase.size());
        for (int o = 0; o < count; ++o) std::tie(tiles[o], chunks[o]) = phase[o];
        planned += static_cast<unsigned long long>(fused_split_plan(tiles, chunks, count, grid, slices, run.ticket));
        for (int o = 0; o < count; ++o) {
          all_chunks += static_cast<unsigned long long>(tiles[o]) * chunks[o];
          if (slices[o] > 1) want += static_cast<unsigned long long>(slices[o]) * tiles[o];
        }
      }
      EXPECT_EQ(items, planned) << "barrier " << i;
      EXPECT_EQ(chunks_run, all_chunks) << "barrier " << i;
    }
    EXPECT_EQ(next, phases.size());
    EXPECT_EQ(tickets, want);
    if (grid == 7 && run.ticket == 0) {
      EXPECT_GT(want, 0u) << "no phase of the test splits K";
    }
    if (run.ticket == 1) {
      EXPECT_EQ(want, 0u) << "a split saving one chunk (of at most 3) pays for a ticket of one";
    }
  }
}

// The GEMM work blocks ran in phase `slot` of a step's timers (grid rows): its work items and K chunks over the
// blocks, and the most chunks one block ran.
struct PhaseWork {
  unsigned long long items = 0, chunks = 0, most = 0;
};
PhaseWork phase_work(const std::vector<unsigned long long>& ns, int grid, unsigned long long slot) {
  PhaseWork w;
  for (int b = 0; b < grid; ++b) {
    const unsigned long long ran = ns[static_cast<size_t>(b) * kFusedPhaseSlots + kFusedWorkSlots + slot];
    w.items += ran >> 32;
    w.chunks += ran & 0xffffffffull;
    w.most = std::max(w.most, ran & 0xffffffffull);
  }
  return w;
}

// Steps of a model on 7 blocks (the CPU's workers, on the GPU the launch's grid) on `batch` rows
// of random pixels (keyed by `seed`), timed (timed_step), their arguments changed by `adjust`.
class SevenBlocks {
 public:
  static constexpr int kGrid = 7;
  SevenBlocks(Target target, const ModelConfig& c, int batch, uint64_t seed)
      : target_(target),
        c_(c),
        batch_(batch),
        ctx_(target, false),
        data_(ctx_, test::random_uniform(static_cast<size_t>(batch) * c.input_dim, seed, 0, 1)),
        workers_(target, kGrid) {}
  template <typename Adjust>
  TimedStep run(Adjust&& adjust) {
    return timed_step(ctx_, c_, batch_, data_.data(), target_ == Target::cuda ? kGrid : 0, true, adjust);
  }

 private:
  Target target_;
  ModelConfig c_;
  int batch_;
  DeviceContext ctx_;
  DeviceBuffer<float> data_;
  test::ScopedWorkers workers_;
};

// Where the step's last phase would take a second round over the grid for a few tiles, the last
// round's rows split in K (fused_remainder_split): on 7 blocks at batch 97 (an update's K: 4
// chunks), hidden 65, the heads' update (6 × 66: 3 tiles) beside the first encoder layer's (65 ×
// 38: 3 rows of 2 tiles), 9 tiles: that layer's last row in 2 slices, 11 work items, no block
// running more than 6 of the phase's 36 K chunks (whole tiles: 8, two on one block; counted with
// grid barriers, the phase after the last). The same bits with row flags as with grid barriers
// (the split rows wait as their update does).
TEST_P(FusedStepLaunch, TheLastRoundsTilesSplitInK) {
  const Target target = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  SevenBlocks blocks(target, small_config(DecoderKind::bernoulli, Activation::tanh, {65}, 3, 37), 97, 14);
  const int grid = SevenBlocks::kGrid;
  const int tiles[2] = {3, 6}, chunks[2] = {4, 4}, columns[2] = {3, 2};
  int op = -1, slices = 0;
  ASSERT_EQ(fused_remainder_split(tiles, chunks, columns, 2, grid, 0, &op, &slices), 1);
  ASSERT_EQ(op, 1);
  ASSERT_EQ(slices, 2);
  std::vector<float> params[2];
  for (const bool flags : {false, true}) {
    SCOPED_TRACE(flags ? "row flags" : "grid barriers");
    const TimedStep step = blocks.run([&](FusedStepArgs& a) { a.row_flags = flags; });
    params[flags] = step.params;
    if (flags) continue;  // its GEMM phases all after the one barrier, the gather's
    const PhaseWork last = phase_work(step.ns, grid, step.ns[1 + kFusedPhases]);  // after the step's last barrier
    EXPECT_EQ(last.items, 11u);
    EXPECT_EQ(last.chunks, 36u);
    EXPECT_EQ(last.most, 6u);
  }
  EXPECT_EQ(params[1], params[0]);
}

// A phase of one GEMM split into two rounds of items where a block's work is less so
// (fused_split_rounds): on 7 blocks at batch 128, input 150 (5 K chunks), hidden 32, the first
// encoder layer's forward and the output layer's input gradient (4 whole tiles each): 3 slices of
// 2 chunks, 12 items, no block running more than 4 of the phase's 20 chunks (one round: whole
// tiles, 5); their partial sums (3 · 128 · 32 floats) more than one round's items would write. The
// step computes what it computes without any K split (a ticket costing 100 chunks) within float
// sums' rounding — its gradients, which a slice summed wrongly would change (a first Adam step
// moves each parameter by about the rate whatever the gradient's size), and its parameters — and
// the same bits with row flags.
TEST_P(FusedStepLaunch, AOneGemmPhaseSplitsInTwoRounds) {
  const Target target = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  SevenBlocks blocks(target, small_config(DecoderKind::bernoulli, Activation::relu, {32}, 3, 150), 128, 15);
  const int grid = SevenBlocks::kGrid, tiles = 4, chunks = 5;
  int slices = 0;
  ASSERT_EQ(fused_split_plan(&tiles, &chunks, 1, grid, &slices, 0), 12);
  ASSERT_EQ(slices, 3);
  std::vector<float> params[3], grads[3];
  for (const int run : {0, 1, 2}) {  // grid barriers, row flags, no split
    SCOPED_TRACE(run == 0 ? "grid barriers" : run == 1 ? "row flags" : "no split");
    const TimedStep step = blocks.run([&](FusedStepArgs& a) {
      a.row_flags = run == 1;
      a.ticket_chunks = run == 2 ? 100 : 0;
    });
    params[run] = step.params;
    grads[run] = step.grads;
    if (run != 0) continue;
    // The GEMM phases after the gather's barrier: the first encoder layer's forward, and the output layer's input
    // gradient (the first backward phase: after the encoder's, the heads', the decoder's and the output layer's).
    for (const unsigned long long slot : {1ull, 1ull + 4}) {
      SCOPED_TRACE("work slot " + std::to_string(slot));
      const PhaseWork w = phase_work(step.ns, grid, slot);
      EXPECT_EQ(w.items, 12u);
      EXPECT_EQ(w.chunks, 20u);
      EXPECT_EQ(w.most, 4u);
    }
  }
  EXPECT_EQ(params[1], params[0]);
  EXPECT_EQ(grads[1], grads[0]);
  ASSERT_EQ(params[2].size(), params[0].size());
  float largest = 0.f;
  for (const float g : grads[0]) largest = std::max(largest, std::fabs(g));
  ASSERT_GT(largest, 0.f);
  for (size_t i = 0; i < params[0].size(); ++i) {
    ASSERT_NEAR(grads[2][i], grads[0][i], 1e-5f * largest) << "gradient " << i;
    ASSERT_NEAR(params[2][i], params[0][i], 1e-6f + 1e-6f * std::fabs(params[0][i])) << "parameter " << i;
  }
}

// The names of the fused step's grid barriers and GEMM phases (bench_step's tables): one per
// barrier (fused_step_barriers) and one per GEMM phase (fused_step_gemm_phases), none twice, for
// 0-2 hidden layers a side and L = 1, 2; with row flags only the gather's barrier.
TEST(FusedStepNames, OnePerBarrierAndPerGemmPhase) {
  for (int e = 0; e <= 2; ++e)
    for (int d = 0; d <= 2; ++d)
      for (int samples = 1; samples <= 2; ++samples)
        for (const bool flags : {false, true}) {
          SCOPED_TRACE(std::to_string(e) + " encoder and " + std::to_string(d) +
                       " decoder layers, L = " + std::to_string(samples) + (flags ? ", row flags" : ""));
          const int barriers = fused_step_barriers(e, d, samples, flags);
          std::set<std::string> names;
          for (int i = 0; i < barriers; ++i) names.insert(fused_barrier_name(i, e, d, samples, true, flags));
          EXPECT_EQ(static_cast<int>(names.size()), barriers);
          EXPECT_EQ(names.count(""), 0u);
          EXPECT_EQ(fused_barrier_name(barriers, e, d, samples, true, flags), "");
          EXPECT_EQ(fused_barrier_name(0, e, d, samples, true, flags), "gather");
          const int phases = fused_step_gemm_phases(e, d, samples);
          std::set<std::string> gemm;
          for (int p = 0; p < phases; ++p) gemm.insert(fused_gemm_phase_name(p, e, d, samples));
          EXPECT_EQ(static_cast<int>(gemm.size()), phases);
          EXPECT_EQ(gemm.count(""), 0u);
          EXPECT_EQ(fused_gemm_phase_name(phases, e, d, samples), "");
          EXPECT_EQ(fused_gemm_phase_name(phases - 1, e, d, samples), e ? "encoder 1 backward" : "heads backward");
        }
}

// Row flags (FusedStepArgs::row_flags) compute what grid barriers do, bit for bit — parameters,
// Adam's moments, the totals — over launches of changing batches on one workspace (where the
// flags lie in it moves with the batch): two steps in a launch, a partial batch, two more; with
// two hidden layers a side and none, L = 2 (the decoder's first tiles wait for all of the heads'
// rows; the latent backward's elements for every row of dL/dz, the heads' backward for every
// block's elements) and L = 1, on 7 blocks (phases with fewer tiles split K, their slices meeting
// at tickets in the phases' own regions). The workspace starts as garbage (a launch's first step
// clears its tickets and flags), and after the last launch of two steps each GEMM phase's count a row block is twice
// the column tiles of its first GEMM (none where that is a weight update), and each grid counter's twice the blocks
// (the latent backward's none with L = 1).
void expect_row_flags_compute_what_barriers_do(Target target, int cluster);
TEST_P(FusedStepLaunch, RowFlagsComputeWhatBarriersDo) {
  VAE_SKIP_WITHOUT_DEVICE(GetParam());
  expect_row_flags_compute_what_barriers_do(GetParam(), 1);
}
// The same in thread-block clusters (FusedStepArgs::cluster; on the CPU two clusters of 4 blocks, on the GPU clusters
// of 4 from sm_90), both runs: split tiles' K slices meet in the cluster's shared memory. Apart from FusedStepLaunch,
// as FusedClusters.
class FusedClustersLaunch : public ::testing::TestWithParam<Target> {};
TEST_P(FusedClustersLaunch, RowFlagsComputeWhatBarriersDo) {
  VAE_SKIP_WITHOUT_DEVICE(GetParam());
  if (GetParam() == Target::cuda && VAE_CALL(GetParam(), fused_step_cluster_grid, 4) == 0) {
    GTEST_SKIP() << "this GPU has no thread-block clusters (sm_90+)";
  }
  expect_row_flags_compute_what_barriers_do(GetParam(), 4);
}
INSTANTIATE_TEST_SUITE_P(Targets, FusedClustersLaunch, ::testing::ValuesIn(test::all_targets()),
                         test::target_param_name);

void expect_row_flags_compute_what_barriers_do(Target target, int cluster) {
  const int batch = 41, partial = 9;
  const int launches[][2] = {{batch, 2}, {partial, 1}, {batch, 2}};  // (rows, steps)
  const int rows = 2 * batch + partial + 2 * batch;
  DeviceContext ctx(target, false);
  const test::ScopedWorkers grid_of(target, cluster > 1 ? 2 * cluster : 7);
  const int grid = VAE_CALL(target, fused_step_cluster_grid, cluster);
  for (const bool hidden : {true, false})
    for (const int samples : {2, 1}) {
      SCOPED_TRACE(std::string(hidden ? "hidden 43, 33" : "no hidden layers") + ", L = " + std::to_string(samples) +
                   (cluster > 1 ? ", clusters of " + std::to_string(cluster) : ""));
      const std::vector<int> sizes = hidden ? std::vector<int>{43, 33} : std::vector<int>{};
      const ModelConfig c = small_config(DecoderKind::bernoulli, Activation::relu, sizes, 5, 37);
      const int layers = static_cast<int>(sizes.size()), phases = fused_step_gemm_phases(layers, layers, samples);
      const auto x = test::random_uniform(static_cast<size_t>(rows) * c.input_dim, 17 + samples, 0, 1);
      const DeviceBuffer<float> data(ctx, x);
      struct Result {
        std::vector<float> params, m, v;
        std::vector<double> totals;
      } result[2];
      // The flags run's workspace: garbage (a launch clears its tickets and flags).
      const long long flags_at = phases * fused_step_region_floats(grid);
      const std::vector<float> init(fused_step_workspace_floats(grid, samples * batch, c.input_dim, false, phases),
                                    -3.25e7f);
      DeviceBuffer<float> workspace(ctx, init);
      for (const bool flags : {false, true}) {
        Vae vae(ctx, c, batch, samples);
        vae.set_fused_variant({FusedMath::ffma, false, 0, flags, cluster});
        vae.params().upload(init_parameters(c, vae.layout(), 8));
        Optimizer opt(ctx, vae.layout().total, OptimizerKind::adam, OptimizerHyper{});
        DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{5, 0}});
        DeviceBuffer<double> totals(ctx, 3);
        for (const auto& launch : launches) {
          FusedStepArgs a = fused_args(vae, opt, launch[0], data.data(), 4, at.data(), totals.data());
          a.steps = launch[1];
          EXPECT_EQ(a.row_flags, flags);
          EXPECT_EQ(a.cluster, cluster);
          EXPECT_EQ(a.grid, cluster > 1 ? grid : 0);
          if (flags) {
            a.workspace = workspace.data();
            a.workspace_floats = static_cast<long long>(init.size());
          }
          VAE_CALL(target, fused_step, a, ctx.stream());
        }
        ctx.synchronize();
        result[flags] = {vae.params().download(), opt.state(0).download(), opt.state(1).download(), totals.download()};
      }
      EXPECT_EQ(result[1].params, result[0].params);
      EXPECT_EQ(result[1].m, result[0].m);
      EXPECT_EQ(result[1].v, result[0].v);
      EXPECT_EQ(result[1].totals, result[0].totals);
      EXPECT_EQ(result[1].totals[2], static_cast<double>(rows));
      // The column tiles of each phase's first GEMM: the encoder's layers (43, 33 columns) and the heads (5 pairs),
      // the decoder's (33, 43) and the output layer (37); the input gradients (of 43, 33 and 5 columns; with L > 1
      // the latent backward's only GEMM an update), the heads' (33) and the encoder's (43), the last phase's updates.
      std::vector<int> tiles =
          hidden ? std::vector<int>{2, 2, 1, 2, 2, 2, 2, 2, 1, 2, 2, 0} : std::vector<int>{1, 2, 1, 0};
      if (samples > 1) tiles.insert(tiles.begin() + (hidden ? 9 : 3), 0);
      ASSERT_EQ(static_cast<int>(tiles.size()), phases);
      const std::vector<float> after = workspace.download();
      const int stride = fused_row_blocks(samples * batch);
      auto count_at = [&](long long i) {
        unsigned got = 0;
        std::memcpy(&got, &after[flags_at + i], sizeof got);
        return got;
      };
      for (int f = 0; f < phases; ++f) {
        const bool sampled = f > layers && f <= 3 * layers + 2;  // the decoder's phases: L·B rows, else B
        for (int r = 0; r < stride; ++r) {
          const bool in_rows = r < fused_row_blocks(sampled ? samples * batch : batch);
          EXPECT_EQ(count_at(f * stride + r), in_rows ? 2u * tiles[f] : 0u)
              << "GEMM phase " << f << ", row block " << r;
        }
      }
      EXPECT_EQ(count_at(phases * stride), 2u * grid) << "the rows' terms";
      EXPECT_EQ(count_at(phases * stride + 1), samples > 1 ? 2u * grid : 0u) << "the latent backward";
    }
}
// Launches of different grids on one workspace compute what each launch does on a fresh workspace
// of its own, bit for bit: where a split-K ticket lies moves with the grid, and a launch clears its
// tickets before it takes one (it finds no earlier launch's partial sums there). Grids of 7, 2 and
// 5 blocks (each splits K its own way; uncleared, the grid of 2 found its first phase's ticket on
// the partial sums of the grid of 7's), two steps a launch, with grid barriers and with row flags;
// the fresh workspaces start as garbage.
TEST_P(FusedStepLaunch, LaunchesOfDifferentGridsShareTheWorkspace) {
  const Target target = GetParam();
  if (target != Target::cpu) GTEST_SKIP() << "the grids are the CPU's worker counts";
  const int batch = 29;
  const test::ScopedWorkers grid_of(target, 7);
  DeviceContext ctx(target, false);
  const ModelConfig c = small_config(DecoderKind::gaussian, Activation::tanh, {29, 45}, 6, 300);
  const int grids[] = {7, 2, 5};
  const auto x = test::random_uniform(static_cast<size_t>(std::size(grids)) * 2 * batch * c.input_dim, 23, 0, 1);
  const DeviceBuffer<float> data(ctx, x);
  const int phases = fused_step_gemm_phases(2, 2, 1);
  for (const bool flags : {false, true}) {
    SCOPED_TRACE(flags ? "row flags" : "grid barriers");
    std::vector<float> params[2];
    std::vector<double> totals_of[2];
    for (const bool shared : {true, false}) {
      Vae vae(ctx, c, batch, 1);
      vae.set_fused_variant({FusedMath::ffma, false, 0, flags});
      vae.params().upload(init_parameters(c, vae.layout(), 4));
      Optimizer opt(ctx, vae.layout().total, OptimizerKind::adam, OptimizerHyper{});
      DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{3, 0}});
      DeviceBuffer<double> totals(ctx, 3);
      for (const int grid : grids) {
        FusedStepArgs a = fused_args(vae, opt, batch, data.data(), 6, at.data(), totals.data());
        a.grid = grid;
        a.steps = 2;
        const std::vector<float> garbage(
            shared ? 0 : fused_step_workspace_floats(grid, batch, c.input_dim, true, phases), 1.5e9f);
        DeviceBuffer<float> own(ctx, garbage);
        if (!shared) {
          a.workspace = own.data();
          a.workspace_floats = static_cast<long long>(own.size());
        }
        VAE_CALL(target, fused_step, a, ctx.stream());
        ctx.synchronize();
      }
      params[shared] = vae.params().download();
      totals_of[shared] = totals.download();
    }
    EXPECT_EQ(params[1], params[0]);
    EXPECT_EQ(totals_of[1], totals_of[0]);
    EXPECT_EQ(totals_of[1][2], static_cast<double>(std::size(grids) * 2 * batch));
  }
}
INSTANTIATE_TEST_SUITE_P(Targets, FusedStepLaunch, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

// Persistent across steps: one launch of three steps (FusedStepArgs::steps) computes, bit for bit,
// what three launches of one step do — parameters, Adam's moments, the totals and the step state —
// with dynamic binarization and L = 2, on a grid of several blocks; its later steps take the batch
// the step before gathered (FusedStepArgs::x_next), one grid barrier fewer.
TEST_P(FusedStepLaunch, ThreeStepsInOneLaunchAreThreeLaunches) {
  const Target target = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  const int batch = 23, steps = 3;
  ModelConfig c = small_config(DecoderKind::gaussian, Activation::tanh, {31}, 5, 37);
  const auto x = test::random_uniform(static_cast<size_t>(steps) * batch * c.input_dim, 13, 0, 1);
  DeviceContext ctx(target, false);
  const DeviceBuffer<float> data(ctx, x);
  struct Result {
    std::vector<float> params, m, v;
    std::vector<double> totals;
    StepState at;
  } result[2];
  const int grid = VAE_CALL(target, fused_step_grid);
  DeviceBuffer<unsigned long long> timers(ctx, static_cast<size_t>(grid) * kFusedPhaseSlots);
  for (const bool persistent : {false, true}) {
    Vae vae(ctx, c, batch, 2);
    vae.params().upload(init_parameters(c, vae.layout(), 6));
    Optimizer opt(ctx, vae.layout().total, OptimizerKind::adam, OptimizerHyper{});
    DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{7, 0}});
    DeviceBuffer<double> totals(ctx, 3);
    for (int launch = 0; launch < (persistent ? 1 : steps); ++launch) {
      FusedStepArgs a = fused_args(vae, opt, batch, data.data(), 4, at.data(), totals.data());
      a.binarize = true;
      a.steps = persistent ? steps : 1;
      a.phase_ns = persistent ? timers.data() : nullptr;
      EXPECT_NE(a.x_next, nullptr);
      VAE_CALL(target, fused_step, a, ctx.stream());
    }
    ctx.synchronize();
    result[persistent] = {vae.params().download(), opt.state(0).download(), opt.state(1).download(), totals.download(),
                          at.download()[0]};
  }
  EXPECT_EQ(result[1].params, result[0].params);
  EXPECT_EQ(result[1].m, result[0].m);
  EXPECT_EQ(result[1].v, result[0].v);
  EXPECT_EQ(result[1].totals, result[0].totals);
  EXPECT_EQ(result[1].totals[2], 3.0 * batch);
  EXPECT_EQ(result[1].at.step, 10u);
  EXPECT_EQ(result[1].at.offset, 3 * batch);
  EXPECT_EQ(result[0].at.step, 10u);
  const auto ns = timers.download();  // the launch's last step
  const int barriers = fused_step_barriers(1, 1, 2) - 1;
  EXPECT_EQ(ns[1 + kFusedPhases], static_cast<unsigned long long>(barriers));
  // Its barriers named without the gather, the latent backward among them (L = 2).
  EXPECT_EQ(fused_barrier_name(0, 1, 1, 2, false), "encoder 1");
  EXPECT_EQ(fused_barrier_name(barriers - 2, 1, 1, 2, false), "latent backward");
  EXPECT_EQ(fused_barrier_name(barriers - 1, 1, 1, 2, false), "heads backward");
  EXPECT_EQ(fused_barrier_name(barriers, 1, 1, 2, false), "");
}

const StepCase kFusedCases[] = {
    {DecoderKind::bernoulli, Activation::relu, 1},
    {DecoderKind::bernoulli, Activation::tanh, 3},
    {DecoderKind::gaussian, Activation::relu, 3},
    {DecoderKind::gaussian, Activation::tanh, 1},
};

INSTANTIATE_TEST_SUITE_P(Cases, FusedStep,
                         ::testing::Combine(::testing::ValuesIn(test::all_targets()), ::testing::ValuesIn(kFusedCases)),
                         step_case_name);

INSTANTIATE_TEST_SUITE_P(Cases, FusedClusters,
                         ::testing::Combine(::testing::ValuesIn(test::all_targets()), ::testing::ValuesIn(kFusedCases)),
                         step_case_name);

}  // namespace
}  // namespace vae
