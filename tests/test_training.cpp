// Training end to end on the CPU: the ELBO rises on real data, runs are deterministic, a
// resumed run continues exactly, and the CLI's commands and errors behave.
#include <sys/wait.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>
#include <filesystem>
#include <fstream>

#include "checkpoint.h"
#include "reference_vae.h"
#include "runtime/workers.h"
#include "step_rule.h"
#include "support.h"
#include "trainer.h"

namespace vae {
namespace {

namespace fs = std::filesystem;

TrainConfig small_config() {
  TrainConfig c;
  c.model.hidden = {64};
  c.model.latent = 8;
  c.batch_size = 50;
  c.seed = 7;
  return c;
}

DataOptions fashion_slice(int64_t train, int64_t test) {
  DataOptions d;
  d.train_limit = train;
  d.test_limit = test;
  return d;
}

class Training : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::is_directory(kFashionMnistDir)) {
      FAIL() << kFashionMnistDir << " is missing: run cmake/setup.sh (installs dataset-fashion-mnist)";
    }
    const DataOptions d = fashion_slice(1500, 300);
    train_ = load_train_data(d);
    test_ = load_test_data(d);
    config_ = small_config();
    config_.model.input_dim = train_.dim();
    config_.model.image_height = train_.height;
    config_.model.image_width = train_.width;
  }
  Dataset train_, test_;
  TrainConfig config_;
};

// The kernel launches and GEMM calls of one training step of the default model (784-400-20,
// ReLU, Bernoulli, Adam), counted under host execution as an epoch of two steps minus an epoch
// of one. Pinned, so that a change that adds kernels to the step shows up here: the step is
// the batch gather, the latent forward, the reconstruction, the ELBO totals, the latent
// backward and the optimizer (which also moves the step counter on), around 11 GEMMs whose epilogues carry the
// biases, activations, their derivatives and the bias gradients.
TEST_F(Training, KernelsPerStepOfTheDefaultModelArePinned) {
  DeviceContext ctx(Target::cpu, false);
  TrainConfig c;
  c.model.input_dim = train_.dim();
  c.model.image_height = train_.height;
  c.model.image_width = train_.width;
  bool fused = false;
  int launch_steps = 1;
  auto count = [&](int64_t rows) {
    Dataset d = train_;
    d.truncate(rows);
    const DeviceDataset tr(ctx, d);
    Trainer t(ctx, c);
    t.set_fused_step(fused);
    t.set_fused_launch_steps(launch_steps);
    const hx::WorkCounts before = hx::work_counts();
    t.train_epoch(tr);
    const hx::WorkCounts after = hx::work_counts();
    return std::pair{after.kernel_launches - before.kernel_launches, after.gemm_calls - before.gemm_calls};
  };
  const auto one = count(c.batch_size), two = count(2 * c.batch_size);
  EXPECT_EQ(two.first - one.first, 6u) << "kernel launches per training step";
  EXPECT_EQ(two.second - one.second, 11u) << "GEMM calls per training step";
  fused = true;  // the fused step: the whole step is one launch
  const auto fused_one = count(c.batch_size), fused_two = count(2 * c.batch_size);
  EXPECT_EQ(fused_two.first - fused_one.first, 1u) << "kernel launches per fused training step";
  EXPECT_EQ(fused_two.second - fused_one.second, 0u) << "GEMM calls per fused training step";
  launch_steps = 50;  // persistent: the epoch's full batches in one launch
  const auto persistent_one = count(c.batch_size), persistent_five = count(5 * c.batch_size);
  EXPECT_EQ(persistent_five.first, persistent_one.first) << "kernel launches of a persistent fused epoch";
}

// The logged gradient norm is the norm of the last step's gradient, composed and fused: the
// gradient buffer against float64 at the end of an epoch of 1500 rows; the logged update norm,
// the last step's change of the parameters (composed: the parameters before it are at hand).
TEST_F(Training, LastGradientNormIsTheLastStepsGradient) {
  DeviceContext ctx(Target::cpu, false);
  const DeviceDataset tr(ctx, train_);
  for (bool fused : {false, true}) {
    Trainer t(ctx, config_);
    t.set_fused_step(fused);
    ASSERT_EQ(t.fused_step(), fused);
    EXPECT_EQ(t.last_update_norm(), 0);  // no step yet
    int checked = 0;
    std::vector<float> before = t.model().params().download();
    t.train_epoch(tr, [&](int64_t done, int64_t total) {
      if (done == total) {  // after the epoch's last launch (fused: one persistent launch of 30 steps)
        ++checked;
        double want = 0;
        for (float g : t.model().grads().download()) want += double(g) * g;
        EXPECT_NEAR(t.last_gradient_norm(), std::sqrt(want), 1e-9 * std::sqrt(want)) << fused;
        EXPECT_GT(want, 0);
        if (!fused) {  // the update norm: the last step's change of the parameters, in float64
          const std::vector<float> after = t.model().params().download();
          double update = 0;
          for (size_t i = 0; i < after.size(); ++i)
            update += (double(before[i]) - after[i]) * (double(before[i]) - after[i]);
          EXPECT_NEAR(t.last_update_norm(), std::sqrt(update), 1e-4 * std::sqrt(update));
          EXPECT_GT(update, 0);
        }
      }
      before = t.model().params().download();
      return true;
    });
    EXPECT_EQ(checked, 1) << fused;
  }
}

