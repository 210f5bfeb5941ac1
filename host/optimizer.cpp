#include "optimizer.h"

#include "runtime/check.h"

namespace vae {

Optimizer::Optimizer(const DeviceContext& ctx, size_t n, OptimizerKind kind, const OptimizerHyper& hyper, int models)
    : ctx_(ctx),
      n_(n),
      kind_(kind),
      hyper_(hyper),
      models_(models),
      state1_(ctx, models * n),
      state2_(ctx, kind == OptimizerKind::adam ? models * n : 0),
      ticket_(ctx, models) {}

void Optimizer::set_fused_step_optimizer(FusedStepArgs& a) {
  VAE_REQUIRE(models_ == 1, "Optimizer: the fused step trains one model");
  a.optimizer = kind_;
  a.hyper = hyper_;
  a.state1 = state1_.data();
  a.state2 = state2_.data();
}

void Optimizer::step(float* params, const float* grads, StepState* at, int advance_batch, NonFinite* watch) {
  VAE_CALL(ctx_.target(), optimizer_step, kind_, hyper_, params, grads, state1_.data(), state2_.data(),
           static_cast<long long>(n_), at, advance_batch, ticket_.data(), watch, ctx_.stream(),
           Models{models_, 0, 0, each_});
}

void Optimizer::update_square_sum(const float* params, const float* grads, uint64_t step, double* out,
                                  ReduceScratch scratch, int model, const OptimizerHyper* hyper) const {
  VAE_REQUIRE(model >= 0 && model < models_, "Optimizer::update_square_sum: no such model");
  const size_t at = static_cast<size_t>(model) * n_;
  VAE_CALL(ctx_.target(), update_square_sum, kind_, hyper ? *hyper : hyper_, step, params + at, grads + at,
           state1_.data() + at, kind_ == OptimizerKind::adam ? state2_.data() + at : nullptr,
           static_cast<long long>(n_), out, scratch, ctx_.stream());
}

}  // namespace vae
