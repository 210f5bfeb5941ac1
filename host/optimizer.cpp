#include "optimizer.h"

namespace vae {

Optimizer::Optimizer(const DeviceContext& ctx, size_t n, OptimizerKind kind, const OptimizerHyper& hyper)
    : ctx_(ctx),
      n_(n),
      kind_(kind),
      hyper_(hyper),
      state1_(ctx, n),
      state2_(ctx, kind == OptimizerKind::adam ? n : 0),
      ticket_(ctx, 1) {}

void Optimizer::set_fused_step_optimizer(FusedStepArgs& a) {
  a.optimizer = kind_;
  a.hyper = hyper_;
  a.state1 = state1_.data();
  a.state2 = state2_.data();
  a.parameters = static_cast<long long>(n_);
}

void Optimizer::step(float* params, const float* grads, StepState* at, int advance_batch, NonFinite* watch) {
  VAE_CALL(ctx_.target(), optimizer_step, kind_, hyper_, params, grads, state1_.data(), state2_.data(),
           static_cast<long long>(n_), at, advance_batch, ticket_.data(), watch, ctx_.stream());
}

}  // namespace vae