TEST_F(Training, TestElboRisesOnFashionMnistSlice) {
  DeviceContext ctx(Target::cpu, false);
  Trainer t(ctx, config_);
  const DeviceDataset tr(ctx, train_), te(ctx, test_);
  const double before = t.evaluate(te).elbo();
  double after = before;
  for (int e = 0; e < 4; ++e) {
    t.train_epoch(tr);
    after = t.evaluate(te).elbo();
  }
  // Untrained: ≈ −543 nats (784 pixels at logit 0). Four epochs over 1500 images reach ≈ −330.
  EXPECT_LT(before, -450);
  EXPECT_GT(after, before + 120) << "before " << before << ", after " << after;
  EXPECT_LT(after, -100);
}

TEST_F(Training, SameSeedSameParametersAndResumeContinuesExactly) {
  DeviceContext ctx(Target::cpu, false);
  const DeviceDataset tr(ctx, train_), te(ctx, test_);
  Trainer straight(ctx, config_);
  straight.train_epoch(tr);
  straight.train_epoch(tr);
  const Checkpoint a = straight.checkpoint();

  Trainer again(ctx, config_);
  again.train_epoch(tr);
  again.train_epoch(tr);
  EXPECT_EQ(again.checkpoint().params, a.params) << "same seed, different parameters";

  const fs::path ck = fs::temp_directory_path() / ("vae_resume_" + std::to_string(::getpid()) + ".safetensors");
  {
    Trainer first(ctx, config_);
    first.train_epoch(tr);
    save_checkpoint(ck.string(), first.checkpoint());
  }
  const Checkpoint loaded = load_checkpoint(ck.string());
  fs::remove(ck);
  Trainer resumed(ctx, loaded.config);
  resumed.restore(loaded);
  EXPECT_EQ(resumed.epoch(), 1);
  resumed.train_epoch(tr);
  const Checkpoint b = resumed.checkpoint();
  EXPECT_EQ(b.step, a.step);
  EXPECT_EQ(b.params, a.params) << "resumed run diverged from the uninterrupted one";
  EXPECT_EQ(b.optimizer_state, a.optimizer_state);
  EXPECT_EQ(resumed.evaluate(te).elbo(), straight.evaluate(te).elbo());
}

// The fused step (one cooperative kernel per step) trains as the composed step does: an epoch
// of Adam (and of Adagrad and SGD, and of Adam with the Monte-Carlo KL at β = 0.5 in a warm-up) on
// the Fashion-MNIST slice (with the partial last batch, dynamic binarization and L = 2) ends at the
// same test ELBO and close parameters, and the same seed gives the same bits.
TEST_F(Training, FusedStepTrainsAsTheComposedStepAndIsDeterministic) {
  DeviceContext ctx(Target::cpu, false);
  Dataset train = train_;
  train.truncate(420);  // 8 full batches of 50 and one of 20
  const DeviceDataset tr(ctx, train), te(ctx, test_);
  TrainConfig c = config_;
  c.samples = 2;
  c.binarize = Binarize::dynamic;
  c.model.hidden = {64, 32};
  auto run = [&](bool fused) {
    Trainer t(ctx, c);
    t.set_fused_step(fused);
    EXPECT_EQ(t.fused_step(), fused);
    const ElboTotals train_elbo = t.train_epoch(tr);
    return std::tuple{t.checkpoint(), train_elbo, t.evaluate(te)};
  };
  for (OptimizerKind kind : {OptimizerKind::adagrad, OptimizerKind::sgd}) {  // the other optimizers, briefly
    c.optimizer = kind;
    const auto [composed, composed_train, composed_test] = run(false);
    const auto [fused, fused_train, fused_test] = run(true);
    EXPECT_NEAR(fused_test.elbo(), composed_test.elbo(), 1e-3 * std::fabs(composed_test.elbo()))
        << optimizer_name(kind);
  }
  c.optimizer = OptimizerKind::adam;
  c.kl = KlTerm{KlEstimator::monte_carlo, 0.5f, 4, KlGradient::dreg};  // estimator A, its path derivative, β: fused too
  {
    const auto [composed_kl, composed_kl_train, composed_kl_test] = run(false);
    const auto [fused_kl, fused_kl_train, fused_kl_test] = run(true);
    EXPECT_NEAR(fused_kl_train.elbo(), composed_kl_train.elbo(), 1e-3 * std::fabs(composed_kl_train.elbo()));
    EXPECT_NEAR(fused_kl_test.elbo(), composed_kl_test.elbo(), 1e-3 * std::fabs(composed_kl_test.elbo()));
  }
  c.kl = KlTerm{};
  const auto [composed, composed_train, composed_test] = run(false);
  const auto [fused, fused_train, fused_test] = run(true);
  const auto [again, again_train, again_test] = run(true);
  EXPECT_EQ(again.params, fused.params) << "same seed, different parameters";
  EXPECT_EQ(again_train.elbo(), fused_train.elbo());
  EXPECT_EQ(fused.step, composed.step);
  EXPECT_NEAR(fused_train.elbo(), composed_train.elbo(), 1e-3 * std::fabs(composed_train.elbo()));
  EXPECT_NEAR(fused_test.elbo(), composed_test.elbo(), 1e-3 * std::fabs(composed_test.elbo()));
  double worst = 0;
  for (size_t i = 0; i < fused.params.size(); ++i) {
    worst = std::max(worst, std::fabs(static_cast<double>(fused.params[i]) - composed.params[i]));
  }
  EXPECT_LT(worst, 2e-3) << "largest parameter difference after an epoch of Adam";  // lr 1e-3, 9 steps
  EXPECT_GT(worst, 0.0) << "the two paths cannot agree to the bit: is the fused step running?";
}

