// The optimizer of a training run: its kind, hyperparameters and state buffers on the target, and
// the one kernel launch that updates the flat parameter buffer (cuda/kernels/optimizer.cu).
#pragma once

#include <cstddef>

#include "device_context.h"      // DeviceContext, DeviceBuffer
#include "kernels/fused_step.h"  // FusedStepArgs
#include "kernels/types.h"       // OptimizerKind, OptimizerHyper, StepState

namespace vae {

// Adam, Adagrad or SGD with momentum over the flat parameter buffer; with models > 1, over the
// (models, n) parameters of a batched step in one launch (kernels/types.h: Models), each model's
// step state at at + m and its scalars from set_model_scalars.
class Optimizer {
 public:
  Optimizer(const DeviceContext& ctx, size_t n, OptimizerKind kind, const OptimizerHyper& hyper, int models = 1);
  // models > 1: each model's hyperparameters (device memory, models), read in place of hyper().
  void set_model_scalars(const ModelScalars* each) { each_ = each; }
  // Queues one update; the step t = at->step + 1 is read on the device. Then, with
  // advance_batch > 0, the update moves the step on (at->step + 1, at->offset + advance_batch).
  // With watch, a non-finite gradient is recorded there.
  void step(float* params, const float* grads, StepState* at, int advance_batch, NonFinite* watch = nullptr);
  OptimizerKind kind() const { return kind_; }
  const OptimizerHyper& hyper() const { return hyper_; }
  void set_learning_rate(float lr) { hyper_.lr = lr; }
  size_t size() const { return n_; }
  // The fused step's optimizer fields: kind, hyperparameters, state, parameter count.
  void set_fused_step_optimizer(FusedStepArgs& a);
  // out[0] = ‖Δθ‖² of model `model`'s last update (the step it took, from 0; hyper: the
  // hyperparameters it took, default hyper()), from params, grads and the state after it, in
  // float64 (device memory; queued).
  void update_square_sum(const float* params, const float* grads, uint64_t step, double* out, ReduceScratch scratch,
                         int model = 0, const OptimizerHyper* hyper = nullptr) const;
  // State buffers, in the order of optimizer_state_names(kind()): (models, n) each.
  DeviceBuffer<float>& state(size_t i) { return i == 0 ? state1_ : state2_; }
  const DeviceBuffer<float>& state(size_t i) const { return i == 0 ? state1_ : state2_; }

 private:
  const DeviceContext& ctx_;
  size_t n_;
  OptimizerKind kind_;
  OptimizerHyper hyper_;
  int models_;
  const ModelScalars* each_ = nullptr;
  DeviceBuffer<float> state1_, state2_;
  DeviceBuffer<unsigned> ticket_;  // zero between updates
};

}  // namespace vae
