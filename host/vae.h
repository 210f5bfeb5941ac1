// The VAE's forward and backward passes on a target: GEMMs through the GEMM interface, the
// stages between them through the fused kernels. Parameters and gradients in flat buffers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device_context.h"
#include "kernels/dense_gemm.h"
#include "model.h"

namespace vae {

// Which Philox numbers a pass draws: (seed, stream, at->step) keys them, nothing is stored.
struct NoiseKey {
  uint64_t seed = 1;
  RandomStream stream = RandomStream::latent_noise;
  const StepState* at = nullptr;           // device memory
  KlEstimator kl = KlEstimator::analytic;  // how the pass's KL per row is computed
};

// The three GEMMs of a dense layer s with their epilogues (cuda/kernels/dense_gemm.h).
inline GemmOp dense_forward_gemm(const LinearSlot& s, const float* in, const float* w, const float* b, float* out,
                                 int rows, Activation act) {
  return dense_forward_gemm(s.out, s.in, in, w, b, out, rows, act);
}
inline GemmOp dense_weight_grad_gemm(const LinearSlot& s, const float* g, const float* in, float* dw, float* db,
                                     int rows) {
  return dense_weight_grad_gemm(s.out, s.in, g, in, dw, db, rows);
}
inline GemmOp dense_input_grad_gemm(const LinearSlot& s, const float* g, const float* w, float* dx, int rows,
                                    const float* h_in, Activation act_in) {
  return dense_input_grad_gemm(s.out, s.in, g, w, dx, rows, h_in, act_in);
}

class Vae {
 public:
  // row_capacity: most datapoints per pass (every buffer's row count); samples: L, the ε draws
  // per datapoint. models: how many models of this shape the passes train at once (vae sweep's
  // batched step, host/model_stack.h): every buffer then holds them one after another
  // (kernels/types.h: Models), params() and grads() as (models, layout().total), and each
  // launch is one for all, their seeds and KL terms from set_model_scalars.
  Vae(const DeviceContext& ctx, const ModelConfig& config, int row_capacity, int samples, int models = 1);

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  int samples() const { return samples_; }
  // Draws per datapoint of the passes from now on, up to the samples the buffers were made for.
  void set_samples(int samples);
  // iwae: every pass also computes, per row, the importance-weighted bound over its samples
  // (objective_rows()) and the samples' normalised weights, and a pass with gradients is of
  // loss = −(1/M) Σ_r IWAE_r: each sample's gradient weighted by its w̃ (backward's kl.gradient
  // dreg: the encoder's by w̃², Tucker et al.'s estimator); the KL per row stays as key.kl says
  // (reported only).
  void set_iwae(bool on);
  bool iwae() const { return iwae_; }
  int row_capacity() const { return row_capacity_; }
  int models() const { return models_; }
  // models > 1: each model's seed and KL term (device memory, models()); the passes read them
  // there in place of NoiseKey's seed and estimator and backward's kl.
  void set_model_scalars(const ModelScalars* each) { each_ = each; }
  DeviceBuffer<float>& params() { return params_; }
  const DeviceBuffer<float>& params() const { return params_; }
  DeviceBuffer<float>& grads() { return grads_; }
  // (row_capacity, D): the batch kernel writes the pass's input here.
  float* input() { return x_.data(); }

  // The fused step kernel's view of this model and its buffers for `batch` rows (the data, the
  // optimizer, the step state and the totals are the caller's to fill in). fused_step_fits: the
  // model has no more hidden layers than the fused step takes (kMaxStepLayers per side).
  bool fused_step_fits() const;
  FusedStepArgs fused_step_args(int batch);
  // The fused step's variant (fused_step_args): by default FFMA, or TF32 with the context's --tf32,
  // on the whole grid; the step rule may choose another (host/step_rule.h).
  void set_fused_variant(const FusedVariant& v) { fused_variant_ = v; }