// The persistent fused step (consecutive full batches in one launch) trains, bit for bit, as one
// launch per step; its launches end where the divergence check is due and at multiples of the
// caller's step boundary, where on_step comes: over 8 full batches and a partial one, with checks
// every 3 steps and a boundary every 5 (the resumed epoch's steps continue the count).
TEST_F(Training, PersistentFusedLaunchesAreOneLaunchPerStep) {
  DeviceContext ctx(Target::cpu, false);
  Dataset train = train_;
  train.truncate(420);  // 8 full batches of 50 and one of 20
  const DeviceDataset tr(ctx, train);
  TrainConfig c = config_;
  c.binarize = Binarize::dynamic;
  auto run = [&](int most, std::vector<int64_t>* calls) {
    Trainer t(ctx, c);
    t.set_fused_step(true);
    t.set_divergence_check_every(3);
    t.set_fused_launch_steps(most, 5);
    for (int e = 0; e < 2; ++e) {
      t.train_epoch(tr, [&](int64_t done, int64_t) {
        if (calls) calls->push_back(t.step());
        return done > 0;
      });
    }
    return t.checkpoint();
  };
  std::vector<int64_t> calls;
  const Checkpoint one = run(1, nullptr), persistent = run(50, &calls);
  EXPECT_EQ(persistent.params, one.params);
  EXPECT_EQ(persistent.optimizer_state, one.optimizer_state);
  EXPECT_EQ(persistent.step, 18);
  // Launch ends (global steps): epoch 1 at 3, 5, 6, 8 (full batches done), the partial 9; epoch 2
  // (steps 10..18, batches 1..9) at 10, 12 (its batch 3), 15, 17 (batch 8), the partial 18.
  EXPECT_EQ(calls, (std::vector<int64_t>{3, 5, 6, 8, 9, 10, 12, 15, 17, 18}));
}

// The guard against divergence: with a learning rate that diverges, training stops with
// Diverged naming the step where a non-finite value appeared and the term, on both decoders and
// both steps; with the check every step (--detect-anomaly) it stops at that very step.
TEST_F(Training, DivergenceStopsAtTheStepWhereItAppears) {
  DeviceContext ctx(Target::cpu, false);
  Dataset train = train_;
  train.truncate(1000);  // 20 batches of 50
  const DeviceDataset tr(ctx, train);
  for (DecoderKind dec : {DecoderKind::bernoulli, DecoderKind::gaussian})
    for (bool fused : {false, true}) {
      SCOPED_TRACE(std::string(decoder_name(dec)) + (fused ? ", fused step" : ", composed step"));
      TrainConfig c = config_;
      c.model.decoder = dec;
      c.optimizer = OptimizerKind::sgd;
      c.hyper.lr = 1e4f;
      c.hyper.momentum = 0.9f;
      Trainer t(ctx, c);
      t.set_fused_step(fused);
      t.set_divergence_check_every(1);
      try {
        t.train_epoch(tr);
        ADD_FAILURE() << "training with lr 1e4 did not diverge";
      } catch (const Diverged& e) {
        const std::string msg = e.what();
        const std::string at = "training diverged at step " + std::to_string(t.step()) + ": ";
        EXPECT_EQ(msg.rfind(at, 0), 0u) << msg;  // the step it stopped at is the step it names
        EXPECT_LT(t.step(), 20) << "it ran on to the end of the epoch";
        EXPECT_TRUE(msg.find("the gradient of ") != std::string::npos || msg.find(" term ") != std::string::npos)
            << msg;
        EXPECT_NE(msg.find("--lr"), std::string::npos) << msg;
      }
    }
}

TEST_F(Training, EveryOptimizerDecoderAndBinarizationTrains) {
  DeviceContext ctx(Target::cpu, false);
  Dataset train = train_, test = test_;
  train.truncate(400);
  test.truncate(100);
  const DeviceDataset tr(ctx, train), te(ctx, test);
  for (OptimizerKind opt : {OptimizerKind::adam, OptimizerKind::adagrad, OptimizerKind::sgd}) {
    for (Binarize bin : {Binarize::none, Binarize::dynamic}) {
      TrainConfig c = config_;
      c.optimizer = opt;
      c.binarize = bin;
      c.hyper.lr = opt == OptimizerKind::adam ? 1e-3f : opt == OptimizerKind::adagrad ? 2e-2f : 1e-2f;
      c.samples = 2;
      Trainer t(ctx, c);
      const double before = t.evaluate(te).elbo();
      for (int e = 0; e < 2; ++e) t.train_epoch(tr);
      const double after = t.evaluate(te).elbo();
      EXPECT_GT(after, before + 30) << optimizer_name(opt) << " " << binarize_name(bin);
    }
  }
  TrainConfig g = config_;
  g.model.decoder = DecoderKind::gaussian;
  Trainer t(ctx, g);
  const double before = t.evaluate(te).elbo();
  for (int e = 0; e < 2; ++e) t.train_epoch(tr);
  EXPECT_GT(t.evaluate(te).elbo(), before + 30) << "gaussian decoder";
}

