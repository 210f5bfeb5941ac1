// Fills the TargetOps table of this target.
#include "ops.h"  // the entry points this file defines
#include "runtime/compat.cuh"

namespace vae::VAE_NS {

const TargetOps& target_ops() {
  static const TargetOps ops = [] {
    TargetOps t{};
#define VAE_OP(name) t.name = &VAE_NS::name;
#include "ops_list.inc"
#undef VAE_OP
    return t;
  }();
  return ops;
}

}  // namespace vae::VAE_NS
