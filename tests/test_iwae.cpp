// The IWAE objective (Burda et al., 2015) and its doubly reparameterized gradient (Tucker et al.,
// 2018): the float64 reference checked by finite differences and by its estimator's statistics,
// then the composed step against it — the bound per row, the weights, every gradient — and the
// command line's refusals.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "device_context.h"
#include "reference_vae.h"
#include "support.h"
#include "train_config.h"
#include "vae.h"

namespace vae {
namespace {

using test::small_config;
using test::to_double;

const KlTerm kStandard{KlEstimator::monte_carlo, 1.f, 0, KlGradient::standard};
const KlTerm kDreg{KlEstimator::monte_carlo, 1.f, 0, KlGradient::dreg};

struct Case {
  DecoderKind decoder;
  Activation activation;
  int k;
};

// The reference's standard IWAE gradient is the derivative of its bound: central differences of
// −(1/B) Σ_r IWAE_r at fixed ε, K = 1, 3 and 7, both decoders, relu and tanh. Its bound is a
// log mean_k w_k with w = p(x|z) N(z; 0, I) / N(z; μ, σ²), each density written out here in full
// (the 2π terms included) and the mean taken without a shift.
TEST(IwaeReference, BoundAndGradientAreTheObjectivesOwn) {
  for (const Case& cs :
       {Case{DecoderKind::bernoulli, Activation::relu, 1}, Case{DecoderKind::gaussian, Activation::tanh, 3},
        Case{DecoderKind::bernoulli, Activation::tanh, 7}, Case{DecoderKind::gaussian, Activation::relu, 7}}) {
    SCOPED_TRACE(std::string(decoder_name(cs.decoder)) + ", " + activation_name(cs.activation) + ", K " +
                 std::to_string(cs.k));
    const ModelConfig c = small_config(cs.decoder, cs.activation, {5}, 3, 7);
    std::vector<double> p = test::reference_parameters(test::reference_layout(c), 21);
    const int B = 3, K = cs.k, J = c.latent;
    const auto x = to_double(test::random_uniform(static_cast<size_t>(B) * c.input_dim, 9, 0, 1));
    const auto eps = test::reference_noise(4, RandomStream::latent_noise, 2, B, K, J);
    const auto res = test::reference_vae(c, p, x, B, K, eps, true, kStandard, 0, true);
    ASSERT_TRUE(test::not_all_zero(res.grad));
    // The bound from the densities in full: log w = log p(x|z) + log N(z; 0, I) − log N(z; μ, σ²).
    for (int r = 0; r < B; ++r) {
      double mean_w = 0, weights = 0;
      for (int k = 0; k < K; ++k) {
        double lw = res.log_prob[k * B + r];
        for (int j = 0; j < J; ++j) {
          const double z = res.z[(static_cast<size_t>(k) * B + r) * J + j];
          const double mu = res.heads[static_cast<size_t>(r) * 2 * J + j];
          const double var = std::exp(res.heads[static_cast<size_t>(r) * 2 * J + J + j]);
          lw += -0.5 * std::log(2 * M_PI) - 0.5 * z * z;
          lw -= -0.5 * std::log(2 * M_PI * var) - 0.5 * (z - mu) * (z - mu) / var;
        }
        mean_w += std::exp(lw) / K;
        weights += res.weights[k * B + r];
      }
      EXPECT_NEAR(res.iwae[r], std::log(mean_w), 1e-9 * std::fabs(res.iwae[r])) << "row " << r;
      EXPECT_NEAR(weights, 1.0, 1e-12);
    }
    const double h = 1e-6;
    for (size_t i = 0; i < p.size(); ++i) {
      const double keep = p[i];
      p[i] = keep + h;
      const double up = test::reference_vae(c, p, x, B, K, eps, false, kStandard, 0, true).loss;
      p[i] = keep - h;
      const double down = test::reference_vae(c, p, x, B, K, eps, false, kStandard, 0, true).loss;
      p[i] = keep;
      const double fd = (up - down) / (2 * h);
      ASSERT_NEAR(res.grad[i], fd, 1e-6 + 1e-5 * std::fabs(fd)) << "parameter " << i;
    }
  }
}

// Tucker et al.'s estimator changes the encoder's gradient only, leaves its expectation (3000 ε
// draws at K = 7: every encoder parameter's mean difference within 5 standard errors of zero) and
// lowers its variance (summed over the encoder's parameters). The decoder's gradient is the
// standard one, bit for bit.
TEST(IwaeReference, DregKeepsTheMeanAndLowersTheVariance) {
  const ModelConfig c = small_config(DecoderKind::bernoulli, Activation::tanh, {4}, 2, 6);
  const test::ReferenceLayout rl = test::reference_layout(c);
  const auto p = test::reference_parameters(rl, 33);
  const int B = 1, K = 7, draws = 3000;
  const auto x = to_double(test::random_uniform(static_cast<size_t>(B) * c.input_dim, 12, 0, 1));
  std::vector<size_t> encoder;
  for (const auto& t : rl.tensors)
    for (size_t i = 0; i < t.count(); ++i)
      if (t.name.rfind("encoder.", 0) == 0) encoder.push_back(t.offset + i);
  std::vector<double> diff(encoder.size()), diff2(encoder.size()), s1(encoder.size()), s2(encoder.size()),
      d1(encoder.size()), d2(encoder.size());
  for (int n = 0; n < draws; ++n) {
    const auto eps = test::reference_noise(8, RandomStream::latent_noise, static_cast<uint64_t>(n), B, K, c.latent);
    const auto standard = test::reference_vae(c, p, x, B, K, eps, true, kStandard, 0, true);
    const auto dreg = test::reference_vae(c, p, x, B, K, eps, true, kDreg, 0, true);
    if (n < 3) {
      for (const auto& t : rl.tensors) {
        if (t.name.rfind("decoder.", 0) != 0) continue;
        for (size_t i = t.offset; i < t.offset + t.count(); ++i) ASSERT_EQ(standard.grad[i], dreg.grad[i]) << t.name;
      }
    }
    for (size_t e = 0; e < encoder.size(); ++e) {
      const double a = standard.grad[encoder[e]], b = dreg.grad[encoder[e]];
      diff[e] += a - b;
      diff2[e] += (a - b) * (a - b);
      s1[e] += a;
      s2[e] += a * a;
      d1[e] += b;
      d2[e] += b * b;
    }
  }
  double var_standard = 0, var_dreg = 0, moved = 0;
  for (size_t e = 0; e < encoder.size(); ++e) {
    const double mean = diff[e] / draws, var = diff2[e] / draws - mean * mean;
    EXPECT_LE(std::fabs(mean), 5 * std::sqrt(var / draws) + 1e-12) << "encoder parameter " << e;
    moved = std::max(moved, var);
    var_standard += s2[e] / draws - (s1[e] / draws) * (s1[e] / draws);
    var_dreg += d2[e] / draws - (d1[e] / draws) * (d1[e] / draws);
  }
  EXPECT_GT(moved, 0) << "DReG computed the standard encoder gradient";
  EXPECT_LT(var_dreg, var_standard);
  std::printf("encoder gradient variance at K = %d: standard %.4g, DReG %.4g\n", K, var_standard, var_dreg);
}

// Tolerances of the fp32 composed step against the float64 reference. The bound sums 37 pixels'
// log p and the latent terms (|log w| ~ 30, float rounding ~1e-5 of it); each weight is an exp of
// log w differences, so it carries that error relative to itself; and a gradient is Σ_k w̃_k g_k,
// whose terms cancel where the samples disagree: its error is the weights' times the per-sample
// gradients, which may exceed the sum — the absolute tolerance (relative to the tensor's largest
// gradient) is 25x the ELBO step's (step_checks.cpp) for that.
constexpr double kBoundAbs = 3e-5, kBoundRel = 3e-6;
constexpr double kWeightAbs = 2e-6, kWeightRel = 2e-5;
constexpr double kGradAbs = 5e-5, kGradRel = 1e-4;

using Setting = std::tuple<Target, DecoderKind, Activation, KlGradient>;
class IwaeStep : public ::testing::TestWithParam<Setting> {};

// importance_weights_kernel (through its launcher, in Vae::forward) and the composed step with the
// IWAE objective on each launch shape: the bound per row, the normalised weights and every
// parameter gradient against the reference, K = 1, 3, 7, batches 1, 7 and 129, none to two
// hidden layers.
TEST_P(IwaeStep, BoundWeightsAndEveryGradientMatchReference) {
  const auto [target, decoder, activation, gradient] = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  DeviceContext ctx(target, false);
  const KlTerm kl = gradient == KlGradient::dreg ? kDreg : kStandard;
  for (const auto& shape : test::shapes_for(target)) {
    test::ScopedLaunchPolicy policy(target, shape);
    SCOPED_TRACE(shape.name);
    for (auto [batch, hidden, latent, k] : {std::tuple{1, std::vector<int>{5}, 1, 3},
                                            {7, std::vector<int>{33}, 3, 7},
                                            {129, std::vector<int>{33, 5}, 20, 3},
                                            {7, std::vector<int>{}, 3, 1}}) {
      const std::string where = "batch " + std::to_string(batch) + ", K " + std::to_string(k);
      const ModelConfig c = small_config(decoder, activation, hidden, latent, 37);
      Vae vae(ctx, c, batch + 3, k);
      vae.set_iwae(true);
      const test::ReferenceLayout rl = test::reference_layout(c);
      const auto params = test::reference_parameters(rl, 300 + batch);
      vae.params().upload(test::from_reference(vae.layout(), rl, params, NAN));
      const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 17 + batch, 0, 1);
      VAE_CALL(ctx.target(), copy_to_device, vae.input(), x.data(), x.size() * sizeof(float), ctx.stream());
      const DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{9, 0}});
      const NoiseKey key{6, RandomStream::latent_noise, at.data(), KlEstimator::analytic};
      vae.backward(vae.forward(batch, key, true), kl, at.data());
      ctx.synchronize();
      const auto eps = test::reference_noise(key.seed, key.stream, 9, batch, k, latent);
      const auto ref = test::reference_vae(c, params, to_double(x), batch, k, eps, true, kl, 9, true);
      auto bound = vae.objective_rows().download();
      bound.resize(batch);
      auto weights = vae.weights().download();
      weights.resize(static_cast<size_t>(batch) * k);
      EXPECT_TRUE(test::all_near(bound, ref.iwae, kBoundAbs, kBoundRel)) << "bound, " << where;
      EXPECT_TRUE(test::all_near(weights, ref.weights, kWeightAbs, kWeightRel)) << "weights, " << where;
      ASSERT_TRUE(test::not_all_zero(ref.grad));
      test::expect_tensors_near(vae.layout(), vae.grads().download(), rl, ref.grad, kGradAbs, kGradRel, where);
    }
  }
}