// ---- the CLI ---------------------------------------------------------------------------------

// The rule of --step auto (host/step_rule.h) on a table of its own: the entry of the largest batch at most the
// run's (the smallest batch's below them all), per card and precision; the composed step without one.
TEST(StepRule, TakesTheEntryOfTheLargestMeasuredBatchAtMostTheRunsOfItsCardAndPrecision) {
  const std::vector<StepRuleEntry> table = {
      {"Card A", "fp32", 64, "composed", "", false, 0, false, 1, 120.0, 100.0, "2026-12-01", "aaa1111"},
      {"Card A", "fp32", 256, "fused", "ffma", false, 0, false, 1, 80.0, 100.0, "2026-12-01", "aaa1111"},
      {"Card A", "fp32", 1024, "fused", "3xtf32", true, 0, false, 1, 150.0, 300.0, "2026-12-01", "aaa1111"},
      {"Card A", "tf32", 128, "fused", "tf32", false, 12, true, 1, 50.0, 90.0, "2026-12-02", "bbb2222"},
      {"Card B", "fp32", 128, "fused", "ffma", true, 4, false, 1, 10.0, 90.0, "2026-12-03", "ccc3333"},
      {"Card B", "fp32", 2048, "fused", "3xtf32", false, 0, true, 4, 40.0, 90.0, "2026-12-03", "ccc3333"},
      {"Card D", "fp32", 128, "composed", "", false, 0, false, 1, 0.0, 70.0, "2026-12-04", "ddd4444"},
  };
  struct Case {
    const char* card;
    bool tf32;
    int batch;
    bool fused;
    FusedVariant variant;
    const char* says;
  };
  const FusedVariant ffma{FusedMath::ffma, false, 0, false}, tf32_12_flags{FusedMath::tf32, false, 12, true},
      ffma_half_4{FusedMath::ffma, true, 4, false}, flags_cluster_4{FusedMath::tf32x3, false, 0, true, 4};
  for (const Case& c : {
           Case{"Card A", false, 7, false, ffma, "composed: the sweep of Card A at fp32, batch 64"},
           Case{"Card A", false, 255, false, ffma, "batch 64 (fused 120.0 us a step, composed 100.0"},
           Case{"Card A", false, 256, true, ffma, "fused ffma: the sweep of Card A at fp32, batch 256"},
           Case{"Card A", false, 1000, true, ffma, "2026-12-01, commit aaa1111"},
           Case{"Card A", false, 4096, true, {FusedMath::tf32x3, true, 0, false}, "fused 3xtf32 half grid: the sweep"},
           Case{"Card A", true, 33, true, tf32_12_flags, "fused tf32 ticket 12 row flags: the sweep of Card A at tf32"},
           Case{"Card B", false, 500, true, ffma_half_4, "fused ffma half grid ticket 4: the sweep"},
           Case{"Card B", false, 3000, true, flags_cluster_4, "fused 3xtf32 row flags cluster 4: the sweep"},
           Case{"Card B", true, 128, false, ffma, "composed: no sweep of Card B at tf32"},
           Case{"Card C", false, 128, false, ffma, "composed: no sweep of Card C at fp32"},
           Case{"Card D", false, 512, false, ffma, "(fused not measured, composed 70.0 us a step"},
       }) {
    const StepChoice got = step_by_rule(table, c.card, c.tf32, c.batch);
    const std::string at = std::string(c.card) + (c.tf32 ? " tf32" : " fp32") + " batch " + std::to_string(c.batch);
    EXPECT_EQ(got.fused, c.fused) << at;
    if (c.fused) {
      EXPECT_EQ(got.variant.math, c.variant.math) << at;
      EXPECT_EQ(got.variant.half_grid, c.variant.half_grid) << at;
      EXPECT_EQ(got.variant.ticket_chunks, c.variant.ticket_chunks) << at;
      EXPECT_EQ(got.variant.row_flags, c.variant.row_flags) << at;
      EXPECT_EQ(got.variant.cluster, c.variant.cluster) << at;
    }
    EXPECT_NE(got.why.find(c.says), std::string::npos) << at << ": " << got.why;
  }
}

