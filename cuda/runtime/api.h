// The runtime's per-target API: memory, streams, launch shapes and CUDA graphs, compiled once per
// target (vae::cpu by the host compiler, vae::gpu by nvcc; cuda/runtime/memory.cu, graph.cu),
// declared once in runtime/api.inc. It knows nothing of the model's kernels; cuda/ops.h adds those.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace vae {
struct LaunchPolicy {
  int max_blocks;         // cap on blocks of elementwise kernels
  int min_block_work;     // elements per block below which fewer blocks are used
  int row_lanes;          // threads cooperating on one row in row kernels (1..32, a power of 2)
  int reduce_threads;     // threads of a one-block reduction (a power of 2; 1 on the CPU: no barriers)
  int column_row_groups;  // threads summing one column in column reductions (1 on the CPU: no barriers)
  int element_threads;    // threads per block of elementwise kernels with a barrier (1 on the CPU: no fibers)
};
struct StepGraph;  // an instantiated CUDA graph (GPU only)
}  // namespace vae

namespace vae::cpu {
#include "runtime/api.inc"
}  // namespace vae::cpu
#if VAE_WITH_CUDA
namespace vae::gpu {
#include "runtime/api.inc"
}  // namespace vae::gpu
#endif
