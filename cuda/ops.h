// The per-target API host code calls: the runtime's (memory, streams, graphs: runtime/api.h) and
// every kernel's launcher (kernels/api.inc), compiled once per target (vae::cpu by the host
// compiler, vae::gpu by nvcc). A call names the entry point itself,
//   VAE_CALL(ctx.target(), latent_forward, heads, z, kl, ...);
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

// Calls the entry point fn of target t (a vae::Target) with the arguments that follow:
// vae::gpu::fn(...) or vae::cpu::fn(...), the arguments evaluated once. Without the CUDA build
// every call goes to the CPU (DeviceContext refuses Target::cuda there).
#if VAE_WITH_CUDA
#define VAE_CALL(t, fn, ...) ((t) == ::vae::Target::cuda ? ::vae::gpu::fn(__VA_ARGS__) : ::vae::cpu::fn(__VA_ARGS__))
#else
#define VAE_CALL(t, fn, ...) ((void)(t), ::vae::cpu::fn(__VA_ARGS__))
#endif
