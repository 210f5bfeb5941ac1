// The runtime's per-target API: memory, streams, launch shapes and CUDA graphs, compiled once per
// target (vae::cpu by the host compiler, vae::gpu by nvcc; cuda/runtime/memory.cu, graph.cu). It
// knows nothing of the model's kernels; cuda/ops.h adds those.
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

#define VAE_DECLARE_RUNTIME_API                                                                  \
  /* memory */                                                                                   \
  void* device_alloc(size_t bytes);                                                              \
  void device_free(void* p) noexcept;                                                            \
  void copy_to_device(void* dst, const void* src, size_t bytes, cudaStream_t stream);            \
  void copy_to_host(void* dst, const void* src, size_t bytes, cudaStream_t stream);              \
  void copy_on_device(void* dst, const void* src, size_t bytes, cudaStream_t stream);            \
  void fill_zero(void* p, size_t bytes, cudaStream_t stream);                                    \
  void synchronize(cudaStream_t stream);                                                         \
  cudaStream_t create_stream();                                                                  \
  void destroy_stream(cudaStream_t stream) noexcept;                                             \
  /* the launch shapes of elementwise and row kernels (mutable: tests try others) */             \
  LaunchPolicy& launch_policy();                                                                 \
  /* CUDA graphs (cuda/runtime/graph.cu): begin returns false where the target has none (CPU) */ \
  bool graph_begin_capture(cudaStream_t stream);                                                 \
  StepGraph* graph_end_capture(cudaStream_t stream);                                             \
  void graph_launch(StepGraph* g, cudaStream_t stream);                                          \
  void graph_destroy(StepGraph* g) noexcept;

namespace vae::cpu {
VAE_DECLARE_RUNTIME_API
}
#if VAE_WITH_CUDA
namespace vae::gpu {
VAE_DECLARE_RUNTIME_API
}
#endif