// The shipped table: well formed, and on the CPU the composed step at every measured batch (the fused
// step's tiles under host execution are ~50x slower: bench_step --sweep, step_rule_table.inc).
TEST(StepRule, TheShippedTableIsWellFormedAndRunsTheCpuComposed) {
  int cpu = 0;
  for (const StepRuleEntry& e : step_rule_table()) {
    const std::string at = std::string(e.card) + " " + e.precision + " " + std::to_string(e.batch);
    EXPECT_TRUE(std::string(e.precision) == "fp32" || std::string(e.precision) == "tf32") << at;
    EXPECT_GT(e.batch, 0) << at;
    EXPECT_GT(e.composed_us, 0) << at;
    const std::string step = e.step, math = e.fused_math;
    EXPECT_TRUE(step == "composed" || step == "fused") << at;
    if (step == "fused") {
      EXPECT_TRUE(math == "ffma" || math == "3xtf32" || (math == "tf32" && std::string(e.precision) == "tf32")) << at;
      EXPECT_LT(e.fused_us, e.composed_us) << at;
      EXPECT_GE(e.ticket_chunks, 0) << at;
      EXPECT_TRUE(e.cluster >= 1 && e.cluster <= kFusedMaxCluster) << at;
    }
    EXPECT_EQ(std::string(e.date).size(), 10u) << at;
    EXPECT_GE(std::string(e.commit).size(), 7u) << at;
    if (std::string(e.card) == "cpu") {
      ++cpu;
      EXPECT_EQ(step, "composed") << at;
    }
  }
  EXPECT_GT(cpu, 0) << "the table has no CPU entries";
  EXPECT_FALSE(step_by_rule(step_rule_table(), "cpu", false, 128).fused);
}

using test::Result;
using test::run_cli;

size_t lines(const std::string& s) { return static_cast<size_t>(std::count(s.begin(), s.end(), '\n')); }

TEST(Cli, BadFlagsGetOneLineAndExitTwo) {
  for (const char* args :
       {"train --epochs -3", "train --activation sigmoid", "train --bogus 1", "train --hidden 4x,5",
        "train --device tpu", "eval", "frobnicate", "train --test y.npy", "train --resume /dev/null --lr 0.1",
        "train --gradient dreg", "train --gradient sideways --estimator monte-carlo"}) {
    const Result r = run_cli(args);
    EXPECT_EQ(r.code, 2) << args << ": " << r.err;
    EXPECT_EQ(lines(r.err), 1u) << args << ": " << r.err;
  }
  EXPECT_NE(run_cli("train --hidden 4x,5").err.find("--hidden"), std::string::npos);
  EXPECT_NE(run_cli("train --activation sigmoid").err.find("--activation"), std::string::npos);
  EXPECT_NE(run_cli("train --gradient dreg").err.find("--estimator monte-carlo"), std::string::npos);
  // Numeric bounds say the bound, briefly (CLI11's own check printed the largest double in full).
  for (const auto& [args, says] :
       {std::pair{"train --lr 0", "--lr: must be a finite number > 0, got 0"},
        std::pair{"train --kl-weight -1", "--kl-weight: must be a finite number >= 0, got -1"},
        std::pair{"train --train-limit 0", "--train-limit: must be a finite number > 0"},
        std::pair{"eval --checkpoint /dev/null --mi-draws 0", "--mi-draws: must be a finite number > 0"},
        std::pair{"train --lr nan", "--lr: must be a finite number > 0, got nan"},
        std::pair{"train --seed -1", "--seed: must be an integer >= 0, got '-1'"},
        // (--out: were the seed taken, the run would stop at once, with exit 1)
        std::pair{"train --seed 18446744073709551616 --out /dev/null/x",
                  "--seed: must be an integer below 2^64, got '1844"},
        std::pair{"sample --checkpoint /dev/null --n 1 --out x.png --seed 99999999999999999999",
                  "--seed: must be an integer below 2^64"},
        std::pair{"train --test ''", "--test: empty value"},
        std::pair{"train --hidden 400,", "--hidden: expected positive sizes"},
        std::pair{"frobnicate --epochs 1", "vae: no command 'frobnicate' (train, sweep, eval"}}) {
    const Result r = run_cli(args);
    EXPECT_EQ(r.code, 2) << args;
    EXPECT_NE(r.err.find(says), std::string::npos) << args << ": " << r.err;
    EXPECT_LT(r.err.size(), 120u) << args << ": " << r.err;
  }
  const Result help = run_cli("train --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--binarize"), std::string::npos);
}

// The environment variables the CLI reads: a bad value is a one-line error naming the variable and
// exit code 1 (VAE_CPU_WORKERS=abc ran on every core; VAE_CPU_GEMM names an engine the build has).
TEST(Cli, BadEnvironmentGetsOneLineAndExitOne) {
  const std::string bad = (fs::temp_directory_path() / ("vae_env_" + std::to_string(::getpid()))).string();
  for (const auto& [var, value] :
       {std::pair{"VAE_CPU_WORKERS", "abc"}, std::pair{"VAE_CPU_WORKERS", "0"}, std::pair{"VAE_CPU_WORKERS", "3x"},
        std::pair{"VAE_CPU_WORKERS", "-2"}, std::pair{"VAE_CPU_WORKERS", "100000"}, std::pair{"VAE_CPU_GEMM", "mkl"}}) {
    ::setenv(var, value, 1);
    const Result r = run_cli("train --device cpu --epochs 1 --train-limit 64 --test-limit 64 --quiet --out " + bad);
    ::unsetenv(var);
    EXPECT_EQ(r.code, 1) << var << "=" << value << ": " << r.err;
    EXPECT_EQ(lines(r.err), 1u) << var << "=" << value << ": " << r.err;
    EXPECT_NE(r.err.find(std::string(var) + ": '" + value + "'"), std::string::npos) << r.err;
  }
  fs::remove_all(bad);
  ::setenv("VAE_CPU_WORKERS", "3", 1);
  const std::string out = (fs::temp_directory_path() / ("vae_env_ok_" + std::to_string(::getpid()))).string();
  fs::remove_all(out);
  const Result ok = run_cli("train --device cpu --epochs 1 --train-limit 64 --test-limit 64 --quiet --out " + out);
  ::unsetenv("VAE_CPU_WORKERS");
  EXPECT_EQ(ok.code, 0) << ok.err;
  std::ifstream metrics(out + "/metrics.jsonl");
  std::string line;
  std::getline(metrics, line);
  EXPECT_NE(line.find("\"device\":\"cpu (3 workers)\""), std::string::npos) << line;
  fs::remove_all(out);
}

