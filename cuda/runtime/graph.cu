// CUDA graphs: the work queued on a stream between begin and end is captured once and replayed
// as one launch. The CPU target runs work as it is queued and has no graphs.
#include "runtime/compat.cuh"

namespace vae {

#if VAE_HOST_EXEC
struct StepGraph {};
#else
struct StepGraph {
  cudaGraphExec_t exec = nullptr;
};
#endif

namespace VAE_NS {

#if VAE_HOST_EXEC

bool graph_begin_capture(cudaStream_t) { return false; }
StepGraph* graph_end_capture(cudaStream_t) { throw Error("graph_end_capture: the CPU target has no graphs"); }
void graph_launch(StepGraph*, cudaStream_t) { throw Error("graph_launch: the CPU target has no graphs"); }
void graph_destroy(StepGraph*) noexcept {}

#else

bool graph_begin_capture(cudaStream_t stream) {
  // Thread-local mode: only this thread's CUDA calls are checked against the capture.
  VAE_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  return true;
}

StepGraph* graph_end_capture(cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  VAE_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  auto* g = new StepGraph{};
  const cudaError_t err = cudaGraphInstantiate(&g->exec, graph, 0);
  cudaGraphDestroy(graph);
  if (err != cudaSuccess) {
    delete g;
    VAE_CUDA_CHECK(err);
  }
  return g;
}

void graph_launch(StepGraph* g, cudaStream_t stream) { VAE_CUDA_CHECK(cudaGraphLaunch(g->exec, stream)); }

void graph_destroy(StepGraph* g) noexcept {
  if (!g) return;
  if (g->exec) cudaGraphExecDestroy(g->exec);
  delete g;
}

#endif

}  // namespace VAE_NS
}  // namespace vae
