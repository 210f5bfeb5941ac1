// vae sweep's batched step (host/model_stack.h): models that differ in every hyperparameter a
// stack may vary, trained as one stack, against the same models trained by lone trainers, on
// random data of odd sizes (a partial last batch) and for each kind of model the step has:
// the CPU's stack is the lone runs bit for bit; the GPU's (one strided-batched cuBLASLt call per
// GEMM, kernels with a model index) within float rounding.
#include <cmath>
#include <memory>

#include "model_stack.h"
#include "reference_vae.h"
#include "support.h"

namespace vae {
namespace {

class Stack : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override { VAE_SKIP_WITHOUT_DEVICE(GetParam()); }
};

struct Variant {
  const char* name;
  std::vector<int> hidden;
  Activation activation;
  DecoderKind decoder;
  OptimizerKind optimizer;
  Objective objective;
  Binarize binarize;
};

// Model k's hyperparameters: all different, as a sweep's may be.
TrainConfig model_config(const Variant& v, int k) {
  TrainConfig c;
  c.model.input_dim = 12;
  c.model.image_height = 3;
  c.model.image_width = 4;
  c.model.hidden = v.hidden;
  c.model.latent = 5;
  c.model.activation = v.activation;
  c.model.decoder = v.decoder;
  c.optimizer = v.optimizer;
  c.hyper = test::tested_hyper(v.optimizer);
  c.hyper.lr *= 1.f + 0.5f * k;
  c.hyper.weight_decay = 0.01f * k;
  c.hyper.momentum = 0.9f - 0.2f * k;
  c.objective = v.objective;
  c.k = 3;
  c.binarize = v.binarize;
  c.batch_size = 13;
  c.seed = 41 + 7 * k;
  c.kl.weight = 1.f;
  if (v.objective == Objective::elbo) {
    c.kl.weight = 0.5f + 0.5f * k;
    c.kl.warmup = 5 * k;
    c.kl.estimator = k == 1 ? KlEstimator::monte_carlo : KlEstimator::analytic;
    c.kl.gradient = k == 1 ? KlGradient::dreg : KlGradient::standard;
  } else if (k == 2) {
    c.kl.estimator = KlEstimator::monte_carlo;
    c.kl.gradient = KlGradient::dreg;
  }
  return c;
}

TEST_P(Stack, ModelsTrainAsTheirLoneTrainers) {
  const Target target = GetParam();
  const Variant variants[] = {
      {"relu-bernoulli-adam",
       {17},
       Activation::relu,
       DecoderKind::bernoulli,
       OptimizerKind::adam,
       Objective::elbo,
       Binarize::dynamic},
      {"tanh-gaussian-sgd-2-layers",
       {11, 9},
       Activation::tanh,
       DecoderKind::gaussian,
       OptimizerKind::sgd,
       Objective::elbo,
       Binarize::none},
      {"iwae-adagrad-no-hidden",
       {},
       Activation::relu,
       DecoderKind::bernoulli,
       OptimizerKind::adagrad,
       Objective::iwae,
       Binarize::dynamic},
  };
  constexpr int N = 101, M = 3, kEpochs = 2;  // 8 batches of 13, the last of 10
  const Dataset data = test::random_images(N, 3, 4, 5);
  for (const Variant& v : variants) {
    SCOPED_TRACE(v.name);
    const DeviceContext ctx(target, false);
    const DeviceDataset train(ctx, data);
    std::vector<std::unique_ptr<Trainer>> lone, stacked;
    std::vector<Trainer*> members;
    for (int k = 0; k < M; ++k) {
      lone.push_back(std::make_unique<Trainer>(ctx, model_config(v, k)));
      stacked.push_back(std::make_unique<Trainer>(ctx, model_config(v, k)));
      members.push_back(stacked.back().get());
    }
    std::vector<std::vector<ElboTotals>> lone_totals(M);
    for (int k = 0; k < M; ++k) {
      for (int e = 0; e < kEpochs; ++e) lone_totals[k].push_back(lone[k]->train_epoch(train));
    }
    ModelStack stack(ctx, members);
    int steps_seen = 0;
    for (int e = 0; e < kEpochs; ++e) {
      const std::vector<ElboTotals> got = stack.train_epoch(train, [&](int64_t, int64_t) {
        ++steps_seen;
        return true;
      });
      ASSERT_EQ(got.size(), static_cast<size_t>(M));
      for (int k = 0; k < M; ++k) {
        SCOPED_TRACE("epoch " + std::to_string(e) + " model " + std::to_string(k));
        EXPECT_EQ(stack.diverged(k), nullptr);
        const ElboTotals& want = lone_totals[k][e];
        EXPECT_EQ(got[k].n, want.n);
        EXPECT_TRUE(std::isfinite(want.elbo()));
        if (target == Target::cpu) {
          EXPECT_EQ(got[k].recon, want.recon);
          EXPECT_EQ(got[k].kl, want.kl);
          EXPECT_EQ(got[k].objective(), want.objective());
        } else {
          EXPECT_NEAR(got[k].recon, want.recon, 1e-3 * std::abs(want.recon) + 1e-3);
          EXPECT_NEAR(got[k].objective(), want.objective(), 1e-3 * std::abs(want.objective()) + 1e-3);
        }
      }
    }
    EXPECT_EQ(steps_seen, kEpochs * 8);
    for (int k = 0; k < M; ++k) {
      SCOPED_TRACE("model " + std::to_string(k));
      EXPECT_EQ(stacked[k]->epoch(), kEpochs);
      EXPECT_EQ(stacked[k]->step(), lone[k]->step());
      // The logged norms of the last step, read from the stack, as the lone trainer's.
      const double grad_norm = stacked[k]->last_gradient_norm(), update_norm = stacked[k]->last_update_norm();
      EXPECT_GT(update_norm, 0);
      if (target == Target::cpu) {
        EXPECT_EQ(grad_norm, lone[k]->last_gradient_norm());
        EXPECT_EQ(update_norm, lone[k]->last_update_norm());
      } else {
        EXPECT_NEAR(grad_norm, lone[k]->last_gradient_norm(), 1e-3 * grad_norm);
        EXPECT_NEAR(update_norm, lone[k]->last_update_norm(), 1e-3 * update_norm);
      }
      const Checkpoint a = lone[k]->checkpoint(), b = stacked[k]->checkpoint();
      ASSERT_EQ(a.params.size(), b.params.size());
      ASSERT_EQ(a.optimizer_state.size(), b.optimizer_state.size());
      if (target == Target::cpu) {
        EXPECT_EQ(a.params, b.params);
        for (size_t s = 0; s < a.optimizer_state.size(); ++s) EXPECT_EQ(a.optimizer_state[s], b.optimizer_state[s]);
      } else {
        EXPECT_TRUE(test::all_near(b.params, std::vector<double>(a.params.begin(), a.params.end()), 2e-4, 2e-3));
      }
    }
    // The models did train apart: different seeds and rates, different parameters.
    EXPECT_NE(stacked[0]->checkpoint().params, stacked[1]->checkpoint().params);
  }
}

// A model whose learning rate blows up is reported at the check that finds it, with the step
// and the term; its trainer keeps the state of the epoch's start; the others train on as alone.
TEST_P(Stack, ADivergedModelIsReportedAndTheOthersTrainOn) {
  const Target target = GetParam();
  const Dataset data = test::random_images(77, 3, 4, 9);
  const Variant v{"gaussian",      {9},           Activation::relu, DecoderKind::gaussian, OptimizerKind::adam,
                  Objective::elbo, Binarize::none};
  const DeviceContext ctx(target, false);
  const DeviceDataset train(ctx, data);
  TrainConfig wild = model_config(v, 1);
  wild.hyper.lr = 1e5f;
  Trainer a(ctx, model_config(v, 0)), b(ctx, wild), c(ctx, model_config(v, 2)), lone(ctx, model_config(v, 2));
  const std::vector<float> b_start = b.model().params().download();
  ModelStack stack(ctx, {&a, &b, &c});
  stack.train_epoch(train);
  lone.train_epoch(train);
  ASSERT_NE(stack.diverged(1), nullptr);
  EXPECT_NE(std::string(stack.diverged(1)->what()).find("not finite"), std::string::npos);
  EXPECT_GT(stack.diverged(1)->step(), 0);
  EXPECT_EQ(stack.diverged(0), nullptr);
  EXPECT_EQ(stack.diverged(2), nullptr);
  EXPECT_EQ(b.model().params().download(), b_start);
  EXPECT_EQ(b.epoch(), 0);
  EXPECT_EQ(b.step(), 0);
  EXPECT_EQ(b.batch_in_epoch(), 0);
  EXPECT_EQ(c.epoch(), 1);
  if (target == Target::cpu) {
    EXPECT_EQ(c.checkpoint().params, lone.checkpoint().params);
  }
  // The stack trains on: the others a second epoch, the diverged model left where it stopped.
  const int64_t b_step = b.step();
  stack.train_epoch(train);
  lone.train_epoch(train);
  EXPECT_EQ(c.epoch(), 2);
  EXPECT_EQ(b.epoch(), 0);
  EXPECT_EQ(b.step(), b_step);
  EXPECT_EQ(b.model().params().download(), b_start);
  if (target == Target::cpu) {
    EXPECT_EQ(c.checkpoint().params, lone.checkpoint().params);
  }
}

TEST(StackShape, RefusesModelsOfAnotherShapeOrPosition) {
  const Variant v{"x",           {9}, Activation::relu, DecoderKind::bernoulli, OptimizerKind::adam, Objective::elbo,
                  Binarize::none};
  const DeviceContext ctx(Target::cpu, false);
  TrainConfig other = model_config(v, 1);
  other.model.latent = 6;
  EXPECT_EQ(ModelStack::shape_difference(model_config(v, 0), other), "--latent");
  other = model_config(v, 1);
  other.batch_size = 14;
  EXPECT_EQ(ModelStack::shape_difference(model_config(v, 0), other), "--batch-size");
  EXPECT_EQ(ModelStack::shape_difference(model_config(v, 0), model_config(v, 2)), "");
  Trainer a(ctx, model_config(v, 0)), b(ctx, other);
  EXPECT_THROW(ModelStack(ctx, {&a, &b}), Error);
  // A model an epoch ahead of the other: refused when the stack would train them.
  const DeviceDataset train(ctx, test::random_images(40, 3, 4, 3));
  Trainer ahead(ctx, model_config(v, 1)), behind(ctx, model_config(v, 2));
  ahead.train_epoch(train);
  ModelStack stack(ctx, {&ahead, &behind});
  EXPECT_THROW(stack.train_epoch(train), Error);
}

INSTANTIATE_TEST_SUITE_P(Targets, Stack, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

}  // namespace
}  // namespace vae