// A model too large for the device's memory: one line naming what could not be allocated and the
// flags that make the work smaller, exit status 1, no checkpoint — where the CPU target's lazily
// committed buffers had been killed by the kernel while they filled (train), or by the first model
// of a sweep (sweep). The parameters alone (~650 GB) exceed any machine's memory: nothing is touched.
TEST(Cli, AModelTooLargeForMemoryIsOneLineAndExitOne) {
  const fs::path dir = fs::temp_directory_path() / ("vae_cli_oom_" + std::to_string(::getpid()));
  for (const auto& [command, says] :
       {std::pair{"train", "(less with a smaller --hidden, --latent, --batch-size, --samples or --k)"},
        std::pair{"sweep --seed 1..2", "or fewer models"}}) {
    fs::remove_all(dir);
    const Result r = run_cli(std::string(command) +
                             " --device cpu --hidden 100000000 --epochs 1 --train-limit 64 --test-limit 64 --quiet "
                             "--out " +
                             dir.string());
    EXPECT_EQ(r.code, 1) << command << ": " << r.err;
    EXPECT_EQ(lines(r.err), 1u) << command << ": " << r.err;
    EXPECT_EQ(r.err.rfind("vae: cannot allocate ", 0), 0u) << r.err;
    EXPECT_NE(r.err.find(" MiB of host memory: "), std::string::npos) << r.err;
    EXPECT_NE(r.err.find(says), std::string::npos) << r.err;
    if (!fs::exists(dir)) continue;
    for (const auto& e : fs::recursive_directory_iterator(dir))
      EXPECT_NE(e.path().extension(), ".safetensors") << e.path();
  }
  fs::remove_all(dir);
}

// A diverging run exits with status 3 and one line naming the step, and writes no checkpoint.
TEST(Cli, DivergenceExitsThreeWithoutACheckpoint) {
  const fs::path dir = fs::temp_directory_path() / ("vae_cli_diverge_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const Result r = run_cli(
      "train --optimizer sgd --lr 10000 --epochs 1 --train-limit 600 --test-limit 50 --quiet "
      "--detect-anomaly --out " +
      dir.string());
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("training diverged at step "), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "checkpoint.safetensors"));
  fs::remove_all(dir);
}

// Without --detect-anomaly the flag is read every 50 steps, but a checkpoint (here every 7
// steps) reads it first: a diverged state is never written.
TEST(Cli, NoCheckpointOfADivergedStateBetweenChecks) {
  const fs::path dir = fs::temp_directory_path() / ("vae_cli_diverge7_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const Result r = run_cli(
      "train --optimizer sgd --lr 10000 --epochs 1 --train-limit 6000 --test-limit 50 --quiet "
      "--checkpoint-every 7 --out " +
      dir.string());
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("training diverged at step "), std::string::npos) << r.err;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().extension() != ".safetensors") continue;
    const Checkpoint c = load_checkpoint(e.path().string());
    for (float p : c.params) ASSERT_TRUE(std::isfinite(p)) << e.path() << " holds a non-finite parameter";
  }
  fs::remove_all(dir);
}

TEST(Cli, TrainsOnNpyFilesOfBothTypes) {
  const fs::path dir = fs::temp_directory_path() / ("vae_cli_npy_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  // Smooth random 6x5 images: uint8 for training, float32 for testing.
  Dataset train, test;
  train.type = PixelType::u8;
  test.type = PixelType::f32;
  train.count = 300;
  test.count = 57;
  train.height = test.height = 6;
  train.width = test.width = 5;
  const auto a = test::random_uniform(300 * 30, 1, 0, 1), b = test::random_uniform(57 * 30, 2, 0, 1);
  for (float v : a) train.u8.push_back(static_cast<uint8_t>(v * 255));
  test.f32 = b;
  write_npy((dir / "train.npy").string(), train);
  write_npy((dir / "test.npy").string(), test);
  const std::string out = (dir / "run").string();
  Result r = run_cli("train --quiet --device cpu --epochs 2 --hidden 16 --latent 3 --batch-size 32 --train " +
                     (dir / "train.npy").string() + " --test " + (dir / "test.npy").string() + " --out " + out);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(fs::path(out) / "samples_2.png"));
  // eval finds the recorded NPY test set by itself.
  r = run_cli("eval --device cpu --checkpoint " + out + "/checkpoint.safetensors");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["n"].get<int>(), 57);
  // Mismatched image sizes between the two files are refused, naming both shapes.
  test.width = 6;
  test.count = 47;
  test.f32.resize(47 * 6 * 6);
  write_npy((dir / "test6.npy").string(), test);
  r = run_cli("train --quiet --device cpu --epochs 1 --train " + (dir / "train.npy").string() + " --test " +
              (dir / "test6.npy").string() + " --out " + (dir / "bad").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("6x5"), std::string::npos) << r.err;
  fs::remove_all(dir);
}

