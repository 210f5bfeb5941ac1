// The VAE's forward and backward passes on a target: GEMMs through the GEMM interface, the
// stages between them through the fused kernels. Parameters and gradients in flat buffers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device_context.h"
#include "model.h"

namespace vae {

// Which Philox numbers a pass draws: (seed, stream, at->step) keys them, nothing is stored.
struct NoiseKey {
  uint64_t seed = 1;
  RandomStream stream = RandomStream::latent_noise;
  const StepState* at = nullptr;  // device memory
};

// The three GEMMs of a dense layer s (row-major; W is (s.out, s.in) as in nn.Linear), each with
// its epilogue (cuda/kernels/types.h):
//   forward       out (rows, out) = act(in (rows, in) · Wᵀ + b)
//   weight grad   dW (out, in)    = gᵀ (out, rows) · in (rows, in),   db = Σ_rows g
//   input grad    dX (rows, in)   = g (rows, out) · W (out, in) ⊙ act'(h_in)
// g (rows, out) is dL/d(pre-activation) of the layer. h_in (rows, in) is the output of the layer
// below when it is a hidden layer with activation act_in (its input-grad GEMM then yields that
// layer's g); null for the identity (z, x).
GemmOp dense_forward_gemm(const LinearSlot& s, const float* in, const float* w, const float* b, float* out, int rows,
                          Activation act);
GemmOp dense_weight_grad_gemm(const LinearSlot& s, const float* g, const float* in, float* dw, float* db, int rows);
GemmOp dense_input_grad_gemm(const LinearSlot& s, const float* g, const float* w, float* dx, int rows,
                             const float* h_in, Activation act_in);

class Vae {
 public:
  // max_batch: most datapoints per pass; samples: L, the ε draws per datapoint.
  Vae(const DeviceContext& ctx, const ModelConfig& config, int max_batch, int samples);

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  int samples() const { return samples_; }
  int max_batch() const { return max_batch_; }
  DeviceBuffer<float>& params() { return params_; }
  const DeviceBuffer<float>& params() const { return params_; }
  DeviceBuffer<float>& grads() { return grads_; }
  // (max_batch, D): the batch kernel writes the pass's input here.
  float* input() { return x_.data(); }

  // Encoder forward through the fused kernel (hidden layers, heads and latent stage in one
  // launch) instead of GEMMs + epilogues + the latent kernel. The same function either way.
  void set_fused_encoder(bool on) { fused_encoder_ = on && layout_.encoder.size() <= kMaxFusedLayers; }
  bool fused_encoder() const { return fused_encoder_; }

  // The encoder alone over the first `batch` rows of input(): heads (μ, log σ²), z and KL per row.
  void encode(int batch, const NoiseKey& key);
  // Forward over the first `batch` rows of input(): log p(x|z) per (sample, row), KL per row.
  // With gradients, also dLoss/d(decoder output) for loss = −(1/B) Σ_r ELBO_r.
  void forward(int batch, const NoiseKey& key, bool with_gradients);
  // Backward after forward(…, true): fills grads() (every element is overwritten).
  void backward(int batch);
  // totals[0..2] += (Σ_r reconstruction, Σ_r KL, B) of the last forward pass (device memory).
  void accumulate_totals(int batch, double* totals);

  // Decoder mean (rows, D) for latent codes z (rows, J), both in device memory; rows <= max_batch.
  void decode_mean(const float* z, int rows, float* mean);
  // Decoder mean of the reconstruction of input() rows (the first sample of the last forward).
  void reconstruction_mean(int batch, float* mean);

  // Device buffers of the last pass, for tests: log p per (sample, row) and KL per row.
  const DeviceBuffer<float>& log_prob() const { return log_prob_; }
  const DeviceBuffer<float>& kl() const { return kl_; }

 private:
  void linear_forward(const LinearSlot& s, const float* in, int rows, float* out, Activation act);
  // g: dL/d(pre-activation) of layer s. h_in: the output of the layer below when it is hidden
  // (then grad_in receives that layer's dL/d(pre-activation)), else null.
  void linear_backward(const LinearSlot& s, const float* in, int rows, const float* g, const float* h_in,
                       float* grad_in);
  void decode(const float* z, int rows);

  const DeviceContext& ctx_;
  ModelConfig config_;
  ParamLayout layout_;
  int max_batch_, samples_;
  int out_cols_;  // D or 2D
  bool fused_encoder_ = false;
  DeviceBuffer<float> params_, grads_;
  DeviceBuffer<float> x_, heads_, z_, kl_, out_, log_prob_;
  std::vector<DeviceBuffer<float>> enc_h_, dec_h_;  // activations per hidden layer
  DeviceBuffer<float> d_out_, d_heads_, d_z_;
  std::vector<DeviceBuffer<float>> d_enc_h_, d_dec_h_;  // their gradients (w.r.t. the pre-activations)
  DeviceBuffer<unsigned> reduce_tickets_;               // scratch of the two-stage reductions
  DeviceBuffer<float> reduce_partial_;
};

// Adam, Adagrad or SGD with momentum over the flat parameter buffer.
class Optimizer {
 public:
  Optimizer(const DeviceContext& ctx, size_t n, OptimizerKind kind, const OptimizerHyper& hyper);
  // Queues one update; the step t = at->step + 1 is read on the device.
  void step(float* params, const float* grads, const StepState* at);
  OptimizerKind kind() const { return kind_; }
  // State buffers, in the order of optimizer_state_names(kind()).
  DeviceBuffer<float>& state(size_t i) { return i == 0 ? state1_ : state2_; }
  const DeviceBuffer<float>& state(size_t i) const { return i == 0 ? state1_ : state2_; }

 private:
  const DeviceContext& ctx_;
  size_t n_;
  OptimizerKind kind_;
  OptimizerHyper hyper_;
  DeviceBuffer<float> state1_, state2_;
};

const char* optimizer_name(OptimizerKind k);
OptimizerKind parse_optimizer(const std::string& s);
// State tensor names, as PyTorch's optimizers name them: exp_avg, exp_avg_sq / sum / momentum_buffer.
std::vector<std::string> optimizer_state_names(OptimizerKind k);

}  // namespace vae
