// The float64 reference VAE checked by finite differences, then one whole training step of the
// fast code (ELBO and every parameter gradient) against the reference.
#include <cmath>

#include "checkpoint.h"
#include "device_context.h"
#include "runtime/workers.h"
#include "reference_vae.h"
#include "support.h"
#include "vae.h"

namespace vae {
namespace {

using test::to_double;

ModelConfig small_config(DecoderKind dec, Activation act, std::vector<int> hidden, int latent, int dim) {
  ModelConfig c;
  c.input_dim = dim;
  c.image_height = 1;
  c.image_width = dim;
  c.hidden = std::move(hidden);
  c.latent = latent;
  c.activation = act;
  c.decoder = dec;
  return c;
}

// The KL terms the tests cover: estimator B and A at β = 1, and each with β = 0.6 warmed up over
// 40 steps (at step 17 of the tests: β_t = 0.255).
const KlTerm kKlTerms[] = {{KlEstimator::analytic, 1.f, 0},
                           {KlEstimator::monte_carlo, 1.f, 0},
                           {KlEstimator::analytic, 0.6f, 40},
                           {KlEstimator::monte_carlo, 0.6f, 40}};
std::string kl_name(const KlTerm& k) {
  return std::string(estimator_name(k.estimator)) + " beta " + std::to_string(k.weight) + " warmup " +
         std::to_string(k.warmup);
}

TEST(ReferenceVae, GradientMatchesFiniteDifferences) {
  for (DecoderKind dec : {DecoderKind::bernoulli, DecoderKind::gaussian})
    for (Activation act : {Activation::relu, Activation::tanh})
      for (int samples : {1, 3})
        for (const KlTerm& kl : kKlTerms) {
          const ModelConfig c = small_config(dec, act, {5, 4}, 3, 7);
          const ParamLayout layout = make_layout(c);
          std::vector<double> p = to_double(init_parameters(c, layout, 11));
          const int B = 3;
          const auto x = to_double(test::random_uniform(static_cast<size_t>(B) * c.input_dim, 5, 0, 1));
          const auto eps = test::reference_noise(3, RandomStream::latent_noise, 1, B, samples, c.latent);
          const auto res = test::reference_vae(c, p, x, B, samples, eps, true, kl, 17);
          ASSERT_TRUE(test::not_all_zero(res.grad));
          const double h = 1e-6;
          for (size_t i = 0; i < p.size(); ++i) {
            const double keep = p[i];
            p[i] = keep + h;
            const double up = test::reference_vae(c, p, x, B, samples, eps, false, kl, 17).loss;
            p[i] = keep - h;
            const double down = test::reference_vae(c, p, x, B, samples, eps, false, kl, 17).loss;
            p[i] = keep;
            const double fd = (up - down) / (2 * h);
            ASSERT_NEAR(res.grad[i], fd, 1e-6 + 1e-5 * std::fabs(fd))
                << "parameter " << i << ", decoder " << decoder_name(dec) << ", " << activation_name(act)
                << ", L=" << samples << ", " << kl_name(kl);
          }
        }
}

// The last pass's log p and KL and every parameter gradient against the reference's.
void expect_matches_reference(Vae& vae, const test::ReferenceResult& ref, int batch, int samples,
                              const std::string& where) {
  ASSERT_TRUE(test::not_all_zero(ref.grad));
  auto lp = vae.log_prob().download();
  lp.resize(static_cast<size_t>(batch) * samples);
  auto kl = vae.kl().download();
  kl.resize(batch);
  EXPECT_TRUE(test::all_near(lp, ref.log_prob, 2e-3, 2e-5)) << "log p, " << where;
  EXPECT_TRUE(test::all_near(kl, ref.kl, 1e-4, 1e-4)) << "KL, " << where;
  const auto grads = vae.grads().download();
  for (const auto& t : vae.layout().tensors) {
    std::vector<float> got(grads.begin() + t.offset, grads.begin() + t.offset + t.count());
    std::vector<double> want(ref.grad.begin() + t.offset, ref.grad.begin() + t.offset + t.count());
    EXPECT_TRUE(test::all_near(got, want, 2e-5, 2e-3)) << t.name << ", " << where;
  }
}

// One fused step of `batch` rows of float pixels `data`, keyed by seed, at the step state `at`.
void run_fused_step(const DeviceContext& ctx, Vae& vae, Optimizer& opt, int batch, const float* data, uint64_t seed,
                    StepState* at, double* totals) {
  FusedStepArgs a = vae.fused_step_args(batch);
  EXPECT_EQ(a.tf32, ctx.tf32());
  a.data = data;
  a.type = PixelType::f32;
  a.seed = seed;
  a.at = at;
  a.totals = totals;
  opt.set_fused_step_optimizer(a);
  ctx.ops().fused_step(a, ctx.stream());
  ctx.synchronize();
}

struct StepCase {
  DecoderKind decoder;
  Activation activation;
  int samples;
};

class WholeStep : public ::testing::TestWithParam<std::tuple<Target, StepCase>> {};

TEST_P(WholeStep, LossAndEveryGradientMatchReference) {
  const auto [target, sc] = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  DeviceContext ctx(target, false);
  for (const auto& shape : test::shapes_for(target)) {
    test::ScopedLaunchPolicy policy(target, shape);
    SCOPED_TRACE(shape.name);
    for (auto [batch, hidden, latent] : {std::tuple{1, std::vector<int>{5}, 1},
                                         {7, std::vector<int>{33}, 3},
                                         {129, std::vector<int>{33, 5}, 20},
                                         {7, std::vector<int>{}, 3}}) {
      const ModelConfig c = small_config(sc.decoder, sc.activation, hidden, latent, 37);
      Vae vae(ctx, c, batch + 3, sc.samples);  // capacity above the batch: offsets must not matter
      const auto params = init_parameters(c, vae.layout(), 100 + batch);
      vae.params().upload(params);
      // Random pixels in [0, 1] and a small perturbation of the biases, away from zero.
      const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 7 + batch, 0, 1);
      ctx.ops().copy_to_device(vae.input(), x.data(), x.size() * sizeof(float), ctx.stream());
      const DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{17, 0}});
      for (const KlTerm& kl : kKlTerms) {
        const NoiseKey key{5, RandomStream::latent_noise, at.data(), kl.estimator};
        vae.forward(batch, key, true);
        vae.backward(batch, kl, at.data());
        ctx.synchronize();
        const auto eps = test::reference_noise(key.seed, key.stream, 17, batch, sc.samples, latent);
        const auto ref = test::reference_vae(c, to_double(params), to_double(x), batch, sc.samples, eps, true, kl, 17);
        expect_matches_reference(vae, ref, batch, sc.samples, "batch " + std::to_string(batch) + ", " + kl_name(kl));
      }
    }
  }
}