// The metrics say why a step kernel ran: the --step flag, and where the fused step was asked for
// but the run is outside its limits (here five hidden layers a side), that first.
TEST(Cli, TheMetricsSayWhyTheStepKernelRan) {
  if (!fs::is_directory(kFashionMnistDir)) FAIL() << kFashionMnistDir << " is missing: run cmake/setup.sh";
  const fs::path dir = fs::temp_directory_path() / ("vae_step_rule_" + std::to_string(::getpid()));
  for (const auto& [flags, kernel, rule] :
       {std::tuple{"--step fused --hidden 8,8,8,8,8", "composed",
                   "composed: outside the fused step's limits (hidden layers, ranks, objective, a stack of models); "
                   "--step fused"},
        std::tuple{"--step composed --hidden 8", "composed", "--step composed"},
        std::tuple{"--step fused --hidden 8", "fused", "--step fused"}}) {
    fs::remove_all(dir);
    const Result r = run_cli("train --quiet --device cpu --epochs 1 --train-limit 64 --test-limit 32 --batch-size 32 " +
                             std::string(flags) + " --out " + dir.string());
    ASSERT_EQ(r.code, 0) << flags << ": " << r.err;
    std::ifstream metrics(dir / "metrics.jsonl");
    std::string line;
    ASSERT_TRUE(std::getline(metrics, line)) << flags;
    const auto m = nlohmann::json::parse(line);
    EXPECT_EQ(m.value("step_kernel", ""), kernel) << flags;
    EXPECT_EQ(m.value("step_rule", ""), rule) << flags;
  }
  fs::remove_all(dir);
}

TEST(Cli, TrainEvalSampleReconstruct) {
  if (!fs::is_directory(kFashionMnistDir)) FAIL() << kFashionMnistDir << " is missing: run cmake/setup.sh";
  const fs::path dir = fs::temp_directory_path() / ("vae_cli_run_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const std::string common = " --device cpu --train-limit 600 --test-limit 200 --hidden 32 --latent 4 --batch-size 64";
  Result r = run_cli("train --quiet --epochs 2 --out " + dir.string() + common);
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* f :
       {"metrics.jsonl", "checkpoint.safetensors", "samples_1.png", "samples_2.png", "reconstructions_2.png"}) {
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  }
  std::ifstream metrics(dir / "metrics.jsonl");
  std::string line, last;
  int n = 0;
  while (std::getline(metrics, line)) {
    last = line;
    ++n;
  }
  ASSERT_EQ(n, 2);
  const auto m = nlohmann::json::parse(last);
  for (const char* k : {"epoch", "step", "train_elbo", "test_elbo", "test_recon", "test_kl", "epoch_seconds",
                        "samples_per_second", "device"}) {
    EXPECT_TRUE(m.contains(k)) << k;
  }
  // --step auto: the rule's table, which measured the CPU (batch 64: its entry of batch 64).
  EXPECT_EQ(m.value("step_kernel", ""), "composed");
  EXPECT_EQ(m.value("step_rule", "").rfind("composed: the sweep of cpu at fp32, batch 64 (", 0), 0u) << m.dump();
  // A new run into a folder that holds one is refused: the checkpoint is not overwritten.
  const auto ck_size = fs::file_size(dir / "checkpoint.safetensors");
  r = run_cli("train --quiet --epochs 1 --out " + dir.string() + common);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("already holds a run"), std::string::npos) << r.err;
  EXPECT_EQ(fs::file_size(dir / "checkpoint.safetensors"), ck_size);

  // eval reproduces the last epoch's test ELBO (the same noise, the same data: the checkpoint
  // recorded the data and its 200-image limit).
  const std::string ck = (dir / "checkpoint.safetensors").string();
  r = run_cli("eval --device cpu --checkpoint " + ck);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto e = nlohmann::json::parse(r.out);
  EXPECT_NEAR(e["test_elbo"].get<double>(), m["test_elbo"].get<double>(), 1e-3);
  EXPECT_EQ(e["n"].get<int>(), 200);

  // eval on other data: the first 50 test images.
  r = run_cli("eval --device cpu --test-limit 50 --checkpoint " + ck);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["n"].get<int>(), 50);

  // Resume to epoch 3 appends to the same folder, with the recorded data.
  r = run_cli("train --quiet --epochs 3 --device cpu --resume " + ck);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "samples_3.png"));
  EXPECT_EQ(nlohmann::json::parse(run_cli("eval --device cpu --checkpoint " + ck).out)["n"].get<int>(), 200);

  // --checkpoint also takes the run folder (its newest checkpoint), as --resume does.
  r = run_cli("eval --device cpu --checkpoint " + dir.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["step"],
            nlohmann::json::parse(run_cli("eval --device cpu --checkpoint " + ck).out)["step"]);
  r = run_cli("eval --device cpu --checkpoint " + (dir / "checkpoints").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("--checkpoint: " + (dir / "checkpoints").string() + " holds no checkpoint that loads"),
            std::string::npos)
      << r.err;

  r = run_cli("sample --device cpu --n 10 --checkpoint " + dir.string() + " --out " + (dir / "s.png").string());
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "s.png"));
  // The image commands write PNG files: another name is refused before anything runs.
  for (const char* command : {"sample", "reconstruct", "manifold"}) {
    r = run_cli(std::string(command) + " --device cpu --checkpoint " + ck + " --out " + (dir / "s.jpg").string());
    EXPECT_EQ(r.code, 2) << command;
    EXPECT_NE(r.err.find("--out: expected a .png file name"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "s.jpg")) << command;
  }
  r = run_cli("reconstruct --device cpu --checkpoint " + ck + " --out " + (dir / "r.png").string());
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "r.png"));

  // A corrupt checkpoint: one line naming the file, exit 1, and the good output untouched.
  const fs::path bad = dir / "bad.safetensors";
  fs::copy_file(ck, bad);
  fs::resize_file(bad, fs::file_size(bad) / 2);
  const auto before = fs::file_size(dir / "s.png");
  r = run_cli("sample --device cpu --checkpoint " + bad.string() + " --out " + (dir / "s.png").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_EQ(lines(r.err), 1u) << r.err;
  EXPECT_NE(r.err.find("bad.safetensors"), std::string::npos) << r.err;
  EXPECT_EQ(fs::file_size(dir / "s.png"), before);
  fs::remove_all(dir);
}

