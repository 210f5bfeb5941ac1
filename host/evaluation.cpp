// Evaluation beyond the ELBO: the importance-weighted log-likelihood, and the codes themselves
// (encode: q(z|x)'s parameters; decode: decoder means of given codes).
#include <cmath>

#include "runtime/check.h"
#include "trainer.h"

namespace vae {

Trainer::LogLikelihood Trainer::log_likelihood(const DeviceDataset& test, int samples, int chunk) {
  VAE_REQUIRE(test.dim == config_.model.input_dim, "eval: data dimension differs from the model's");
  if (samples < 1) throw Error("--iw-samples: expected at least 1, got " + std::to_string(samples));
  const auto& ops = ctx_.ops();
  const int B = config_.batch_size;
  if (chunk <= 0) chunk = std::max(1, kImportanceRows / B);
  chunk = std::min(chunk, samples);
  const int chunks = (samples + chunk - 1) / chunk;
  Vae iw(ctx_, config_.model, B, chunk);
  ops.copy_on_device(iw.params().data(), vae_.params().data(), vae_.params().size() * sizeof(float), ctx_.stream());
  DeviceBuffer<float> lse_max(ctx_, B);
  DeviceBuffer<double> lse_sum(ctx_, B);
  DeviceBuffer<StepState> at(ctx_, 1);
  const int64_t batches = (test.count + B - 1) / B;
  const StepState* data_at = fixed_steps(batches);
  LogLikelihood out;
  double mean = 0, m2 = 0;  // Welford
  for (int64_t b = 0; b < batches; ++b) {
    const int batch = static_cast<int>(std::min<int64_t>(B, test.count - b * B));
    // The same pixels as evaluate() (its binarization draws), then K fresh draws of z per row.
    ops.gather_batch(test.bytes.data(), test.type, nullptr, batch, test.dim, iw.input(),
                     config_.binarize == Binarize::dynamic, config_.seed, RandomStream::eval_binarize, data_at + b,
                     ctx_.stream());
    for (int c = 0; c < chunks; ++c) {
      iw.set_samples(std::min(chunk, samples - c * chunk));
      at.upload({StepState{static_cast<uint64_t>(b * chunks + c), 0, 0}});  // a key per (batch, chunk)
      const NoiseKey key{config_.seed, RandomStream::importance, at.data()};
      if (c == 0) {
        iw.encode(batch, key);
      } else {
        iw.draw_latent(batch, key);
      }
      iw.decode_and_score(batch);
      ops.importance_accumulate(iw.heads().data(), iw.z().data(), iw.log_prob().data(), batch, config_.model.latent,
                                iw.samples(), lse_max.data(), lse_sum.data(), c == 0, ctx_.stream());
    }
    const std::vector<float> m = lse_max.download();
    const std::vector<double> s = lse_sum.download();
    for (int r = 0; r < batch; ++r) {
      const double v = m[r] + std::log(s[r]) - std::log(static_cast<double>(samples));
      out.per_datapoint.push_back(v);
      ++out.n;
      const double d = v - mean;
      mean += d / static_cast<double>(out.n);
      m2 += d * (v - mean);
    }
  }
  out.mean = mean;
  out.standard_error = out.n > 1 ? std::sqrt(m2 / static_cast<double>(out.n - 1) / static_cast<double>(out.n)) : 0.0;
  return out;
}

std::vector<float> Trainer::encode(const DeviceDataset& data) {
  VAE_REQUIRE(data.dim == config_.model.input_dim, "encode: data dimension differs from the model's");
  const auto& ops = ctx_.ops();
  const int B = config_.batch_size, J2 = 2 * config_.model.latent;
  const int64_t batches = (data.count + B - 1) / B;
  const StepState* at = fixed_steps(batches);
  std::vector<float> codes;
  codes.reserve(static_cast<size_t>(data.count) * J2);
  for (int64_t b = 0; b < batches; ++b) {
    const int batch = static_cast<int>(std::min<int64_t>(B, data.count - b * B));
    ops.gather_batch(data.bytes.data(), data.type, nullptr, batch, data.dim, vae_.input(),
                     config_.binarize == Binarize::dynamic, config_.seed, RandomStream::eval_binarize, at + b,
                     ctx_.stream());
    vae_.encode(batch, {config_.seed, RandomStream::eval_noise, at + b});
    const std::vector<float> heads = vae_.heads().download();
    codes.insert(codes.end(), heads.begin(), heads.begin() + static_cast<size_t>(batch) * J2);
  }
  return codes;
}

std::vector<float> Trainer::decode(const std::vector<float>& z) {
  const size_t J = config_.model.latent, D = config_.model.input_dim;
  VAE_REQUIRE(z.size() % J == 0, "decode: codes are not rows of J values");
  const int64_t n = static_cast<int64_t>(z.size() / J);
  const int B = vae_.max_batch();
  DeviceBuffer<float> codes(ctx_, static_cast<size_t>(B) * J), mean(ctx_, static_cast<size_t>(B) * D);
  std::vector<float> out;
  out.reserve(static_cast<size_t>(n) * D);
  for (int64_t first = 0; first < n; first += B) {
    const int rows = static_cast<int>(std::min<int64_t>(B, n - first));
    codes.upload(z.data() + first * J, rows * J);
    vae_.decode_mean(codes.data(), rows, mean.data());
    const std::vector<float> m = mean.download();
    out.insert(out.end(), m.begin(), m.begin() + static_cast<size_t>(rows) * D);
  }
  return out;
}

double normal_quantile(double p) {
  VAE_REQUIRE(p > 0 && p < 1, "normal_quantile: p outside (0, 1)");
  // Acklam's rational approximation (relative error below 1.2e-9), then one Halley step on
  // Φ(x) = ½ erfc(−x/√2), which brings it to double precision.
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  auto tail = [&](double q) {  // q = sqrt(−2 log p) of the nearer tail
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  };
  double x;
  if (p < 0.02425) {
    x = tail(std::sqrt(-2 * std::log(p)));
  } else if (p > 1 - 0.02425) {
    x = -tail(std::sqrt(-2 * std::log1p(-p)));
  } else {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  }
  const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
  const double u = e * std::sqrt(2 * M_PI) * std::exp(0.5 * x * x);
  return x - u / (1 + 0.5 * x * u);
}

std::vector<float> manifold_codes(int latent, int grid, int dim_x, int dim_y) {
  VAE_REQUIRE(grid > 0 && dim_x >= 0 && dim_x < latent && dim_y >= 0 && dim_y < latent,
              "manifold_codes: bad grid or dimensions");
  std::vector<float> z(static_cast<size_t>(grid) * grid * latent, 0.f);
  for (int i = 0; i < grid; ++i)
    for (int j = 0; j < grid; ++j) {
      float* row = z.data() + (static_cast<size_t>(i) * grid + j) * latent;
      if (dim_x == dim_y) {  // one dimension: grid² quantiles, row by row
        row[dim_x] = static_cast<float>(normal_quantile((static_cast<double>(i) * grid + j + 0.5) / (grid * grid)));
      } else {
        row[dim_x] = static_cast<float>(normal_quantile((j + 0.5) / grid));
        row[dim_y] = static_cast<float>(normal_quantile((i + 0.5) / grid));
      }
    }
  return z;
}

}  // namespace vae