// The fused step kernel (one cooperative launch: gather, forward, losses, backward, optimizer)
// for three steps against the float64 reference: log p and KL, every gradient, and the
// parameters after each SGD-with-momentum update (a well-conditioned update, so float and double
// agree closely), the ELBO totals and the step state. Batches 1, 7, 129 with L = 1 or 3, no, one
// and two hidden layers, both decoders, ReLU and tanh.
class FusedStep : public ::testing::TestWithParam<std::tuple<Target, StepCase>> {};

TEST_P(FusedStep, ThreeStepsMatchReference) {
  const auto [target, sc] = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  DeviceContext ctx(target, false);
  // On the CPU also a grid of 7 blocks (7 workers): phases with fewer tiles than blocks split K.
  const int workers_before = hx::workers();
  for (int workers : target == Target::cpu ? std::vector<int>{workers_before, 7} : std::vector<int>{0})
    for (auto [batch, hidden, latent] : {std::tuple{1, std::vector<int>{5}, 1},
                                         {7, std::vector<int>{}, 3},
                                         {129, std::vector<int>{33, 5}, 20},
                                         {7, std::vector<int>{33}, 3}}) {
      if (workers > 0) hx::set_workers(workers);
      SCOPED_TRACE("batch " + std::to_string(batch) + ", " + std::to_string(hidden.size()) + " hidden layers, grid " +
                   std::to_string(ctx.ops().fused_step_grid()));
      const ModelConfig c = small_config(sc.decoder, sc.activation, hidden, latent, 37);
      Vae vae(ctx, c, batch + 3, sc.samples);
      ASSERT_TRUE(vae.fused_step_fits());
      const auto params0 = init_parameters(c, vae.layout(), 200 + batch);
      vae.params().upload(params0);
      OptimizerHyper hyper;
      hyper.lr = 0.05f;
      hyper.momentum = 0.9f;
      hyper.weight_decay = 0.01f;
      Optimizer opt(ctx, vae.layout().total, OptimizerKind::sgd, hyper);
      const int steps = 3;
      const auto data = test::random_uniform(static_cast<size_t>(steps) * batch * c.input_dim, 9 + batch, 0, 1);
      const DeviceBuffer<float> data_dev(ctx, data);
      DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{17, 0}});
      DeviceBuffer<double> totals(ctx, std::vector<double>{0, 0, 0});

      std::vector<double> p = to_double(params0), velocity(p.size(), 0.0);
      double want_recon = 0, want_kl = 0;
      for (int step = 0; step < steps; ++step) {
        run_fused_step(ctx, vae, opt, batch, data_dev.data(), 5, at.data(), totals.data());

        const std::vector<double> x(data.begin() + static_cast<size_t>(step) * batch * c.input_dim,
                                    data.begin() + static_cast<size_t>(step + 1) * batch * c.input_dim);
        const auto eps = test::reference_noise(5, RandomStream::latent_noise, 17 + step, batch, sc.samples, latent);
        const auto ref = test::reference_vae(c, p, x, batch, sc.samples, eps);
        expect_matches_reference(vae, ref, batch, sc.samples, "step " + std::to_string(step));
        for (int r = 0; r < batch; ++r) {
          double m = 0;
          for (int l = 0; l < sc.samples; ++l) m += ref.log_prob[static_cast<size_t>(l) * batch + r];
          want_recon += m / sc.samples;
          want_kl += ref.kl[r];
        }
        // torch.optim.SGD with momentum and weight decay, in float64, on the tensors (not the padding).
        for (const auto& t : vae.layout().tensors) {
          for (size_t i = t.offset; i < t.offset + t.count(); ++i) {
            const double g = ref.grad[i] + hyper.weight_decay * p[i];
            velocity[i] = hyper.momentum * velocity[i] + g;
            p[i] -= hyper.lr * velocity[i];
          }
        }
        const auto got_p = vae.params().download();
        for (const auto& t : vae.layout().tensors) {
          std::vector<float> got(got_p.begin() + t.offset, got_p.begin() + t.offset + t.count());
          std::vector<double> want(p.begin() + t.offset, p.begin() + t.offset + t.count());
          EXPECT_TRUE(test::all_near(got, want, 2e-5, 1e-4)) << t.name << " after step " << step;
        }
      }
      const auto st = at.download()[0];
      EXPECT_EQ(st.step, 20u);
      EXPECT_EQ(st.offset, 3 * batch);
      const auto tot = totals.download();
      EXPECT_NEAR(tot[0], want_recon, 1e-4 * std::fabs(want_recon) + 1e-2);
      EXPECT_NEAR(tot[1], want_kl, 1e-4 * want_kl + 1e-3);
      EXPECT_EQ(tot[2], 3.0 * batch);
    }
  if (target == Target::cpu) hx::set_workers(workers_before);
}

