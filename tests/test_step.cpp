// The float64 reference VAE checked by finite differences, then one whole training step of the
// fast code (ELBO and every parameter gradient) against the reference.
#include <cmath>

#include "device_context.h"
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

TEST(ReferenceVae, GradientMatchesFiniteDifferences) {
  for (DecoderKind dec : {DecoderKind::bernoulli, DecoderKind::gaussian})
    for (Activation act : {Activation::relu, Activation::tanh})
      for (int samples : {1, 3}) {
        const ModelConfig c = small_config(dec, act, {5, 4}, 3, 7);
        const ParamLayout layout = make_layout(c);
        std::vector<double> p = to_double(init_parameters(c, layout, 11));
        const int B = 3;
        const auto x = to_double(test::random_uniform(static_cast<size_t>(B) * c.input_dim, 5, 0, 1));
        const auto eps = test::reference_noise(3, RandomStream::latent_noise, 1, B, samples, c.latent);
        const auto res = test::reference_vae(c, p, x, B, samples, eps);
        ASSERT_TRUE(test::not_all_zero(res.grad));
        const double h = 1e-6;
        for (size_t i = 0; i < p.size(); ++i) {
          const double keep = p[i];
          p[i] = keep + h;
          const double up = test::reference_vae(c, p, x, B, samples, eps, false).loss;
          p[i] = keep - h;
          const double down = test::reference_vae(c, p, x, B, samples, eps, false).loss;
          p[i] = keep;
          const double fd = (up - down) / (2 * h);
          ASSERT_NEAR(res.grad[i], fd, 1e-6 + 1e-5 * std::fabs(fd))
              << "parameter " << i << ", decoder " << decoder_name(dec) << ", " << activation_name(act)
              << ", L=" << samples;
        }
      }
}

struct StepCase {
  DecoderKind decoder;
  Activation activation;
  int samples;
  bool fused_encoder = false;
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
      vae.set_fused_encoder(sc.fused_encoder);
      const auto params = init_parameters(c, vae.layout(), 100 + batch);
      vae.params().upload(params);
      // Random pixels in [0, 1] and a small perturbation of the biases, away from zero.
      const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 7 + batch, 0, 1);
      ctx.ops().copy_to_device(vae.input(), x.data(), x.size() * sizeof(float), ctx.stream());
      const DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{17, 0}});
      const NoiseKey key{5, RandomStream::latent_noise, at.data()};
      vae.forward(batch, key, true);
      vae.backward(batch);
      ctx.synchronize();
      const auto eps = test::reference_noise(key.seed, key.stream, 17, batch, sc.samples, latent);
      const auto ref = test::reference_vae(c, to_double(params), to_double(x), batch, sc.samples, eps);
      ASSERT_TRUE(test::not_all_zero(ref.grad));

      auto lp = vae.log_prob().download();
      lp.resize(static_cast<size_t>(batch) * sc.samples);
      auto kl = vae.kl().download();
      kl.resize(batch);
      EXPECT_TRUE(test::all_near(lp, ref.log_prob, 2e-3, 2e-5)) << "log p, batch " << batch;
      EXPECT_TRUE(test::all_near(kl, ref.kl, 1e-4, 1e-4)) << "KL, batch " << batch;
      const auto grads = vae.grads().download();
      for (const auto& t : vae.layout().tensors) {
        std::vector<float> got(grads.begin() + t.offset, grads.begin() + t.offset + t.count());
        std::vector<double> want(ref.grad.begin() + t.offset, ref.grad.begin() + t.offset + t.count());
        EXPECT_TRUE(test::all_near(got, want, 2e-5, 2e-3)) << t.name << ", batch " << batch;
      }
    }
  }
}

const StepCase kCases[] = {
    {DecoderKind::bernoulli, Activation::relu, 1},       {DecoderKind::bernoulli, Activation::tanh, 3},
    {DecoderKind::gaussian, Activation::relu, 3},        {DecoderKind::gaussian, Activation::tanh, 1},
    {DecoderKind::bernoulli, Activation::relu, 3},       {DecoderKind::gaussian, Activation::tanh, 3},
    {DecoderKind::bernoulli, Activation::relu, 1, true}, {DecoderKind::gaussian, Activation::tanh, 3, true},
};

std::string step_case_name(const ::testing::TestParamInfo<std::tuple<Target, StepCase>>& info) {
  const Target t = std::get<0>(info.param);
  const StepCase& sc = std::get<1>(info.param);
  return std::string(target_name(t)) + "_" + decoder_name(sc.decoder) + "_" + activation_name(sc.activation) + "_L" +
         std::to_string(sc.samples) + (sc.fused_encoder ? "_fused" : "");
}

INSTANTIATE_TEST_SUITE_P(Cases, WholeStep,
                         ::testing::Combine(::testing::ValuesIn(test::all_targets()), ::testing::ValuesIn(kCases)),
                         step_case_name);

}  // namespace
}  // namespace vae