std::string setting_name(const ::testing::TestParamInfo<Setting>& info) {
  const auto [t, d, a, g] = info.param;
  return std::string(target_name(t)) + "_" + decoder_name(d) + "_" + activation_name(a) + "_" +
         (g == KlGradient::dreg ? "dreg" : "standard");
}

INSTANTIATE_TEST_SUITE_P(Settings, IwaeStep,
                         ::testing::Combine(::testing::ValuesIn(test::all_targets()),
                                            ::testing::Values(DecoderKind::bernoulli, DecoderKind::gaussian),
                                            ::testing::Values(Activation::relu, Activation::tanh),
                                            ::testing::Values(KlGradient::standard, KlGradient::dreg)),
                         setting_name);

// At K = 1 the bound is the ELBO with the Monte-Carlo KL at one sample, and the doubly
// reparameterized gradient is "sticking the landing" (--objective elbo --estimator monte-carlo
// --gradient dreg): the composed step computes the same gradients both ways.
TEST(IwaeStepAtOneSample, IsTheMonteCarloElboAndDregIsStl) {
  DeviceContext ctx(Target::cpu, false);
  const ModelConfig c = small_config(DecoderKind::gaussian, Activation::tanh, {33}, 3, 37);
  const int batch = 7;
  const auto params = test::reference_parameters(test::reference_layout(c), 77);
  const auto x = test::random_uniform(static_cast<size_t>(batch) * c.input_dim, 78, 0, 1);
  const DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{4, 0}});
  for (const KlTerm& kl : {kStandard, kDreg}) {
    std::vector<float> grads[2];
    for (bool iwae : {false, true}) {
      Vae vae(ctx, c, batch, 1);
      vae.set_iwae(iwae);
      vae.params().upload(test::from_reference(vae.layout(), test::reference_layout(c), params));
      VAE_CALL(ctx.target(), copy_to_device, vae.input(), x.data(), x.size() * sizeof(float), ctx.stream());
      vae.backward(vae.forward(batch, {2, RandomStream::latent_noise, at.data(), KlEstimator::monte_carlo}, true), kl,
                   at.data());
      grads[iwae] = vae.grads().download();
    }
    ASSERT_TRUE(test::not_all_zero(to_double(grads[0])));
    EXPECT_TRUE(test::all_near(grads[1], to_double(grads[0]), 1e-6, 1e-5)) << kl_gradient_name(kl.gradient);
  }
}

