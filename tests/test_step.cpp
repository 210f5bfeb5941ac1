// The float64 reference VAE checked by finite differences; then against it the composed step's
// forward and backward passes (log p, KL and every parameter gradient: WholeStep; the optimizer
// kernel has its own test, the epoch loop EpochLoop). The fused step's tests: test_fused_step.cpp.
#include <cmath>
#include <tuple>

#include "device_context.h"
#include "train_config.h"  // estimator_name
#include "reference_vae.h"
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
          std::vector<double> p = test::reference_parameters(test::reference_layout(c), 11);
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

// The code's layout holds the reference's tensors (names, shapes, inside the buffer, apart), and
// the tests' conversion catches one that does not.
TEST(ReferenceVae, CodeLayoutHoldsTheReferenceTensors) {
  for (DecoderKind dec : {DecoderKind::bernoulli, DecoderKind::gaussian})
    for (const auto& hidden : {std::vector<int>{}, std::vector<int>{5}, std::vector<int>{33, 5}}) {
      const ModelConfig c = small_config(dec, Activation::relu, hidden, 3, 37);
      const ParamLayout code = make_layout(c);
      const test::ReferenceLayout ref = test::reference_layout(c);
      const auto p = test::reference_parameters(ref, 4);
      const auto flat = test::from_reference(code, ref, p);
      EXPECT_EQ(test::to_reference(code, flat, ref), p);
      const size_t mu_weight = 2 * hidden.size(), logvar_weight = mu_weight + 2;
      ASSERT_EQ(code.tensors[mu_weight].name, "encoder.mu.weight");
      ParamLayout swapped = code;  // μ's rows where log σ²'s are
      std::swap(swapped.tensors[mu_weight].offset, swapped.tensors[logvar_weight].offset);
      EXPECT_NE(test::to_reference(swapped, flat, ref), p);
      ParamLayout transposed = code;
      std::swap(transposed.tensors[mu_weight].shape[0], transposed.tensors[mu_weight].shape[1]);
      EXPECT_THROW(test::to_reference(transposed, flat, ref), std::runtime_error);
      ParamLayout overlapping = code;
      overlapping.tensors[1].offset = overlapping.tensors[0].offset + 1;
      EXPECT_THROW(test::from_reference(overlapping, ref, p), std::runtime_error);
      ParamLayout renamed = code;
      renamed.tensors.back().name += "_";
      EXPECT_THROW(test::from_reference(renamed, ref, p), std::runtime_error);
    }
}

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
      const test::ReferenceLayout rl = test::reference_layout(c);
      const auto params = test::reference_parameters(rl, 100 + batch);
      // NaN between the tensors: the passes never read the padding.
      vae.params().upload(test::from_reference(vae.layout(), rl, params, NAN));
      const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 7 + batch, 0, 1);
      VAE_CALL(ctx.target(), copy_to_device, vae.input(), x.data(), x.size() * sizeof(float), ctx.stream());
      const DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{17, 0}});
      for (const KlTerm& kl : kKlTerms) {
        const NoiseKey key{5, RandomStream::latent_noise, at.data(), kl.estimator};
        vae.backward(vae.forward(batch, key, true), kl, at.data());
        ctx.synchronize();
        const auto eps = test::reference_noise(key.seed, key.stream, 17, batch, sc.samples, latent);
        const auto ref = test::reference_vae(c, params, to_double(x), batch, sc.samples, eps, true, kl, 17);
        expect_matches_reference(vae, rl, ref, batch, sc.samples,
                                 "batch " + std::to_string(batch) + ", " + kl_name(kl));
      }
    }
  }
}

const StepCase kCases[] = {
    {DecoderKind::bernoulli, Activation::relu, 1}, {DecoderKind::bernoulli, Activation::tanh, 3},
    {DecoderKind::gaussian, Activation::relu, 3},  {DecoderKind::gaussian, Activation::tanh, 1},
    {DecoderKind::bernoulli, Activation::relu, 3}, {DecoderKind::gaussian, Activation::tanh, 3},
};

INSTANTIATE_TEST_SUITE_P(Cases, WholeStep,
                         ::testing::Combine(::testing::ValuesIn(test::all_targets()), ::testing::ValuesIn(kCases)),
                         step_case_name);

}  // namespace
}  // namespace vae