// With --tf32 the fused step's GEMM tiles run on TF32 tensor cores (emulated under host
// execution: TF32-rounded inputs, float sums): one step against the float64 reference within
// TF32's precision, and visibly not the fp32 step.
TEST_P(FusedStep, Tf32StepMatchesReferenceWithinTf32Precision) {
  const auto [target, sc] = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  const int batch = 33, latent = 3;
  const ModelConfig c = small_config(sc.decoder, sc.activation, {40}, latent, 37);
  const auto params = init_parameters(c, make_layout(c), 300);
  const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 11, 0, 1);
  std::vector<float> grads[2];
  for (bool tf32 : {false, true}) {
    DeviceContext ctx(target, tf32);
    Vae vae(ctx, c, batch, sc.samples);
    vae.params().upload(params);
    Optimizer opt(ctx, vae.layout().total, OptimizerKind::sgd, OptimizerHyper{});
    const DeviceBuffer<float> data(ctx, x);
    DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{4, 0}});
    DeviceBuffer<double> totals(ctx, 3);
    run_fused_step(ctx, vae, opt, batch, data.data(), 8, at.data(), totals.data());
    grads[tf32] = vae.grads().download();
  }
  const auto eps = test::reference_noise(8, RandomStream::latent_noise, 4, batch, sc.samples, latent);
  const auto ref = test::reference_vae(c, to_double(params), to_double(x), batch, sc.samples, eps);
  double differs = 0;
  for (const auto& t : make_layout(c).tensors) {
    std::vector<float> got(grads[1].begin() + t.offset, grads[1].begin() + t.offset + t.count());
    std::vector<double> want(ref.grad.begin() + t.offset, ref.grad.begin() + t.offset + t.count());
    double scale = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    EXPECT_TRUE(test::all_near(got, want, 1e-2 * scale + 1e-6, 2e-2)) << t.name << " (TF32)";
    for (size_t i = t.offset; i < t.offset + t.count(); ++i) {
      differs = std::max(differs, static_cast<double>(std::fabs(grads[1][i] - grads[0][i])));
    }
  }
  EXPECT_GT(differs, 1e-7) << "the TF32 step computed exactly what the fp32 step did";
}

const StepCase kFusedCases[] = {
    {DecoderKind::bernoulli, Activation::relu, 1},
    {DecoderKind::bernoulli, Activation::tanh, 3},
    {DecoderKind::gaussian, Activation::relu, 3},
    {DecoderKind::gaussian, Activation::tanh, 1},
};

const StepCase kCases[] = {
    {DecoderKind::bernoulli, Activation::relu, 1}, {DecoderKind::bernoulli, Activation::tanh, 3},
    {DecoderKind::gaussian, Activation::relu, 3},  {DecoderKind::gaussian, Activation::tanh, 1},
    {DecoderKind::bernoulli, Activation::relu, 3}, {DecoderKind::gaussian, Activation::tanh, 3},
};

std::string step_case_name(const ::testing::TestParamInfo<std::tuple<Target, StepCase>>& info) {
  const Target t = std::get<0>(info.param);
  const StepCase& sc = std::get<1>(info.param);
  return std::string(target_name(t)) + "_" + decoder_name(sc.decoder) + "_" + activation_name(sc.activation) + "_L" +
         std::to_string(sc.samples);
}

INSTANTIATE_TEST_SUITE_P(Cases, FusedStep,
                         ::testing::Combine(::testing::ValuesIn(test::all_targets()), ::testing::ValuesIn(kFusedCases)),
                         step_case_name);

INSTANTIATE_TEST_SUITE_P(Cases, WholeStep,
                         ::testing::Combine(::testing::ValuesIn(test::all_targets()), ::testing::ValuesIn(kCases)),
                         step_case_name);

}  // namespace
}  // namespace vae