// The flags: K without the bound, the bound with a KL weight, a warm-up or the ELBO's samples,
// K = 0: one line naming the flag, exit 2. A run with --step fused and the bound runs composed
// and says so in its metrics, with the bound beside the ELBO.
TEST(IwaeFlags, BadCombinationsAreRefusedAndTheBoundIsReported) {
  struct Case {
    std::string flags, named;
  };
  for (const Case& c : {Case{"--k 5", "--k"}, Case{"--objective iwae --k 0", "--k"},
                        Case{"--objective iwae --kl-weight 0.5", "--kl-weight"},
                        Case{"--objective iwae --kl-warmup 100", "--kl-warmup"},
                        Case{"--objective iwae --samples 3", "--samples"}, Case{"--objective iwea", "--objective"}}) {
    const test::Result r = test::run_cli("train --device cpu --epochs 1 --train-limit 100 --test-limit 50 " + c.flags);
    EXPECT_EQ(r.code, 2) << c.flags << "\n" << r.err;
    EXPECT_NE(r.err.find(c.named), std::string::npos) << c.flags << "\n" << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  }
  const std::string out =
      (std::filesystem::temp_directory_path() / ("vae_iwae_" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(out);
  const test::Result r = test::run_cli(
      "train --device cpu --quiet --epochs 1 --train-limit 300 --test-limit 100 "
      "--objective iwae --k 4 --gradient dreg --step fused --out " +
      out);
  ASSERT_EQ(r.code, 0) << r.err;
  std::ifstream f(out + "/metrics.jsonl");
  std::string line;
  std::getline(f, line);
  for (const char* want : {"\"objective\":\"iwae\"", "\"k\":4", "\"step_kernel\":\"composed\"", "\"gradient\":\"dreg\"",
                           "\"train_objective\":", "\"test_objective\":"}) {
    EXPECT_NE(line.find(want), std::string::npos) << want << " in " << line;
  }
  std::filesystem::remove_all(out);
}

}  // namespace
}  // namespace vae
