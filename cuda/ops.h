// The per-target API host code calls: the runtime's (memory, streams, graphs: runtime/api.h) and
// every kernel's launcher (kernels/api.inc), compiled once per target (vae::cpu by the host
// compiler, vae::gpu by nvcc). A call names the entry point itself,
//   VAE_ON(ctx.target(), latent_forward)(heads, z, kl, ...);
// so a reader (or an editor's "go to definition") goes from the call to its declaration in
// kernels/api.inc, and from there to the .cu file that defines it.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/dense_gemm.h"  // GemmOp
#include "kernels/fused_step.h"  // FusedStepArgs
#include "kernels/types.h"       // the kernels' other argument types
#include "runtime/api.h"         // memory, streams, launch shapes, graphs
#include "runtime/target.h"      // Target

namespace vae {
struct GemmHandle;  // per target: cuBLAS handle and workspace on the GPU, nothing on the CPU
}  // namespace vae

namespace vae::cpu {
#include "kernels/api.inc"
}  // namespace vae::cpu
#if VAE_WITH_CUDA
namespace vae::gpu {
#include "kernels/api.inc"
}  // namespace vae::gpu
#endif

// The entry point `fn` of target `t` (a vae::Target), to be called: VAE_ON(t, fn)(args...).
// Without the CUDA build every call goes to the CPU (DeviceContext refuses Target::cuda there).
#if VAE_WITH_CUDA
#define VAE_ON(t, fn) ((t) == ::vae::Target::cuda ? &::vae::gpu::fn : &::vae::cpu::fn)
#else
#define VAE_ON(t, fn) ((void)(t), &::vae::cpu::fn)
#endif