// ---- the epoch loop against the float64 reference ---------------------------------------------

// Two epochs of 13 rows at batch 5 (two full batches and a partial one of 3) through
// Trainer::train_epoch against the float64 reference stepping the same rows in the same order:
// the parameters and the optimizer state after every epoch, and the epoch totals. On the GPU the
// full batches replay the captured CUDA graph and the partial batch runs eagerly after a new step
// state, and the next epoch replays the graph again (GpuTraining compares it with eager launches
// too). Every optimizer.
class EpochLoop : public ::testing::TestWithParam<Target> {};

TEST_P(EpochLoop, TwoEpochsWithAPartialLastBatchMatchTheReference) {
  const Target target = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  const int B = 5, N = 13, epochs = 2;
  for (OptimizerKind kind : {OptimizerKind::adam, OptimizerKind::sgd, OptimizerKind::adagrad}) {
    SCOPED_TRACE(optimizer_name(kind));
    TrainConfig config;
    config.model.input_dim = 12;
    config.model.image_height = 3;
    config.model.image_width = 4;
    config.model.hidden = {7};
    config.model.latent = 3;
    config.model.activation = Activation::tanh;
    config.batch_size = B;
    config.seed = 23;
    config.optimizer = kind;
    config.hyper = test::tested_hyper(kind);
    const Dataset data = test::random_images(N, 3, 4, 19);
    const DeviceContext ctx(target, false);
    const DeviceDataset train(ctx, data);
    Trainer t(ctx, config);
    const test::ReferenceLayout rl = test::reference_layout(config.model);
    std::vector<double> p = test::reference_parameters(rl, 29), s1(p.size(), 0.0), s2(p.size(), 0.0);
    t.model().params().upload(test::from_reference(t.model().layout(), rl, p));

    uint64_t step = 0;
    for (int epoch = 0; epoch < epochs; ++epoch) {
      const ElboTotals got = t.train_epoch(train);
      DeviceBuffer<int> perm(ctx, N);
      VAE_CALL(ctx.target(), shuffle_permutation, perm.data(), N, epoch_shuffle_key(config.seed, epoch), ctx.stream());
      const std::vector<int> order = perm.download();
      double recon = 0, kl = 0;
      for (int first = 0; first < N; first += B, ++step) {
        const int rows = std::min(B, N - first);
        std::vector<double> x;
        for (int r = 0; r < rows; ++r) {
          const auto row = data.f32.begin() + static_cast<size_t>(order[first + r]) * 12;
          x.insert(x.end(), row, row + 12);
        }
        const auto eps = test::reference_noise(config.seed, RandomStream::latent_noise, step, rows, 1, 3);
        const auto ref = test::reference_vae(config.model, p, x, rows, 1, eps);
        for (int r = 0; r < rows; ++r) {
          recon += ref.log_prob[r];
          kl += ref.kl[r];
        }
        test::reference_optimizer_step(kind, config.hyper, step + 1, ref.grad, p, s1, s2);
      }
      const std::string where = "after epoch " + std::to_string(epoch);
      EXPECT_EQ(got.n, N) << where;
      EXPECT_NEAR(got.recon, recon / N, 1e-5 * std::fabs(recon / N)) << where;
      EXPECT_NEAR(got.kl, kl / N, 1e-5 * kl / N + 1e-6) << where;
      const Checkpoint c = t.checkpoint();
      EXPECT_EQ(c.step, static_cast<int64_t>(step)) << where;
      const ParamLayout& layout = t.model().layout();
      test::expect_tensors_near(layout, c.params, rl, p, 2e-6, 1e-5, "parameters " + where);
      test::expect_tensors_near(layout, c.optimizer_state[0], rl, s1, 2e-6, 1e-4, "state 1 " + where);
      if (kind == OptimizerKind::adam) {
        test::expect_tensors_near(layout, c.optimizer_state[1], rl, s2, 2e-6, 1e-4, "state 2 " + where);
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, EpochLoop, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

}  // namespace
}  // namespace vae
