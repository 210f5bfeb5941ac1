// Evaluation: the importance-weighted log-likelihood (its kernel against float64, K = 1 against
// the single-sample ELBO, K large against quadrature of a one-dimensional latent space), encode,
// decode and the manifold against a float64 forward pass of the weights, the Gaussian decoder's
// floor on data with constant pixels, and the presets.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "checkpoint.h"
#include "support.h"
#include "manifold.h"
#include "reference_vae.h"
#include "trainer.h"

namespace vae {
namespace {

namespace fs = std::filesystem;
using test::all_near;
using test::random_uniform;
using test::to_double;

// ---- float64 forward passes of named weights ------------------------------------------------

struct Weights {
  const ModelConfig& c;
  const ParamLayout layout;
  const std::vector<float>& p;
  Weights(const ModelConfig& config, const std::vector<float>& params)
      : c(config), layout(make_layout(config)), p(params) {}
  // y = act(W x + b) of tensors `name`.weight [out, in] and `name`.bias.
  std::vector<double> dense(const std::string& name, const std::vector<double>& x, bool activate) const {
    const NamedTensor* w = nullptr;
    const NamedTensor* b = nullptr;
    for (const auto& t : layout.tensors) {
      if (t.name == name + ".weight") w = &t;
      if (t.name == name + ".bias") b = &t;
    }
    EXPECT_TRUE(w && b) << name;
    const int out = static_cast<int>(w->shape[0]), in = static_cast<int>(w->shape[1]);
    EXPECT_EQ(static_cast<size_t>(in), x.size()) << name;
    std::vector<double> y(out);
    for (int o = 0; o < out; ++o) {
      double s = p[b->offset + o];
      for (int i = 0; i < in; ++i) s += double(p[w->offset + static_cast<size_t>(o) * in + i]) * x[i];
      y[o] = !activate ? s : c.activation == Activation::relu ? std::max(s, 0.0) : std::tanh(s);
    }
    return y;
  }
  std::vector<double> hidden(const std::string& side, std::vector<double> h) const {
    for (size_t i = 0; i < c.hidden.size(); ++i) h = dense(side + ".layers." + std::to_string(i), h, true);
    return h;
  }
  // μ and log σ² of q(z|x).
  std::pair<std::vector<double>, std::vector<double>> encode(const std::vector<double>& x) const {
    const auto h = hidden("encoder", x);
    return {dense("encoder.mu", h, false), dense("encoder.logvar", h, false)};
  }
  // Decoder output: logits (Bernoulli) or mean logits and raw log variances (Gaussian).
  std::pair<std::vector<double>, std::vector<double>> decode(const std::vector<double>& z) const {
    const auto h = hidden("decoder", z);
    return {dense("decoder.out", h, false),
            c.decoder == DecoderKind::gaussian ? dense("decoder.out_logvar", h, false) : std::vector<double>{}};
  }
  double log_px(const std::vector<double>& x, const std::vector<double>& z) const {
    const auto [y, v] = decode(z);
    double s = 0;
    for (size_t d = 0; d < x.size(); ++d) {
      if (c.decoder == DecoderKind::bernoulli) {
        s += x[d] * y[d] - (std::max(y[d], 0.0) + std::log1p(std::exp(-std::fabs(y[d]))));
      } else {
        const double floor = -2 * std::log(255.0) - std::log(12.0), u = v[d] - floor;
        const double lv = floor + (u > 0 ? u + std::log1p(std::exp(-u)) : std::log1p(std::exp(u)));
        const double m = 1 / (1 + std::exp(-y[d])), diff = x[d] - m;
        s += -0.5 * std::log(2 * M_PI) - 0.5 * lv - 0.5 * diff * diff * std::exp(-lv);
      }
    }
    return s;
  }
};

ModelConfig tiny_model(DecoderKind decoder, int latent) {
  ModelConfig c;
  c.input_dim = 12;
  c.image_height = 3;
  c.image_width = 4;
  c.hidden = {7};
  c.latent = latent;
  c.activation = Activation::tanh;
  c.decoder = decoder;
  return c;
}

Dataset float_rows(const std::vector<float>& values, int dim, int height) {
  Dataset d;
  d.source = "test rows";
  d.type = PixelType::f32;
  d.f32 = values;
  d.count = static_cast<int64_t>(values.size() / dim);
  d.height = height;
  d.width = dim / height;
  return d;
}

// ---- the kernel ------------------------------------------------------------------------------

class Importance : public ::testing::TestWithParam<Target> {};

// importance_accumulate_kernel, through its launcher, over several chunks against float64:
// log Σ_k exp(log w_k) per row. Two kinds of weights: spread over hundreds of nats (the stable
// form matters; the sum is the largest term), and within a few nats of each other (every term
// counts: a kernel that kept the largest or dropped some would be off by up to nats), the latter
// to 1e-4.
TEST_P(Importance, AccumulateMatchesFloat64LogSumExp) {
  const Target target = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  DeviceContext ctx(target, false);
  for (const auto& shape : test::shapes_for(target)) {
    test::ScopedLaunchPolicy policy(target, shape);
    SCOPED_TRACE(shape.name);
    for (const bool close : {false, true})
      for (auto [batch, latent, chunk, chunks] :
           {std::tuple{1, 1, 1, 1}, {7, 3, 5, 3}, {129, 20, 33, 2}, {3, 2, 64, 4}}) {
        SCOPED_TRACE(close ? "weights within a few nats" : "weights spread over hundreds of nats");
        DeviceBuffer<float> lse_max(ctx, batch);
        DeviceBuffer<double> lse_sum(ctx, batch);
        std::vector<std::vector<double>> logw(batch);
        const auto heads0 = random_uniform(static_cast<size_t>(batch) * 2 * latent, batch + latent, -1, 1);
        DeviceBuffer<float> heads(ctx, heads0);
        for (int c = 0; c < chunks; ++c) {
          auto z0 = random_uniform(static_cast<size_t>(chunk) * batch * latent, 10 * c + batch, -3, 3);
          if (close) {  // z = μ + σ ε with |ε| <= 0.3: log q and log p(z) vary little over the draws
            for (size_t i = 0; i < z0.size(); ++i) {
              const size_t r = (i / latent) % batch, j = i % latent;
              z0[i] = heads0[r * 2 * latent + j] + std::exp(0.5f * heads0[r * 2 * latent + latent + j]) * 0.1f * z0[i];
            }
          }
          const auto lp0 = close ? random_uniform(static_cast<size_t>(chunk) * batch, 20 * c + latent, -102, -100)
                                 : random_uniform(static_cast<size_t>(chunk) * batch, 20 * c + latent, -900, -100);
          DeviceBuffer<float> z(ctx, z0), lp(ctx, lp0);
          VAE_CALL(ctx.target(), importance_accumulate, heads.data(), z.data(), lp.data(), batch, latent, chunk,
                   lse_max.data(), lse_sum.data(), c == 0, ctx.stream());
          for (int k = 0; k < chunk; ++k)
            for (int r = 0; r < batch; ++r) {
              double w = lp0[static_cast<size_t>(k) * batch + r];
              for (int j = 0; j < latent; ++j) {
                const double mu = heads0[static_cast<size_t>(r) * 2 * latent + j],
                             lv = heads0[static_cast<size_t>(r) * 2 * latent + latent + j],
                             zz = z0[(static_cast<size_t>(k) * batch + r) * latent + j],
                             e = (zz - mu) / std::exp(0.5 * lv);
                // log N(z; 0, 1) − log N(z; μ, σ²)
                w += -0.5 * zz * zz + 0.5 * e * e + 0.5 * lv;
              }
              logw[r].push_back(w);
            }
        }
        const auto m = lse_max.download();
        const auto s = lse_sum.download();
        for (int r = 0; r < batch; ++r) {
          double top = -INFINITY;
          for (double w : logw[r]) top = std::max(top, w);
          double sum = 0;
          for (double w : logw[r]) sum += std::exp(w - top);
          if (close && logw[r].size() >= 8) {
            ASSERT_GT(std::log(sum), 1.0) << "the terms below the largest must weigh in";
          }
          EXPECT_NEAR(m[r] + std::log(s[r]), top + std::log(sum), close ? 1e-4 : 2e-3 + 2e-6 * std::fabs(top))
              << "row " << r << " of " << batch << ", " << chunks << " chunks of " << chunk;
        }
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, Importance, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

// ---- the estimate ----------------------------------------------------------------------------

TrainConfig tiny_config(DecoderKind decoder, int latent) {
  TrainConfig c;
  c.model = tiny_model(decoder, latent);
  c.batch_size = 5;
  c.seed = 9;
  return c;
}

// K = 1: the estimate is the single-sample ELBO with the Monte-Carlo KL (estimator A), log p(x|z)
// + log p(z) − log q(z|x), at the same z.
TEST(LogLikelihood, OneSampleIsTheElboOfEstimatorAAtTheSameDraw) {
  for (const Target target : test::all_targets()) {
    if (target == Target::cuda && !cuda_device_available()) continue;
    for (DecoderKind dec : {DecoderKind::bernoulli, DecoderKind::gaussian}) {
      const TrainConfig config = tiny_config(dec, 3);
      const DeviceContext ctx(target, false);
      const auto pixels = random_uniform(4 * 12, 31, 0, 1);  // one batch of 4 (under the batch size 5)
      const DeviceDataset test(ctx, float_rows(pixels, 12, 3));
      Trainer t(ctx, config);
      const auto ll = t.log_likelihood(test, 1);
      ASSERT_EQ(ll.n, 4);
      Vae v(ctx, config.model, 5, 1);
      v.params().upload(t.model().params().download());
      VAE_CALL(ctx.target(), copy_to_device, v.input(), pixels.data(), pixels.size() * sizeof(float), ctx.stream());
      const DeviceBuffer<StepState> at(ctx, std::vector<StepState>{{0, 0, 0}});  // batch 0, chunk 0
      v.forward(4, {config.seed, RandomStream::importance, at.data(), KlEstimator::monte_carlo}, false);
      const auto lp = v.log_prob().download(), kl = v.kl().download();
      for (int r = 0; r < 4; ++r)
        EXPECT_NEAR(ll.per_datapoint[r], lp[r] - kl[r], 1e-4 * std::fabs(lp[r])) << r << " " << decoder_name(dec);
    }
  }
}

// Evaluation takes rows of its own at a time (Trainer::eval_rows: 256, or the training batch when
// larger) and keys its noise (dynamic binarization, z, the importance draws) by the row's place in
// the data set: one model's test ELBO, codes, reconstructions, prior samples and importance-weighted
// estimate do not depend on the training batch size. Batch 7 (chunks of 256) against 300 (chunks of 300) over
// 601 rows, L = 2; only the order of the sums differs. Keyed by chunk instead, rows 256..299 would
// draw other noise (the ELBO then moves by ~1e-3 of itself).
TEST(Evaluation, FiguresDoNotDependOnTheTrainingBatchSize) {
  for (const Target target : test::all_targets()) {
    if (target == Target::cuda && !cuda_device_available()) continue;
    SCOPED_TRACE(target_name(target));
    TrainConfig small = tiny_config(DecoderKind::bernoulli, 3);
    small.binarize = Binarize::dynamic;
    small.samples = 2;
    small.batch_size = 7;
    TrainConfig large = small;
    large.batch_size = 300;
    const DeviceContext ctx(target, false);
    const DeviceDataset test(ctx, float_rows(random_uniform(601 * 12, 77, 0, 1), 12, 3));
    Trainer a(ctx, small), b(ctx, large);
    ASSERT_EQ(a.eval_rows(), 256);
    ASSERT_EQ(b.eval_rows(), 300);
    ASSERT_EQ(a.model().params().download(), b.model().params().download());  // one seed, one model
    const ElboTotals ea = a.evaluate(test), eb = b.evaluate(test);
    EXPECT_EQ(ea.n, 601);
    EXPECT_NEAR(ea.recon, eb.recon, 1e-6 * std::fabs(ea.recon));
    EXPECT_NEAR(ea.kl, eb.kl, 1e-6 * std::fabs(ea.kl));
    EXPECT_TRUE(all_near(a.encode(test), to_double(b.encode(test)), 1e-6, 1e-5));
    EXPECT_TRUE(all_near(a.reconstructions(test, 64), to_double(b.reconstructions(test, 64)), 1e-6, 1e-5));
    // Prior samples keyed by their index: 300 in chunks of 256 and 44 are the 300 of one pass.
    const std::vector<float> chunked = a.prior_samples(300);
    ASSERT_EQ(chunked.size(), 300u * 12);
    EXPECT_TRUE(all_near(chunked, to_double(b.prior_samples(300)), 1e-6, 1e-5));
    const auto la = a.log_likelihood(test, 6, 4), lb = b.log_likelihood(test, 6, 4);
    ASSERT_EQ(la.n, 601);
    EXPECT_TRUE(
        all_near(std::vector<float>(la.per_datapoint.begin(), la.per_datapoint.end()), lb.per_datapoint, 1e-5, 1e-5));
  }
}

// The evaluation's latent diagnostics against the codes themselves (vae encode's μ | log σ²): per
// unit the analytic KL averaged over the test rows (they sum to the test KL) and the variance of
// μ_j over the rows; the active units at a threshold between those variances (Burda et al.).
TEST(Evaluation, LatentDiagnosticsMatchTheCodes) {
  for (const Target target : test::all_targets()) {
    if (target == Target::cuda && !cuda_device_available()) continue;
    SCOPED_TRACE(target_name(target));
    TrainConfig config = tiny_config(DecoderKind::bernoulli, 7);
    const DeviceContext ctx(target, false);
    const DeviceDataset test(ctx, float_rows(random_uniform(301 * 12, 78, 0, 1), 12, 3));
    Trainer t(ctx, config);
    const ElboTotals e = t.evaluate(test);
    const std::vector<float> codes = t.encode(test);
    const int J = 7, n = 301;
    ASSERT_EQ(e.kl_per_dimension.size(), 7u);
    ASSERT_EQ(e.posterior_mean_variance.size(), 7u);
    double kl_sum = 0;
    std::vector<double> variance(J);
    for (int j = 0; j < J; ++j) {
      double mean = 0, kl = 0;
      for (int r = 0; r < n; ++r) mean += codes[static_cast<size_t>(r) * 2 * J + j] / static_cast<double>(n);
      for (int r = 0; r < n; ++r) {
        const double mu = codes[static_cast<size_t>(r) * 2 * J + j], lv = codes[static_cast<size_t>(r) * 2 * J + J + j];
        variance[j] += (mu - mean) * (mu - mean) / n;
        kl += -0.5 * (1 + lv - mu * mu - std::exp(lv)) / n;
      }
      EXPECT_NEAR(e.kl_per_dimension[j], kl, 1e-6 * (1 + kl)) << j;
      EXPECT_NEAR(e.posterior_mean_variance[j], variance[j], 1e-6 * (1e-3 + variance[j])) << j;
      kl_sum += e.kl_per_dimension[j];
    }
    EXPECT_NEAR(kl_sum, e.kl, 1e-6 * e.kl);
    std::vector<double> sorted = variance;
    std::sort(sorted.begin(), sorted.end());
    ASSERT_LT(sorted[2], sorted[3]);
    const double threshold = 0.5 * (sorted[2] + sorted[3]);  // 4 of 7 above it
    EXPECT_EQ(e.active_units(threshold), 4);
    EXPECT_EQ(e.active_units(0.5 * sorted[0]), 7);
  }
}

// aggregate_posterior_kernel, through its launcher in Trainer::evaluate: the mutual
// information's estimate against float64 from the codes and the evaluation's own
// draws (ε of the evaluation noise, keyed by the row): the mean over the first M rows of
// log q(z_m|x_m) − log (1/N) Σ_n q(z_m|x_n), the densities written out in full; M = 40, and M = N.
// It lies in (0, log N), as the estimator must.
TEST(Evaluation, MutualInformationMatchesFloat64) {
  for (const Target target : test::all_targets()) {
    if (target == Target::cuda && !cuda_device_available()) continue;
    SCOPED_TRACE(target_name(target));
    const TrainConfig config = tiny_config(DecoderKind::bernoulli, 5);
    const DeviceContext ctx(target, false);
    const int n = 301, J = 5;
    const DeviceDataset test(ctx, float_rows(random_uniform(n * 12, 79, 0, 1), 12, 3));
    Trainer t(ctx, config);
    const std::vector<float> codes = t.encode(test);
    const auto eps = test::reference_noise(config.seed, RandomStream::eval_noise, 0, n, 1, J);
    std::vector<double> z(static_cast<size_t>(n) * J);
    for (int r = 0; r < n; ++r)
      for (int j = 0; j < J; ++j) {
        const size_t h = static_cast<size_t>(r) * 2 * J;
        z[static_cast<size_t>(r) * J + j] = codes[h + j] + std::exp(0.5 * double(codes[h + J + j])) * eps[r * J + j];
      }
    auto log_q = [&](int m, int r) {  // log N(z_m; μ_r, σ²_r)
      double s = 0;
      for (int j = 0; j < J; ++j) {
        const double mu = codes[static_cast<size_t>(r) * 2 * J + j], lv = codes[static_cast<size_t>(r) * 2 * J + J + j];
        const double d = z[static_cast<size_t>(m) * J + j] - mu;
        s += -0.5 * std::log(2 * M_PI) - 0.5 * lv - 0.5 * d * d / std::exp(lv);
      }
      return s;
    };
    for (int draws : {40, n}) {
      double want = 0;
      for (int m = 0; m < draws; ++m) {
        double aggregate = 0;
        for (int r = 0; r < n; ++r) aggregate += std::exp(log_q(m, r)) / n;
        want += (log_q(m, m) - std::log(aggregate)) / draws;
      }
      const ElboTotals e = t.evaluate(test, nullptr, draws);
      EXPECT_EQ(e.mi_draws, draws);
      EXPECT_NEAR(e.mutual_information, want, 1e-6 * (1 + std::fabs(want))) << draws << " draws";
      EXPECT_GT(e.mutual_information, 0);
      EXPECT_LT(e.mutual_information, std::log(double(n)));
    }
  }
}

// A one-dimensional latent space: log p(x) = log ∫ p(x|z) N(z; 0, 1) dz by quadrature in float64 is
// exact. The estimate approaches it as K grows (K = 50 000: within 0.01 nats of the mean over the
// test rows, where it was measured within 0.003; a kernel that lost 1 % of the weights would be
// 0.01 low), is never far below the ELBO, and the ELBO is below log p(x). On each target.
class Quadrature : public ::testing::TestWithParam<Target> {};

TEST_P(Quadrature, LogLikelihoodApproachesQuadratureOfAOneDimensionalLatentSpace) {
  const Target target = GetParam();
  VAE_SKIP_WITHOUT_DEVICE(target);
  for (DecoderKind dec : {DecoderKind::bernoulli, DecoderKind::gaussian}) {
    const TrainConfig config = tiny_config(dec, 1);
    const DeviceContext ctx(target, false);
    Trainer t(ctx, config);
    // Sharper weights than the initialisation: a posterior unlike the prior (the ELBO ~0.3 nats
    // below log p(x)), yet weights of a variance that K = 50 000 averages to 0.01 nats.
    auto params = t.model().params().download();
    for (auto& p : params) p *= 2;
    t.model().params().upload(params);
    const int n = 7;
    const auto pixels = random_uniform(n * 12, 41, 0, 1);
    const DeviceDataset test(ctx, float_rows(pixels, 12, 3));
    const Weights w(config.model, params);
    double exact = 0;
    for (int r = 0; r < n; ++r) {
      const std::vector<double> x(pixels.begin() + r * 12, pixels.begin() + (r + 1) * 12);
      // Trapezoid on [−12, 12] of p(x|z) N(z), as a log-sum-exp.
      const int points = 24001;
      const double h = 24.0 / (points - 1);
      std::vector<double> terms(points);
      double top = -INFINITY;
      for (int i = 0; i < points; ++i) {
        const double z = -12 + i * h;
        terms[i] =
            w.log_px(x, {z}) - 0.5 * z * z - 0.5 * std::log(2 * M_PI) + std::log(i == 0 || i + 1 == points ? h / 2 : h);
        top = std::max(top, terms[i]);
      }
      double sum = 0;
      for (double v : terms) sum += std::exp(v - top);
      exact += (top + std::log(sum)) / n;
    }
    const double elbo = t.evaluate(test).elbo();
    const int K = 50000;
    const double k1 = t.log_likelihood(test, 1).mean, kk = t.log_likelihood(test, K, 300).mean;
    EXPECT_LT(elbo, exact) << decoder_name(dec);
    EXPECT_GT(exact - elbo, 0.1) << decoder_name(dec) << ": the bound must have a gap to close";
    EXPECT_NEAR(kk, exact, 0.01) << decoder_name(dec) << ": ELBO " << elbo << ", K=1 " << k1;
    EXPECT_LT(std::fabs(kk - exact), std::fabs(k1 - exact)) << decoder_name(dec);
    EXPECT_GT(kk, elbo) << decoder_name(dec);
    // The same estimate in chunks of another size (the noise is keyed by chunk: close, not equal).
    EXPECT_NEAR(t.log_likelihood(test, K, 1250).mean, exact, 0.01) << decoder_name(dec);
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, Quadrature, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

// ---- encode, decode, manifold ----------------------------------------------------------------

TEST(Codes, EncodeAndDecodeAreForwardPassesOfTheWeights) {
  for (const Target target : test::all_targets()) {
    if (target == Target::cuda && !cuda_device_available()) continue;
    const TrainConfig config = tiny_config(DecoderKind::gaussian, 3);
    const DeviceContext ctx(target, false);
    Trainer t(ctx, config);
    const auto params = t.model().params().download();
    const Weights w(config.model, params);
    const int n = 13;  // batches of 5: two full and one of 3
    const auto pixels = random_uniform(n * 12, 51, 0, 1);
    const DeviceDataset data(ctx, float_rows(pixels, 12, 3));
    const auto codes = t.encode(data);
    ASSERT_EQ(codes.size(), static_cast<size_t>(n) * 6);
    std::vector<float> mu;
    for (int r = 0; r < n; ++r) {
      const auto [m, lv] = w.encode(std::vector<double>(pixels.begin() + r * 12, pixels.begin() + (r + 1) * 12));
      for (int j = 0; j < 3; ++j) {
        EXPECT_NEAR(codes[r * 6 + j], m[j], 1e-5) << r;
        EXPECT_NEAR(codes[r * 6 + 3 + j], lv[j], 1e-5) << r;
        mu.push_back(codes[r * 6 + j]);
      }
    }
    // The decoder means at μ.
    const auto means = t.decode(mu);
    ASSERT_EQ(means.size(), static_cast<size_t>(n) * 12);
    for (int r = 0; r < n; ++r) {
      const auto [y, v] = w.decode(std::vector<double>(mu.begin() + r * 3, mu.begin() + r * 3 + 3));
      for (int d = 0; d < 12; ++d) EXPECT_NEAR(means[r * 12 + d], 1 / (1 + std::exp(-y[d])), 1e-5) << r;
    }
  }
}

TEST(Codes, ManifoldGridWalksTheGaussianQuantiles) {
  EXPECT_NEAR(normal_quantile(0.5), 0.0, 1e-14);
  EXPECT_NEAR(normal_quantile(0.975), 1.959963984540054, 1e-12);
  EXPECT_NEAR(normal_quantile(0.025), -1.959963984540054, 1e-12);
  EXPECT_NEAR(normal_quantile(1e-6), -4.753424308822899, 1e-10);
  const auto z = manifold_codes(4, 3, 2, 0);  // 3 × 3 tiles, dimension 2 across, 0 down
  ASSERT_EQ(z.size(), 36u);
  const float q[3] = {static_cast<float>(normal_quantile(1 / 6.0)), 0.f, static_cast<float>(normal_quantile(5 / 6.0))};
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      const float* c = z.data() + (i * 3 + j) * 4;
      EXPECT_FLOAT_EQ(c[2], q[j]);
      EXPECT_FLOAT_EQ(c[0], q[i]);
      EXPECT_EQ(c[1], 0.f);
      EXPECT_EQ(c[3], 0.f);
    }
}

// The commands end to end: encode → NPY (N, 2J); decode of its μ → NPY (N, D) and PNG; manifold
// → a PNG of grid × grid tiles; eval --iw-samples adds its fields; bad input is named.
TEST(Codes, EncodeDecodeManifoldAndIwEvalCommands) {
  const fs::path dir = fs::temp_directory_path() / ("vae_codes_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string ck = (dir / "run" / "checkpoint.safetensors").string();
  auto r = test::run_cli(
      "train --quiet --device cpu --epochs 1 --hidden 16 --latent 3 --train-limit 300 "
      "--test-limit 40 --out " +
      (dir / "run").string());
  ASSERT_EQ(r.code, 0) << r.err;
  r = test::run_cli("encode --device cpu --checkpoint " + ck + " --out " + (dir / "z.npy").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const FloatMatrix z = read_npy_matrix((dir / "z.npy").string());
  EXPECT_EQ(z.rows, 40);
  EXPECT_EQ(z.cols, 6);
  FloatMatrix mu{"", z.rows, 3, {}};
  for (int64_t i = 0; i < z.rows; ++i)
    mu.values.insert(mu.values.end(), z.values.begin() + i * 6, z.values.begin() + i * 6 + 3);
  write_npy_matrix((dir / "mu.npy").string(), mu);
  r = test::run_cli("decode --device cpu --checkpoint " + ck + " --latents " + (dir / "mu.npy").string() + " --out " +
                    (dir / "x.npy").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const FloatMatrix x = read_npy_matrix((dir / "x.npy").string());
  EXPECT_EQ(x.rows, 40);
  EXPECT_EQ(x.cols, 784);
  r = test::run_cli("decode --device cpu --checkpoint " + ck + " --latents " + (dir / "mu.npy").string() + " --out " +
                    (dir / "x.png").string());
  ASSERT_EQ(r.code, 0) << r.err;
  // A decode of codes of the wrong width, and a manifold's bad --dims: one line naming them.
  r = test::run_cli("decode --device cpu --checkpoint " + ck + " --latents " + (dir / "z.npy").string() + " --out " +
                    (dir / "bad.npy").string());
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("z.npy: codes have 6 columns"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "bad.npy"));
  r = test::run_cli("manifold --device cpu --checkpoint " + ck + " --out " + (dir / "m.png").string() + " --dims 1,7");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--dims"), std::string::npos) << r.err;
  r = test::run_cli("manifold --device cpu --checkpoint " + ck + " --grid 7 --dims 2,0 --out " +
                    (dir / "m.png").string());
  ASSERT_EQ(r.code, 0) << r.err;
  // The PNG's size: 7 tiles of 28 pixels and 8 one-pixel gaps a side (IHDR width, height).
  std::ifstream png(dir / "m.png", std::ios::binary);
  std::vector<unsigned char> head(24);
  png.read(reinterpret_cast<char*>(head.data()), 24);
  const auto be32 = [&](int at) {
    return (head[at] << 24) | (head[at + 1] << 16) | (head[at + 2] << 8) | head[at + 3];
  };
  EXPECT_EQ(be32(16), 7 * 29 + 1);
  EXPECT_EQ(be32(20), 7 * 29 + 1);
  r = test::run_cli("eval --device cpu --iw-samples 50 --checkpoint " + ck);
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["iw_samples"].get<int>(), 50);
  EXPECT_GT(j["test_log_likelihood"].get<double>(), j["test_elbo"].get<double>() - 1.0);
  EXPECT_LT(j["test_log_likelihood"].get<double>(), 0.0);
  EXPECT_GT(j["test_log_likelihood_stderr"].get<double>(), 0.0);
  fs::remove_all(dir);
}

// ---- training options ------------------------------------------------------------------------

// The Gaussian decoder on continuous data where some pixels never change (always 0, always 1):
// without a floor on log σ² their density grows without bound and training diverged; with it,
// training is finite and the ELBO rises.
TEST(GaussianDecoder, ConstantPixelsNoLongerDiverge) {
  const int n = 600, dim = 16;
  auto pixels = random_uniform(static_cast<size_t>(n) * dim, 61, 0, 1);
  for (int r = 0; r < n; ++r) {
    pixels[r * dim + 0] = 0.f;
    pixels[r * dim + 5] = 1.f;
    pixels[r * dim + 9] = 0.f;
  }
  TrainConfig config;
  config.model = tiny_model(DecoderKind::gaussian, 2);
  config.model.input_dim = dim;
  config.model.image_height = 4;
  config.model.image_width = 4;
  config.batch_size = 50;
  config.hyper.lr = 3e-3f;
  const DeviceContext ctx(Target::cpu, false);
  const DeviceDataset data(ctx, float_rows(pixels, dim, 4));
  Trainer t(ctx, config);
  t.set_divergence_check_every(1);
  const double before = t.evaluate(data).elbo();
  double after = before;
  for (int e = 0; e < 40; ++e) ASSERT_NO_THROW(after = t.train_epoch(data).elbo()) << "epoch " << e;
  EXPECT_TRUE(std::isfinite(after));
  EXPECT_GT(t.evaluate(data).elbo(), before + 10);
  // A constant pixel's density is bounded by the floor: −½ (log 2π + floor) ≈ 5.87 nats.
  EXPECT_LT(t.evaluate(data).elbo(), dim * (-0.5 * (std::log(2 * M_PI) + kGaussianMinLogVar)));
}

TEST(Presets, SetThePapersDefaultsUnderExplicitFlags) {
  const fs::path dir = fs::temp_directory_path() / ("vae_presets_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  auto r = test::run_cli(
      "train --quiet --device cpu --preset iwae --epochs 1 --latent 8 --train-limit 100 "
      "--test-limit 20 --out " +
      (dir / "iwae").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const TrainConfig c = load_checkpoint((dir / "iwae" / "checkpoint.safetensors").string()).config;
  EXPECT_EQ(c.model.hidden, (std::vector<int>{200, 200}));
  EXPECT_EQ(c.model.activation, Activation::tanh);
  EXPECT_EQ(c.model.latent, 8);  // the flag wins
  EXPECT_EQ(c.optimizer, OptimizerKind::adam);
  EXPECT_FLOAT_EQ(c.hyper.eps, 1e-4f);
  EXPECT_EQ(c.batch_size, 20);
  EXPECT_EQ(c.binarize, Binarize::dynamic);
  EXPECT_EQ(c.lr_schedule, LrSchedule::iwae);
  r = test::run_cli(
      "train --quiet --device cpu --preset aevb --epochs 1 --lr 0.05 --train-limit 100 --test-limit 20 "
      "--out " +
      (dir / "aevb").string());
  ASSERT_EQ(r.code, 0) << r.err;
  const TrainConfig a = load_checkpoint((dir / "aevb" / "checkpoint.safetensors").string()).config;
  EXPECT_EQ(a.model.hidden, (std::vector<int>{500}));
  EXPECT_EQ(a.optimizer, OptimizerKind::adagrad);
  EXPECT_FLOAT_EQ(a.hyper.lr, 0.05f);
  EXPECT_EQ(a.batch_size, 100);
  EXPECT_FLOAT_EQ(a.hyper.weight_decay, 1.f / 60000);
  EXPECT_EQ(test::run_cli("train --preset vae2").code, 2);
  fs::remove_all(dir);
  // Burda et al.'s schedule: 10^(−i/7) for 3^i epochs.
  TrainConfig s;
  s.lr_schedule = LrSchedule::iwae;
  s.hyper.lr = 1e-3f;
  for (auto [epoch, stage] :
       {std::pair{0, 0}, {1, 1}, {3, 1}, {4, 2}, {12, 2}, {13, 3}, {1092, 6}, {1093, 7}, {5000, 7}})
    EXPECT_FLOAT_EQ(learning_rate_at(s, epoch), static_cast<float>(1e-3 * std::pow(10.0, -stage / 7.0))) << epoch;
}

}  // namespace
}  // namespace vae
