// Each kernel against float64 loops on random odd sizes, under every launch shape.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include <curand_kernel.h>

#include "checkpoint.h"
#include "device_context.h"
#include "vae.h"
#include "reference_vae.h"
#include "support.h"

namespace vae {
namespace {

using test::all_near;
using test::random_uniform;
using test::to_double;

class Kernels : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override {
    VAE_SKIP_WITHOUT_DEVICE(GetParam());
    ctx_ = std::make_unique<DeviceContext>(GetParam(), false);
  }
  cudaStream_t stream() const { return ctx_->stream(); }
  template <typename T>
  DeviceBuffer<T> upload(const std::vector<T>& v) {
    return DeviceBuffer<T>(*ctx_, v);
  }
  DeviceBuffer<StepState> at(uint64_t step, int64_t offset = 0) {
    return upload(std::vector<StepState>{{step, offset}});
  }
  template <typename T>
  std::vector<T> download(const DeviceBuffer<T>& b) {
    ctx_->synchronize();
    return b.download();
  }
  // Scratch of the two-stage reductions, shared by every call of a test: each call must leave
  // its tickets at zero for the next.
  ReduceScratch scratch() {
    if (!tickets_.data()) {
      tickets_ = DeviceBuffer<unsigned>(*ctx_, kReduceTickets);
      partial_ = DeviceBuffer<float>(*ctx_, kReducePartialFloats);
    }
    return {tickets_.data(), partial_.data()};
  }
  std::unique_ptr<DeviceContext> ctx_;
  DeviceBuffer<unsigned> tickets_;
  DeviceBuffer<float> partial_;
};

// Runs the body once per launch shape of the target, with the shape in failure messages.
#define FOR_EACH_SHAPE(target)                                        \
  for (const auto& shape : test::shapes_for(target))                  \
    if (test::ScopedLaunchPolicy scoped_policy_(target, shape); true) \
      if (::testing::ScopedTrace scoped_trace_(__FILE__, __LINE__, shape.name); true)

// dense_bias_activation_forward_kernel, through its launcher.
TEST_P(Kernels, DenseBiasActivationForward) {
  FOR_EACH_SHAPE(GetParam()) {
    for (int rows : {1, 7, 129})
      for (int cols : {5, 33})
        for (Activation act : {Activation::identity, Activation::relu, Activation::tanh}) {
          const auto y0 = random_uniform(static_cast<size_t>(rows) * cols, rows * 100 + cols, -2, 2);
          const auto bias = random_uniform(cols, cols + 7, -1, 1);
          auto y = upload(y0);
          auto b = upload(bias);
          VAE_CALL(GetParam(), dense_bias_activation_forward, y.data(), b.data(), rows, cols, act, stream());
          std::vector<double> want(y0.size());
          for (size_t i = 0; i < y0.size(); ++i) {
            const double a = static_cast<double>(y0[i]) + bias[i % cols];
            want[i] = act == Activation::relu ? std::max(a, 0.0) : act == Activation::tanh ? std::tanh(a) : a;
          }
          ASSERT_TRUE(test::not_all_zero(want));
          EXPECT_TRUE(all_near(download(y), want, 1e-6, 1e-6)) << rows << "x" << cols << " act " << int(act);
        }
  }
}

// dense_activation_backward_kernel, through its launcher.
TEST_P(Kernels, DenseActivationBackward) {
  FOR_EACH_SHAPE(GetParam()) {
    // Up to thousands of rows: the grid then has many row slabs, whose partial sums the last
    // slab of each column group adds; with_bias off: the derivative alone.
    for (int rows : {1, 7, 129, 1031, 4099})
      for (int cols : {5, 33, 400})
        for (Activation act : {Activation::identity, Activation::relu, Activation::tanh})
          for (bool with_bias : {true, false}) {
            if (!with_bias && act == Activation::identity) continue;
            if (cols == 400 && rows < 1031) continue;
            auto h0 = random_uniform(static_cast<size_t>(rows) * cols, rows + cols, -1, 1);
            if (act == Activation::relu)
              for (auto& v : h0) v = std::max(v, 0.f);  // a ReLU output
            const auto g0 = random_uniform(h0.size(), 3 * rows + cols, -1, 1);
            auto g = upload(g0);
            auto h = upload(h0);
            auto gb = upload(std::vector<float>(cols, 7.f));  // untouched without a bias gradient
            VAE_CALL(GetParam(), dense_activation_backward, g.data(), h.data(), with_bias ? gb.data() : nullptr, rows,
                     cols, act, scratch(), stream());
            std::vector<double> want(g0.size()), want_bias(cols, 0.0);
            for (size_t i = 0; i < g0.size(); ++i) {
              const double d = act == Activation::relu   ? (h0[i] > 0)
                               : act == Activation::tanh ? 1.0 - double(h0[i]) * h0[i]
                                                         : 1.0;
              want[i] = g0[i] * d;
              want_bias[i % cols] += want[i];
            }
            if (!with_bias) want_bias.assign(cols, 7.0);
            EXPECT_TRUE(all_near(download(g), want, 1e-6, 1e-6)) << rows << "x" << cols << " act " << int(act);
            EXPECT_TRUE(all_near(download(gb), want_bias, 1e-5 * std::sqrt(rows), 1e-5))
                << rows << "x" << cols << " act " << int(act);
          }
  }
}

// latent_forward_kernel, through its launcher: z from the Philox contract, the KL in closed form
// or as the Monte-Carlo mean; a slice starting at row0 of a global batch draws that batch's rows.
TEST_P(Kernels, LatentForwardMatchesPhiloxContractAndClosedFormKl) {
  FOR_EACH_SHAPE(GetParam()) {
    for (int batch : {1, 7, 129, 1031})
      for (int latent : {1, 3, 20})
        for (int samples : {1, 3})
          for (KlEstimator est : {KlEstimator::analytic, KlEstimator::monte_carlo}) {
            const int row0 = batch == 7 ? 5 : 0;
            const auto heads0 =
                random_uniform(static_cast<size_t>(batch) * 2 * latent, batch * latent + samples, -1.5, 1.5);
            auto heads = upload(heads0);
            DeviceBuffer<float> z(*ctx_, static_cast<size_t>(samples) * batch * latent), kl(*ctx_, batch);
            const uint64_t seed = 77, step = 12345;
            DeviceBuffer<StepState> step_at(*ctx_, std::vector<StepState>{{step, 0, row0}});
            VAE_CALL(GetParam(), latent_forward, heads.data(), z.data(), kl.data(), batch, latent, samples, seed,
                     RandomStream::latent_noise, step_at.data(), est, stream());
            // The global batch's noise, rows row0 .. row0 + batch − 1 of each sample.
            const auto all =
                test::reference_noise(seed, RandomStream::latent_noise, step, row0 + batch, samples, latent);
            std::vector<double> eps(static_cast<size_t>(samples) * batch * latent);
            for (int l = 0; l < samples; ++l)
              for (int r = 0; r < batch; ++r)
                for (int j = 0; j < latent; ++j)
                  eps[(static_cast<size_t>(l) * batch + r) * latent + j] =
                      all[(static_cast<size_t>(l) * (row0 + batch) + row0 + r) * latent + j];
            std::vector<double> want_z, want_kl;
            test::reference_latent(to_double(heads0), eps, batch, samples, latent, want_z, want_kl);
            if (est == KlEstimator::monte_carlo) {  // mean_ℓ Σ_j −½ log σ² − ½ ε² + ½ z²
              for (int r = 0; r < batch; ++r) {
                double s = 0;
                for (int l = 0; l < samples; ++l)
                  for (int j = 0; j < latent; ++j) {
                    const size_t zi = (static_cast<size_t>(l) * batch + r) * latent + j;
                    s += -0.5 * heads0[static_cast<size_t>(r) * 2 * latent + latent + j] - 0.5 * eps[zi] * eps[zi] +
                         0.5 * want_z[zi] * want_z[zi];
                  }
                want_kl[r] = s / samples;
              }
            }
            // On a GPU the normals differ from the host's in the last bits.
            EXPECT_TRUE(all_near(download(z), want_z, 2e-5, 2e-5)) << batch << " " << latent << " " << samples;
            EXPECT_TRUE(all_near(download(kl), want_kl, 1e-5, 1e-5)) << estimator_name(est);
          }
  }
}

// latent_backward_kernel, through its launcher: both estimators, and the Monte-Carlo one's path
// derivative (dreg, by finite differences), β = 0.8 warmed up over 50 steps at step 20 (β_t = 0.32).
TEST_P(Kernels, LatentBackward) {
  FOR_EACH_SHAPE(GetParam()) {
    for (int batch : {1, 7, 129})
      for (int latent : {1, 3, 20})
        for (int samples : {1, 3})
          for (const KlTerm klt : {KlTerm{KlEstimator::analytic, 0.8f, 50, KlGradient::standard},
                                   KlTerm{KlEstimator::monte_carlo, 0.8f, 50, KlGradient::standard},
                                   KlTerm{KlEstimator::monte_carlo, 0.8f, 50, KlGradient::dreg}}) {
            const size_t nz = static_cast<size_t>(samples) * batch * latent;
            const auto heads0 = random_uniform(static_cast<size_t>(batch) * 2 * latent, 5 + batch + latent, -1, 1);
            const auto z0 = random_uniform(nz, 6 + samples, -2, 2);
            const auto gz0 = random_uniform(nz, 7 + latent, -1, 1);
            auto heads = upload(heads0), z = upload(z0), gz = upload(gz0);
            DeviceBuffer<float> gh(*ctx_, heads0.size());
            auto step_at = at(20);
            VAE_CALL(GetParam(), latent_backward, heads.data(), z.data(), gz.data(), gh.data(), batch, latent, samples,
                     1.f / batch, klt, step_at.data(), nullptr, stream());
            const double s = 0.8 * 20 / 50 / batch;  // β_t / B
            const bool mc = klt.estimator == KlEstimator::monte_carlo;
            std::vector<double> want(heads0.size());
            for (int r = 0; r < batch; ++r)
              for (int j = 0; j < latent; ++j) {
                const double mu = heads0[r * 2 * latent + j], lv = heads0[r * 2 * latent + latent + j];
                double a = mc ? 0.0 : s * mu, b = mc ? -0.5 * s : s * 0.5 * (std::exp(lv) - 1);
                for (int l = 0; l < samples; ++l) {
                  const size_t zi = (static_cast<size_t>(l) * batch + r) * latent + j;
                  const double dz = gz0[zi] + (mc ? s / samples * z0[zi] : 0.0);
                  a += dz;
                  b += dz * 0.5 * (z0[zi] - mu);
                }
                want[r * 2 * latent + j] = a;
                want[r * 2 * latent + latent + j] = b;
                if (klt.gradient == KlGradient::dreg) {
                  // The path derivative, by central differences of the loss with q's parameters
                  // frozen inside log q: Σ_ℓ dz_ℓ z_ℓ + s/L Σ_ℓ (log q_{μ, lv}(z_ℓ) − log p(z_ℓ)),
                  // z_ℓ = μ' + exp(½ lv') ε_ℓ, ε_ℓ the draws behind z (z − μ)/σ.
                  auto loss = [&](double mu2, double lv2) {
                    double f = 0;
                    for (int l = 0; l < samples; ++l) {
                      const size_t zi = (static_cast<size_t>(l) * batch + r) * latent + j;
                      const double eps = (z0[zi] - mu) / std::exp(0.5 * lv);
                      const double zz = mu2 + std::exp(0.5 * lv2) * eps, u = (zz - mu) / std::exp(0.5 * lv);
                      f += gz0[zi] * zz + s / samples * (-0.5 * u * u - 0.5 * lv + 0.5 * zz * zz);
                    }
                    return f;
                  };
                  const double h = 1e-5;
                  want[r * 2 * latent + j] = (loss(mu + h, lv) - loss(mu - h, lv)) / (2 * h);
                  want[r * 2 * latent + latent + j] = (loss(mu, lv + h) - loss(mu, lv - h)) / (2 * h);
                }
              }
            EXPECT_TRUE(all_near(download(gh), want, 1e-5, 1e-5))
                << estimator_name(klt.estimator) << " " << kl_gradient_name(klt.gradient);
          }
  }
}

// latent_statistics_kernel, through its launcher: per column, Σ μ, Σ μ² and Σ of the analytic KL's
// term in float64, added onto what the sums held (twice here).
TEST_P(Kernels, LatentStatisticsAccumulateInFloat64) {
  FOR_EACH_SHAPE(GetParam()) {
    for (int batch : {1, 7, 129})
      for (int latent : {1, 5, 20}) {
        const auto heads0 = random_uniform(static_cast<size_t>(batch) * 2 * latent, batch * 31 + latent, -2, 2);
        const auto start = random_uniform(3 * static_cast<size_t>(latent), latent + 3, -1, 1);
        auto heads = upload(heads0);
        auto sums = upload(std::vector<double>(start.begin(), start.end()));
        for (int twice = 0; twice < 2; ++twice)
          VAE_CALL(GetParam(), latent_statistics, heads.data(), batch, latent, sums.data(), stream());
        std::vector<double> want(start.begin(), start.end());
        for (int r = 0; r < batch; ++r)
          for (int j = 0; j < latent; ++j) {
            const double mu = heads0[static_cast<size_t>(r) * 2 * latent + j];
            const double lv = heads0[static_cast<size_t>(r) * 2 * latent + latent + j];
            want[j] += 2 * mu;
            want[latent + j] += 2 * mu * mu;
            want[2 * latent + j] += 2 * -0.5 * (1 + lv - mu * mu - std::exp(lv));
          }
        ASSERT_TRUE(test::not_all_zero(want));
        const auto got = download(sums);
        for (size_t i = 0; i < want.size(); ++i)
          EXPECT_NEAR(got[i], want[i], 1e-6 * (1 + std::fabs(want[i])))
              << "sum " << i << ", " << batch << "x" << latent;
      }
  }
}

// bernoulli_reconstruction_kernel (with and without the gradient), through its launcher.
TEST_P(Kernels, BernoulliReconstruction) {
  FOR_EACH_SHAPE(GetParam()) {
    for (int batch : {1, 7, 129})
      for (int dim : {5, 33, 784})
        for (int samples : {1, 3}) {
          if (batch == 129 && dim == 784 && samples == 3) continue;  // keep the test quick
          const size_t rows = static_cast<size_t>(samples) * batch;
          // Large |logits| as well: the stable form must not overflow.
          const auto y0 = random_uniform(rows * dim, batch + dim + samples, -40, 40);
          const auto x0 = random_uniform(static_cast<size_t>(batch) * dim, dim, 0, 1);
          auto y = upload(y0), x = upload(x0);
          DeviceBuffer<float> lp(*ctx_, rows), g(*ctx_, rows * dim);
          const float scale = 1.f / rows;
          VAE_CALL(GetParam(), bernoulli_reconstruction, y.data(), x.data(), lp.data(), g.data(), batch, dim, samples,
                   scale, nullptr, stream());
          std::vector<double> want_lp(rows, 0.0), want_g(rows * dim);
          for (size_t r = 0; r < rows; ++r)
            for (int d = 0; d < dim; ++d) {
              const double yd = y0[r * dim + d], xd = x0[(r % batch) * dim + d];
              want_lp[r] += xd * yd - (std::max(yd, 0.0) + std::log1p(std::exp(-std::fabs(yd))));
              want_g[r * dim + d] = scale * (1 / (1 + std::exp(-yd)) - xd);
            }
          EXPECT_TRUE(all_near(download(lp), want_lp, 1e-4, 1e-5)) << batch << " " << dim << " " << samples;
          EXPECT_TRUE(all_near(download(g), want_g, 1e-7, 1e-5));
          // Without a gradient buffer: the same log p.
          DeviceBuffer<float> lp2(*ctx_, rows);
          VAE_CALL(GetParam(), bernoulli_reconstruction, y.data(), x.data(), lp2.data(), nullptr, batch, dim, samples,
                   scale, nullptr, stream());
          EXPECT_TRUE(all_near(download(lp2), want_lp, 1e-4, 1e-5));
        }
  }
}

// gaussian_reconstruction_kernel and decoder_mean_kernel, through its launcher.
TEST_P(Kernels, GaussianReconstruction) {
  FOR_EACH_SHAPE(GetParam()) {
    for (int batch : {1, 7, 129})
      for (int dim : {5, 33})
        for (int samples : {1, 3}) {
          const size_t rows = static_cast<size_t>(samples) * batch;
          auto o0 = random_uniform(rows * 2 * dim, batch * dim + samples, -3, 3);
          // Raw log variances in [−18, 0]: across the floor (−13.57) and above it.
          for (size_t r = 0; r < rows; ++r)
            for (int d = 0; d < dim; ++d) o0[r * 2 * dim + dim + d] = 3 * o0[r * 2 * dim + dim + d] - 9;
          const auto x0 = random_uniform(static_cast<size_t>(batch) * dim, dim + 1, 0, 1);
          auto o = upload(o0), x = upload(x0);
          DeviceBuffer<float> lp(*ctx_, rows), g(*ctx_, rows * 2 * dim), mean(*ctx_, rows * dim);
          const float scale = 1.f / rows;
          VAE_CALL(GetParam(), gaussian_reconstruction, o.data(), x.data(), lp.data(), g.data(), batch, dim, samples,
                   scale, nullptr, stream());
          VAE_CALL(GetParam(), decoder_mean, o.data(), 2 * dim, mean.data(), static_cast<int>(rows), dim, stream());
          std::vector<double> want_lp(rows, 0.0), want_g(rows * 2 * dim), want_mean(rows * dim);
          std::vector<double> g_size(rows * 2 * dim);  // the size of the terms each gradient sums
          for (size_t r = 0; r < rows; ++r)
            for (int d = 0; d < dim; ++d) {
              // log σ² = floor + softplus(raw − floor), floor = log((1/255)² / 12)
              const double floor = -2 * std::log(255.0) - std::log(12.0), u = o0[r * 2 * dim + dim + d] - floor;
              const double v = floor + (u > 0 ? u + std::log1p(std::exp(-u)) : std::log1p(std::exp(u)));
              const double m = 1 / (1 + std::exp(-double(o0[r * 2 * dim + d])));
              const double diff = x0[(r % batch) * dim + d] - m;
              want_lp[r] += -0.5 * std::log(2 * M_PI) - 0.5 * v - 0.5 * diff * diff * std::exp(-v);
              want_g[r * 2 * dim + d] = -scale * diff * std::exp(-v) * m * (1 - m);
              want_g[r * 2 * dim + dim + d] = scale * 0.5 * (1 - diff * diff * std::exp(-v)) / (1 + std::exp(-u));
              // float holds x − m to ~2e-7: the mean's gradient as if |x − m| were 2e-3 larger
              g_size[r * 2 * dim + d] = scale * std::exp(-v) * m * (1 - m) * (std::fabs(diff) + 2e-3);
              g_size[r * 2 * dim + dim + d] = scale * 0.5 * (1 + diff * diff * std::exp(-v)) / (1 + std::exp(-u));
              want_mean[r * dim + d] = m;
            }
          EXPECT_TRUE(all_near(download(lp), want_lp, 1e-4, 1e-5));
          // Near the floor e^{−v} ≈ 8e5 magnifies float's rounding of x − m and of v, and 1 − (x − m)² e^{−v}
          // cancels: each gradient within 1e-4 of the size of its terms.
          const auto got_g = download(g);
          for (size_t i = 0; i < got_g.size(); ++i)
            ASSERT_NEAR(got_g[i], want_g[i], 1e-7 + 1e-4 * g_size[i])
                << "element " << i << " of " << batch << "x" << dim;
          EXPECT_TRUE(all_near(download(mean), want_mean, 1e-7, 1e-6));
        }
  }
}

// elbo_totals_kernel, through its launcher.
TEST_P(Kernels, ElboTotalsAccumulateInFloat64) {
  FOR_EACH_SHAPE(GetParam()) {
    for (int batch : {1, 7, 129, 300, 5001})
      for (int samples : {1, 3}) {
        const auto lp0 = random_uniform(static_cast<size_t>(samples) * batch, batch + samples, -300, -100);
        const auto kl0 = random_uniform(batch, batch + 1, 0, 30);
        const auto obj0 = random_uniform(batch, batch + 2, -300, -100);  // the IWAE bound per row
        auto lp = upload(lp0), kl = upload(kl0), obj = upload(obj0);
        auto totals = upload(std::vector<double>{1.5, 2.5, 3, 4.5});  // accumulates onto what is there
        VAE_CALL(GetParam(), elbo_totals, lp.data(), kl.data(), nullptr, batch, samples, totals.data(), scratch(),
                 nullptr, nullptr, stream());
        VAE_CALL(GetParam(), elbo_totals, lp.data(), kl.data(), obj.data(), batch, samples, totals.data(), scratch(),
                 nullptr, nullptr, stream());
        double objective = 0;
        for (float v : obj0) objective += v;
        double recon = 0, kls = 0;
        for (int r = 0; r < batch; ++r) {
          double m = 0;
          for (int l = 0; l < samples; ++l) m += lp0[l * batch + r];
          recon += m / samples;
          kls += kl0[r];
        }
        const auto got = download(totals);
        EXPECT_NEAR(got[0], 1.5 + 2 * recon, 1e-9 * std::fabs(recon));
        EXPECT_NEAR(got[1], 2.5 + 2 * kls, 1e-9 * kls);
        EXPECT_EQ(got[2], 3 + 2 * batch);
        EXPECT_NEAR(got[3], 4.5 + objective, 1e-9 * std::fabs(objective));  // only the call that had it
      }
  }
}

// square_sum_kernel (the gradient's squared norm), through its launcher: odd sizes against
// float64, written over what was there, and the same bits twice.
TEST_P(Kernels, SquareSumIsFloat64AndRepeatable) {
  FOR_EACH_SHAPE(GetParam()) {
    for (long long n : {1ll, 7ll, 1001ll, 650003ll}) {
      const auto x0 = random_uniform(static_cast<size_t>(n), static_cast<uint64_t>(n) + 3, -2, 2);
      auto x = upload(x0);
      auto out = upload(std::vector<double>{123.0});
      VAE_CALL(GetParam(), square_sum, x.data(), n, out.data(), scratch(), stream());
      const double first = download(out)[0];
      VAE_CALL(GetParam(), square_sum, x.data(), n, out.data(), scratch(), stream());
      double want = 0;
      for (float v : x0) want += double(v) * v;
      EXPECT_NEAR(first, want, 1e-12 * want) << n;
      EXPECT_EQ(download(out)[0], first) << n;
    }
  }
}

// optimizer_step_kernel (Adam, Adagrad, SGD), and update_square_sum_kernel (the norm of the step
// it took), through their launchers, against float64: four steps
// from t = 1 (with weight decay) and four from t = 10⁶ (late bias correction), ε = 1e-4 (the iwae
// preset's) with gradients from 1e-6 to 1 in magnitude, so that where ε sits shows; the
// parameters and every state tensor compared (each gradient keeps its sign over the steps, so no
// moment cancels to near zero and a relative tolerance holds where there is no weight decay).
TEST_P(Kernels, OptimizerSteps) {
  FOR_EACH_SHAPE(GetParam()) {
    for (OptimizerKind kind : {OptimizerKind::adam, OptimizerKind::adagrad, OptimizerKind::sgd})
      for (auto [start, weight_decay] : {std::pair{uint64_t{0}, 0.1f}, {uint64_t{999999}, 0.f}}) {
        SCOPED_TRACE(std::string(optimizer_name(kind)) + " from t = " + std::to_string(start + 1));
        const long long n = 1001;
        OptimizerHyper h;
        h.lr = 0.01f;
        h.eps = 1e-4f;
        h.weight_decay = weight_decay;
        std::vector<double> p = to_double(random_uniform(n, 1, -1, 1)), s1(n, 0), s2(n, 0);
        // |g_i| = scale_i · U(0.5, 1), scale_i log-uniform in [1e-6, 1], a fixed sign per element.
        std::vector<double> scale(n);
        const auto e = random_uniform(n, 2, -6, 0), sign = random_uniform(n, 3, -1, 1);
        for (long long i = 0; i < n; ++i) scale[i] = std::pow(10.0, e[i]) * (sign[i] < 0 ? -1 : 1);
        std::vector<float> pf(p.begin(), p.end());
        auto dp = upload(pf);
        DeviceBuffer<float> d1(*ctx_, n), d2(*ctx_, n);
        DeviceBuffer<unsigned> ticket(*ctx_, 1);
        for (uint64_t step = start; step < start + 4; ++step) {
          const auto u = random_uniform(n, 10 + step, 0.5f, 1.f);
          std::vector<float> g(n);
          for (long long i = 0; i < n; ++i) g[i] = static_cast<float>(scale[i] * u[i]);
          auto dg = upload(g);
          auto step_at = at(step, 100);  // t = at->step + 1
          VAE_CALL(GetParam(), optimizer_step, kind, h, dp.data(), dg.data(), d1.data(), d2.data(), n, step_at.data(),
                   7, ticket.data(), nullptr, stream());
          const StepState moved = download(step_at)[0];  // the last block moved the step on
          EXPECT_EQ(moved.step, step + 1);
          EXPECT_EQ(moved.offset, 107);
          EXPECT_EQ(download(ticket)[0], 0u);
          const double t = static_cast<double>(step + 1);
          double update_square = 0;  // ‖Δθ‖² of this step
          for (long long i = 0; i < n; ++i) {
            const double gi = g[i] + double(h.weight_decay) * p[i];
            double delta = 0;
            if (kind == OptimizerKind::adam) {
              s1[i] = h.beta1 * s1[i] + (1 - h.beta1) * gi;
              s2[i] = h.beta2 * s2[i] + (1 - h.beta2) * gi * gi;
              const double mh = s1[i] / (1 - std::pow(double(h.beta1), t)),
                           vh = s2[i] / (1 - std::pow(double(h.beta2), t));
              delta = h.lr * mh / (std::sqrt(vh) + h.eps);
            } else if (kind == OptimizerKind::adagrad) {
              s1[i] += gi * gi;
              delta = h.lr * gi / (std::sqrt(s1[i]) + h.eps);
            } else {
              s1[i] = h.momentum * s1[i] + gi;
              delta = h.lr * s1[i];
            }
            p[i] -= delta;
            update_square += delta * delta;
          }
          // update_square_sum_kernel: the step's ‖Δθ‖² from the state after it (Adagrad's θ before
          // the step recovered from θ after it, in float: a relative 1e-4 with weight decay).
          auto norm = upload(std::vector<double>{123.0});
          VAE_CALL(GetParam(), update_square_sum, kind, h, step, dp.data(), dg.data(), d1.data(), d2.data(), n,
                   norm.data(), scratch(), stream());
          EXPECT_NEAR(download(norm)[0], update_square, (weight_decay > 0 ? 1e-4 : 1e-5) * update_square) << step;
          ASSERT_GT(update_square, 0);
        }
        // p: a few float roundings of |p| <= 1 (updates of g ~ 1e-6 are ~1e-5 here, far above it).
        EXPECT_TRUE(all_near(download(dp), p, 3e-7, 1e-6)) << "parameters";
        // With weight decay g + λp may cancel: the float rounding of λp (~6e-9) bounds the state there.
        const double state_abs = weight_decay > 0 ? 1e-8 : 0;
        EXPECT_TRUE(all_near(download(d1), s1, state_abs, 1e-5)) << optimizer_state_names(kind)[0];
        if (kind == OptimizerKind::adam) {
          EXPECT_TRUE(all_near(download(d2), s2, state_abs * state_abs, 1e-5)) << "exp_avg_sq";
        }
      }
  }
}

// gather_batch_kernel (uint8, float32) and gather_binarized_batch_kernel (dynamic binarization),
// through their launcher.
TEST_P(Kernels, GatherBatch) {
  FOR_EACH_SHAPE(GetParam()) {
    const int n = 301, dim = 37, batch = 29;
    const long long offset = 250;  // a partial batch at the end: rows 250..278
    std::vector<uint8_t> u8(static_cast<size_t>(n) * dim);
    std::vector<float> f32(u8.size());
    std::mt19937 rng(3);
    for (size_t i = 0; i < u8.size(); ++i) {
      u8[i] = static_cast<uint8_t>(rng() % 256);
      f32[i] = u8[i] / 255.f;
    }
    std::vector<int> perm(n);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    auto du8 = upload(u8);
    auto df32 = upload(f32);
    auto dperm = upload(perm);
    DeviceBuffer<float> x(*ctx_, static_cast<size_t>(batch) * dim);
    std::vector<double> want(x.size());
    for (int r = 0; r < batch; ++r)
      for (int d = 0; d < dim; ++d) want[r * dim + d] = u8[static_cast<size_t>(perm[offset + r]) * dim + d] / 255.0;
    auto rows_at = at(0, offset);
    VAE_CALL(GetParam(), gather_batch, du8.data(), PixelType::u8, dperm.data(), batch, dim, x.data(), false, 1,
             RandomStream::binarize, rows_at.data(), stream());
    EXPECT_TRUE(all_near(download(x), want, 1e-7, 0));
    VAE_CALL(GetParam(), gather_batch, df32.data(), PixelType::f32, dperm.data(), batch, dim, x.data(), false, 1,
             RandomStream::binarize, rows_at.data(), stream());
    EXPECT_TRUE(all_near(download(x), want, 1e-7, 0));

    // Dynamic binarization: x = [u <= p] with u from Philox keyed by (seed, binarize, step, group),
    // the group counted from the row's place in the global batch, row0 + r (row0: a data-parallel
    // rank's first row; 0 in one process).
    const uint64_t seed = 9, step = 4;
    for (const int64_t row0 : {0, 13}) {
      SCOPED_TRACE("row0 " + std::to_string(row0));
      auto binarize_at = upload(std::vector<StepState>{{step, offset, row0}});
      VAE_CALL(GetParam(), gather_batch, du8.data(), PixelType::u8, dperm.data(), batch, dim, x.data(), true, seed,
               RandomStream::binarize, binarize_at.data(), stream());
      const int groups = (dim + 3) / 4;
      for (int r = 0; r < batch; ++r)
        for (int gidx = 0; gidx < groups; ++gidx) {
          curandStatePhilox4_32_10_t st;
          curand_init(seed, (step << 3) | static_cast<uint64_t>(RandomStream::binarize),
                      (static_cast<uint64_t>(row0 + r) * groups + gidx) * 4, &st);
          const float4 u = curand_uniform4(&st);
          const float uq[4] = {u.x, u.y, u.z, u.w};
          for (int q = 0; q < 4 && gidx * 4 + q < dim; ++q) {
            const int d = gidx * 4 + q;
            want[r * dim + d] = uq[q] <= u8[static_cast<size_t>(perm[offset + r]) * dim + d] / 255.f ? 1.0 : 0.0;
          }
        }
      EXPECT_TRUE(all_near(download(x), want, 0, 0));
    }
  }
}

// shuffle_permutation (Thrust), through its launcher.
TEST_P(Kernels, ShufflePermutation) {
  for (int n : {1, 7, 1000, 60001}) {
    DeviceBuffer<int> a(*ctx_, n), b(*ctx_, n), c(*ctx_, n);
    VAE_CALL(GetParam(), shuffle_permutation, a.data(), n, 42, stream());
    VAE_CALL(GetParam(), shuffle_permutation, b.data(), n, 42, stream());
    VAE_CALL(GetParam(), shuffle_permutation, c.data(), n, 43, stream());
    const auto pa = download(a), pb = download(b), pc = download(c);
    std::vector<int> sorted = pa;
    std::sort(sorted.begin(), sorted.end());
    for (int i = 0; i < n; ++i) ASSERT_EQ(sorted[i], i) << "not a permutation of 0.." << n - 1;
    EXPECT_EQ(pa, pb) << "same seed, same order";
    if (n >= 1000) {
      EXPECT_NE(pa, pc) << "another seed, another order";
      int fixed = 0;
      for (int i = 0; i < n; ++i) fixed += pa[i] == i;
      EXPECT_LT(fixed, n / 50) << "hardly shuffled";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, Kernels, ::testing::ValuesIn(test::all_targets()), test::target_param_name);

}  // namespace
}  // namespace vae
