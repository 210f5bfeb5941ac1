#include "vae.h"

#include <algorithm>

#include "named_enum.h"
#include "runtime/check.h"

namespace vae {

Vae::Vae(const DeviceContext& ctx, const ModelConfig& config, int row_capacity, int samples, int models)
    : ctx_(ctx),
      config_(config),
      layout_(make_layout(config)),
      row_capacity_(row_capacity),
      samples_(samples),
      sample_capacity_(samples),
      models_(models),
      fused_variant_{ctx.tf32() ? FusedMath::tf32 : FusedMath::ffma} {
  VAE_REQUIRE(row_capacity > 0, "Vae: row_capacity must be positive");
  VAE_REQUIRE(samples > 0, "Vae: samples must be positive");
  VAE_REQUIRE(models > 0, "Vae: models must be positive");
  // Every buffer holds the models one after another (types.h: Models).
  const size_t M = models, B = M * row_capacity, LB = M * samples * row_capacity, J = config.latent;
  const size_t D = config.input_dim;
  out_cols_ = static_cast<int>(config.decoder == DecoderKind::gaussian ? 2 * D : D);
  params_ = DeviceBuffer<float>(ctx, M * layout_.total);
  grads_ = DeviceBuffer<float>(ctx, M * layout_.total);
  x_ = DeviceBuffer<float>(ctx, B * D);
  heads_ = DeviceBuffer<float>(ctx, B * 2 * J);
  d_heads_ = DeviceBuffer<float>(ctx, B * 2 * J);
  z_ = DeviceBuffer<float>(ctx, LB * J);
  d_z_ = DeviceBuffer<float>(ctx, LB * J);
  kl_ = DeviceBuffer<float>(ctx, B);
  out_ = DeviceBuffer<float>(ctx, LB * out_cols_);
  d_out_ = DeviceBuffer<float>(ctx, LB * out_cols_);
  log_prob_ = DeviceBuffer<float>(ctx, LB);
  for (const auto& s : layout_.encoder) {
    enc_h_.emplace_back(ctx, B * s.out);
    d_enc_h_.emplace_back(ctx, B * s.out);
  }
  for (const auto& s : layout_.decoder) {
    dec_h_.emplace_back(ctx, LB * s.out);
    d_dec_h_.emplace_back(ctx, LB * s.out);
  }
  reduce_tickets_ = DeviceBuffer<unsigned>(ctx, kReduceTickets);  // zero, as the reductions need
  reduce_partial_ = DeviceBuffer<float>(ctx, kReducePartialFloats);
}

void Vae::set_samples(int samples) {
  VAE_REQUIRE(samples > 0 && samples <= sample_capacity_, "Vae::set_samples: more samples than the buffers hold");
  VAE_REQUIRE(models_ == 1 || samples == sample_capacity_, "Vae::set_samples: the models' strides are fixed");
  samples_ = samples;
}

void Vae::set_iwae(bool on) {
  iwae_ = on;
  if (on && objective_.size() == 0) {
    weights_ = DeviceBuffer<float>(ctx_, static_cast<size_t>(models_) * sample_capacity_ * row_capacity_);
    objective_ = DeviceBuffer<float>(ctx_, static_cast<size_t>(models_) * row_capacity_);
  }
}

// out (rows, s.out) = act(in (rows, s.in) Wᵀ + b): one GEMM with its epilogue (a batch of them
// over the models: their rows `stride_rows` apart, their parameters layout().total apart).
void Vae::linear_forward(const LinearSlot& s, const float* in, int rows, float* out, Activation act,
                         long long stride_rows) {
  GemmOp op = dense_forward_gemm(s, in, params_.data() + s.weight, params_.data() + s.bias, out, rows, act);
  batch_over_models(op, stride_rows * s.in, stride_rows * s.out);
  VAE_CALL(ctx_.target(), gemm, ctx_.gemm(), op);
}

// The models' strides of a layer's GEMM: stride_a of its A (activations or their gradient),
// stride_other of its other activation operand (C; B for the weight gradient, whose C is dW).
void Vae::batch_over_models(GemmOp& op, long long stride_a, long long stride_other) const {
  const auto P = static_cast<long long>(layout_.total);
  op.count = models_;
  op.stride_a = stride_a;
  op.stride_b = op.trans_a ? stride_other : P;
  op.stride_c = op.trans_a ? P : stride_other;
  op.stride_bias = P;
}

// Writes dW, db into grads() and, when grad_in is given, dL/d(in) (rows, s.in) — through the
// activation of the layer below when h_in is given.
void Vae::linear_backward(const LinearSlot& s, const float* in, int rows, const float* g, const float* h_in,
                          float* grad_in, long long stride_rows) {
  const Target target = ctx_.target();
  GemmOp weight_grad = dense_weight_grad_gemm(s, g, in, grads_.data() + s.weight, grads_.data() + s.bias, rows);
  batch_over_models(weight_grad, stride_rows * s.out, stride_rows * s.in);
  VAE_CALL(target, gemm, ctx_.gemm(), weight_grad);
  if (grad_in) {
    GemmOp input_grad = dense_input_grad_gemm(s, g, params_.data() + s.weight, grad_in, rows, h_in, config_.activation);
    batch_over_models(input_grad, stride_rows * s.out, stride_rows * s.in);
    VAE_CALL(target, gemm, ctx_.gemm(), input_grad);
  }
}

void Vae::decode(const float* z, int rows) {
  const long long S = sample_rows();
  const float* h = z;
  for (size_t i = 0; i < layout_.decoder.size(); ++i) {
    linear_forward(layout_.decoder[i], h, rows, dec_h_[i].data(), config_.activation, S);
    h = dec_h_[i].data();
  }
  linear_forward(layout_.output, h, rows, out_.data(), Activation::identity, S);
}

void Vae::encode(int batch, const NoiseKey& key) {
  VAE_REQUIRE(batch > 0 && batch <= row_capacity_, "Vae::encode: batch out of range");
  const float* h = x_.data();
  for (size_t i = 0; i < layout_.encoder.size(); ++i) {
    linear_forward(layout_.encoder[i], h, batch, enc_h_[i].data(), config_.activation, row_capacity_);
    h = enc_h_[i].data();
  }
  linear_forward(layout_.heads, h, batch, heads_.data(), Activation::identity, row_capacity_);
  draw_latent(batch, key);
}

void Vae::draw_latent(int batch, const NoiseKey& key) {
  VAE_REQUIRE(batch > 0 && batch <= row_capacity_, "Vae::draw_latent: batch out of range");
  VAE_CALL(ctx_.target(), latent_forward, heads_.data(), z_.data(), kl_.data(), batch, config_.latent, samples_,
           key.seed, key.stream, key.at, key.kl, ctx_.stream(), models_view());
}

void Vae::reconstruct(int batch, float* grad, float grad_scale, const float* row_scale) {
  if (config_.decoder == DecoderKind::bernoulli) {
    VAE_CALL(ctx_.target(), bernoulli_reconstruction, out_.data(), x_.data(), log_prob_.data(), grad, batch,
             config_.input_dim, samples_, grad_scale, row_scale, ctx_.stream(), models_view());
  } else {
    VAE_CALL(ctx_.target(), gaussian_reconstruction, out_.data(), x_.data(), log_prob_.data(), grad, batch,
             config_.input_dim, samples_, grad_scale, row_scale, ctx_.stream(), models_view());
  }
}

void Vae::weigh_samples(int batch) {
  VAE_CALL(ctx_.target(), importance_weights, heads_.data(), z_.data(), log_prob_.data(), batch, config_.latent,
           samples_, weights_.data(), objective_.data(), ctx_.stream(), models_view());
}

void Vae::decode_and_score(int batch) {
  VAE_REQUIRE(batch > 0 && batch <= row_capacity_, "Vae::decode_and_score: batch out of range");
  decode(z_.data(), batch * samples_);
  reconstruct(batch, nullptr, 1.f, nullptr);
  if (iwae_) weigh_samples(batch);
}

Vae::Pass Vae::forward(int batch, const NoiseKey& key, bool with_gradients, int mean_over) {
  VAE_REQUIRE(mean_over == 0 || mean_over >= batch, "Vae::forward: mean_over below the batch");
  encode(batch, key);
  const Pass pass{batch, mean_over ? mean_over : batch};
  decode(z_.data(), batch * samples_);
  if (iwae_) {  // the weights need every sample's log p first; then the gradient, row by row weighted
    reconstruct(batch, nullptr, 1.f, nullptr);
    weigh_samples(batch);
    if (with_gradients) reconstruct(batch, d_out_.data(), 1.f / static_cast<float>(pass.mean_over), weights_.data());
  } else {
    reconstruct(batch, with_gradients ? d_out_.data() : nullptr, 1.f / static_cast<float>(pass.mean_over * samples_),
                nullptr);
  }
  return pass;
}

void Vae::backward(const Pass& pass, const KlTerm& kl, const StepState* at) {
  const int batch = pass.batch, rows = batch * samples_;
  const long long S = sample_rows(), R = row_capacity_;
  const size_t nd = layout_.decoder.size(), ne = layout_.encoder.size();
  // Decoder, from the output layer down to dL/dz. Each input-grad GEMM into a hidden layer also
  // applies that layer's activation derivative, so every g below is w.r.t. a pre-activation.
  const float* last_dec = nd ? dec_h_[nd - 1].data() : z_.data();
  linear_backward(layout_.output, last_dec, rows, d_out_.data(), nd ? last_dec : nullptr,
                  nd ? d_dec_h_[nd - 1].data() : d_z_.data(), S);
  for (size_t i = nd; i-- > 0;) {
    const float* in = i ? dec_h_[i - 1].data() : z_.data();
    linear_backward(layout_.decoder[i], in, rows, d_dec_h_[i].data(), i ? in : nullptr,
                    i ? d_dec_h_[i - 1].data() : d_z_.data(), S);
  }
  // Latent stage: reparameterization and KL (the IWAE objective's weighted log p(z) − log q(z|x)).
  VAE_CALL(ctx_.target(), latent_backward, heads_.data(), z_.data(), d_z_.data(), d_heads_.data(), batch,
           config_.latent, samples_, 1.f / static_cast<float>(pass.mean_over), kl, at,
           iwae_ ? weights_.data() : nullptr, ctx_.stream(), models_view());
  // Encoder, from the heads down to the first layer (dL/dx is not needed).
  const float* last_enc = ne ? enc_h_[ne - 1].data() : x_.data();
  linear_backward(layout_.heads, last_enc, batch, d_heads_.data(), ne ? last_enc : nullptr,
                  ne ? d_enc_h_[ne - 1].data() : nullptr, R);
  for (size_t i = ne; i-- > 0;) {
    const float* in = i ? enc_h_[i - 1].data() : x_.data();
    linear_backward(layout_.encoder[i], in, batch, d_enc_h_[i].data(), i ? in : nullptr,
                    i ? d_enc_h_[i - 1].data() : nullptr, R);
  }
}

bool Vae::fused_step_fits() const {
  return layout_.encoder.size() <= static_cast<size_t>(kMaxStepLayers) &&
         layout_.decoder.size() <= static_cast<size_t>(kMaxStepLayers);
}

FusedStepArgs Vae::fused_step_args(int batch) {
  VAE_REQUIRE(fused_step_fits(), "Vae::fused_step_args: more hidden layers than the fused step takes");
  VAE_REQUIRE(models_ == 1, "Vae::fused_step_args: the fused step trains one model");
  VAE_REQUIRE(batch > 0 && batch <= row_capacity_, "Vae::fused_step_args: batch out of range");
  auto layer = [](const LinearSlot& s, float* h, float* dh) {
    FusedLayer l;
    l.in = s.in, l.out = s.out;
    l.weight = static_cast<long long>(s.weight), l.bias = static_cast<long long>(s.bias);
    l.h = h, l.dh = dh;
    return l;
  };
  FusedStepArgs a;
  a.batch = batch;
  a.dim = config_.input_dim;
  a.latent = config_.latent;
  a.samples = samples_;
  a.gaussian = config_.decoder == DecoderKind::gaussian;
  a.activation = config_.activation;
  a.math = fused_variant_.math;
  a.ticket_chunks = fused_variant_.ticket_chunks;
  a.row_flags = fused_variant_.row_flags;
  a.encoder_layers = static_cast<int>(layout_.encoder.size());
  a.decoder_layers = static_cast<int>(layout_.decoder.size());
  for (int l = 0; l < a.encoder_layers; ++l)
    a.encoder[l] = layer(layout_.encoder[l], enc_h_[l].data(), d_enc_h_[l].data());
  for (int l = 0; l < a.decoder_layers; ++l)
    a.decoder[l] = layer(layout_.decoder[l], dec_h_[l].data(), d_dec_h_[l].data());
  a.heads = layer(layout_.heads, heads_.data(), d_heads_.data());
  a.output = layer(layout_.output, out_.data(), d_out_.data());
  a.params = params_.data();
  a.grads = grads_.data();
  a.x = x_.data();
  a.z = z_.data();
  a.d_z = d_z_.data();
  a.kl = kl_.data();
  a.log_prob = log_prob_.data();
  if (fused_workspace_.size() == 0) {  // on first use (the trainer's first step runs outside graph capture)
    fused_workspace_ = DeviceBuffer<float>(
        ctx_,
        fused_step_workspace_floats(VAE_CALL(ctx_.target(), fused_step_grid), sample_rows(), config_.input_dim,
                                    a.gaussian, fused_step_gemm_phases(a.encoder_layers, a.decoder_layers, a.samples)));
    fused_x_next_ = DeviceBuffer<float>(ctx_, x_.size());
  }
  a.cluster = std::max(1, fused_variant_.cluster);
  if (fused_variant_.half_grid || a.cluster > 1)
    a.grid = VAE_CALL(ctx_.target(), fused_step_variant_grid, fused_variant_);
  a.x_next = fused_x_next_.data();
  a.workspace = fused_workspace_.data();
  a.workspace_floats = static_cast<long long>(fused_workspace_.size());
  return a;
}

void Vae::accumulate_totals(int batch, double* totals, const StepState* at, NonFinite* watch) {
  VAE_CALL(ctx_.target(), elbo_totals, log_prob_.data(), kl_.data(), iwae_ ? objective_.data() : nullptr, batch,
           samples_, totals, reduce_scratch(), at, watch, ctx_.stream(), models_view());
}

void Vae::gradient_square_sum(double* out, int model) {
  VAE_REQUIRE(model >= 0 && model < models_, "Vae::gradient_square_sum: no such model");
  const auto P = static_cast<long long>(layout_.total);
  VAE_CALL(ctx_.target(), square_sum, grads_.data() + model * P, P, out, reduce_scratch(), ctx_.stream());
}

void Vae::decode_mean(const float* z, int rows, float* mean) {
  VAE_REQUIRE(rows > 0 && rows <= row_capacity_, "Vae::decode_mean: rows out of range");
  VAE_REQUIRE(models_ == 1, "Vae::decode_mean: one model's pass");
  decode(z, rows);
  VAE_CALL(ctx_.target(), decoder_mean, out_.data(), out_cols_, mean, rows, config_.input_dim, ctx_.stream());
}

void Vae::reconstruction_mean(int batch, float* mean) {
  VAE_REQUIRE(models_ == 1, "Vae::reconstruction_mean: one model's pass");
  decode(z_.data(), batch);  // sample 0 of each row: the first `batch` rows of z
  VAE_CALL(ctx_.target(), decoder_mean, out_.data(), out_cols_, mean, batch, config_.input_dim, ctx_.stream());
}

}  // namespace vae