  // The encoder alone over the first `batch` rows of input(): heads (μ, log σ²), z and KL per row.
  void encode(int batch, const NoiseKey& key);
  // New draws of z (and the KL per row) from the heads of the last encode.
  void draw_latent(int batch, const NoiseKey& key);
  // The decoder over the z of the last draw and log p(x|z) per (sample, row) into log_prob(),
  // without gradients.
  void decode_and_score(int batch);
  // What backward needs of the forward pass before it.
  struct Pass {
    int batch = 0;      // rows of input() the pass covered
    int mean_over = 0;  // M of its loss −(1/M) Σ_r ELBO_r
  };
  // Forward over the first `batch` rows of input(): log p(x|z) per (sample, row), KL per row.
  // With gradients, also dLoss/d(decoder output) for loss = −(1/M) Σ_r ELBO_r, M = mean_over
  // (0: batch). A data-parallel rank passes the global batch: the ranks' gradients then sum to
  // the gradient of the global batch's mean.
  Pass forward(int batch, const NoiseKey& key, bool with_gradients, int mean_over = 0);
  // Backward after pass = forward(…, true): fills grads() (every element is overwritten). The KL
  // term's gradient follows kl (estimator, β and its warm-up at at->step; at may be null).
  void backward(const Pass& pass, const KlTerm& kl = {}, const StepState* at = nullptr);
  // totals[0..2] += (Σ_r reconstruction, Σ_r KL, B) of the last forward pass (device memory),
  // and with iwae totals[3] += Σ_r IWAE_r; with watch (and the step state at), a non-finite log p
  // or KL is recorded there.
  void accumulate_totals(int batch, double* totals, const StepState* at = nullptr, NonFinite* watch = nullptr);

  // out[0] = ‖g‖² of model `model`'s gradient in float64 (device memory; queued, no
  // synchronisation).
  void gradient_square_sum(double* out, int model = 0);
  // The scratch of the passes' two-stage reductions (one stream uses it at a time).
  ReduceScratch reduce_scratch() const { return {reduce_tickets_.data(), reduce_partial_.data()}; }
  // Decoder mean (rows, D) for latent codes z (rows, J), both in device memory; rows <= row_capacity.
  void decode_mean(const float* z, int rows, float* mean);
  // Decoder mean of the reconstruction of input() rows (the first sample of the last forward).
  void reconstruction_mean(int batch, float* mean);

  // Device buffers of the last pass, for tests: log p per (sample, row) and KL per row.
  const DeviceBuffer<float>& log_prob() const { return log_prob_; }
  const DeviceBuffer<float>& kl() const { return kl_; }
  const DeviceBuffer<float>& heads() const { return heads_; }               // (row_capacity, 2J): μ | log σ²
  const DeviceBuffer<float>& z() const { return z_; }                       // (samples, row_capacity, J)
  const DeviceBuffer<float>& objective_rows() const { return objective_; }  // iwae: (row_capacity)
  const DeviceBuffer<float>& weights() const { return weights_; }           // iwae: (samples, row_capacity)

 private:
  // stride_rows: the rows between the models' activations (row_capacity, or sample_rows()).
  void linear_forward(const LinearSlot& s, const float* in, int rows, float* out, Activation act,
                      long long stride_rows);
  // g: dL/d(pre-activation) of layer s. h_in: the output of the layer below when it is hidden
  // (then grad_in receives that layer's dL/d(pre-activation)), else null.
  void linear_backward(const LinearSlot& s, const float* in, int rows, const float* g, const float* h_in,
                       float* grad_in, long long stride_rows);
  void batch_over_models(GemmOp& op, long long stride_a, long long stride_other) const;
  long long sample_rows() const { return static_cast<long long>(sample_capacity_) * row_capacity_; }
  Models models_view() const { return {models_, row_capacity_, 0, each_}; }
  void decode(const float* z, int rows);
  // log p(x|z) of the decoded output per (sample, row) into log_prob_; with grad, the gradient of
  // −grad_scale · log p (each row's times row_scale[row] where given).
  void reconstruct(int batch, float* grad, float grad_scale, const float* row_scale);
  // iwae: the rows' bound and the samples' weights from the last reconstruct.
  void weigh_samples(int batch);

  const DeviceContext& ctx_;
  ModelConfig config_;
  ParamLayout layout_;
  int row_capacity_, samples_, sample_capacity_;
  int out_cols_;  // D or 2D
  int models_;
  const ModelScalars* each_ = nullptr;
  DeviceBuffer<float> params_, grads_;
  DeviceBuffer<float> x_, heads_, z_, kl_, out_, log_prob_;
  std::vector<DeviceBuffer<float>> enc_h_, dec_h_;  // activations per hidden layer
  DeviceBuffer<float> d_out_, d_heads_, d_z_;
  bool iwae_ = false;
  DeviceBuffer<float> weights_, objective_;             // iwae: w̃ (samples, rows) and the bound (rows)
  std::vector<DeviceBuffer<float>> d_enc_h_, d_dec_h_;  // their gradients (w.r.t. the pre-activations)
  DeviceBuffer<float> fused_workspace_;                 // the fused step's workspace (on first use)
  DeviceBuffer<float> fused_x_next_;                    // the fused step's second batch buffer (on first use)
  FusedVariant fused_variant_;                          // the fused step's tiles, grid and split (set_fused_variant)
  DeviceBuffer<unsigned> reduce_tickets_;               // scratch of the two-stage reductions
  DeviceBuffer<float> reduce_partial_;
};

}  // namespace vae
