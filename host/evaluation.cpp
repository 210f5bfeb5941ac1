// Evaluation beyond the ELBO: the importance-weighted log-likelihood, and the codes themselves
// (encode: q(z|x)'s parameters; decode: decoder means of given codes).
#include <cmath>

#include "runtime/check.h"
#include "trainer.h"

namespace vae {

Trainer::LogLikelihood Trainer::log_likelihood(const DeviceDataset& test, int samples, int chunk) {
  VAE_REQUIRE(test.dim == config_.model.input_dim, "eval: data dimension differs from the model's");
  if (samples < 1) throw Error("--iw-samples: expected at least 1, got " + std::to_string(samples));
  const Target target = ctx_.target();
  const int B = eval_rows();
  if (chunk <= 0) chunk = std::max(1, kImportanceRows / B);
  chunk = std::min(chunk, samples);
  const int chunks = (samples + chunk - 1) / chunk;
  Vae iw(ctx_, config_.model, B, chunk);
  VAE_CALL(target, copy_on_device, iw.params().data(), vae_.params().data(), vae_.params().size() * sizeof(float),
           ctx_.stream());
  DeviceBuffer<float> lse_max(ctx_, B);
  DeviceBuffer<double> lse_sum(ctx_, B);
  DeviceBuffer<StepState> at(ctx_, 1);
  const int64_t batches = (test.count + B - 1) / B;
  const StepState* data_at = eval_steps(batches);
  LogLikelihood out;
  double mean = 0, m2 = 0;  // Welford
  for (int64_t b = 0; b < batches; ++b) {
    const int batch = static_cast<int>(std::min<int64_t>(B, test.count - b * B));
    // The same pixels as evaluate() (its binarization draws), then K fresh draws of z per row.
    gather_eval_rows(test, batch, data_at + b, iw.input());
    for (int c = 0; c < chunks; ++c) {
      iw.set_samples(std::min(chunk, samples - c * chunk));
      // Draws keyed by (chunk of samples, the row's place in the data set).
      at.upload({StepState{static_cast<uint64_t>(c), b * B, b * B}});
      const NoiseKey key{config_.seed, RandomStream::importance, at.data()};
      if (c == 0) {
        iw.encode(batch, key);
      } else {
        iw.draw_latent(batch, key);
      }
      iw.decode_and_score(batch);
      VAE_CALL(target, importance_accumulate, iw.heads().data(), iw.z().data(), iw.log_prob().data(), batch,
               config_.model.latent, iw.samples(), lse_max.data(), lse_sum.data(), c == 0, ctx_.stream());
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
  const int B = eval_rows(), J2 = 2 * config_.model.latent;
  const int64_t batches = (data.count + B - 1) / B;
  const StepState* at = eval_steps(batches);
  std::vector<float> codes;
  codes.reserve(static_cast<size_t>(data.count) * J2);
  for (int64_t b = 0; b < batches; ++b) {
    const int batch = static_cast<int>(std::min<int64_t>(B, data.count - b * B));
    gather_eval_rows(data, batch, at + b, vae_.input());
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
  const int B = vae_.row_capacity();
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

}  // namespace vae
