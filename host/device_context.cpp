#include "device_context.h"

#include "runtime/check.h"
#include "runtime/workers.h"

namespace vae {

DeviceContext::DeviceContext(Target target, bool tf32) : target_(target), tf32_(tf32) {
#if !VAE_WITH_CUDA
  if (target == Target::cuda) throw Error("this build has no CUDA kernels (configured with VAE_WITH_CUDA=OFF)");
#endif
  if (target == Target::cuda) {
    int dev = 0;
    cudaDeviceProp prop{};
    VAE_CUDA_CHECK(cudaGetDevice(&dev));
    VAE_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
    card_ = prop.name;
    description_ = card_ + " (sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ")";
  } else {
    card_ = "cpu";
    description_ = "cpu (" + std::to_string(hx::workers()) + (hx::workers() == 1 ? " worker)" : " workers)");
  }
  stream_ = VAE_CALL(target_, create_stream);
  try {
    gemm_ = VAE_CALL(target_, gemm_create, stream_, tf32);
  } catch (...) {
    VAE_CALL(target_, destroy_stream, stream_);
    throw;
  }
}

DeviceContext::~DeviceContext() {
  VAE_CALL(target_, gemm_destroy, gemm_);
  VAE_CALL(target_, destroy_stream, stream_);
}

StepGraph* capture_graph(const DeviceContext& ctx, const std::function<void()>& queue) {
  const Target target = ctx.target();
  if (!VAE_CALL(target, graph_begin_capture, ctx.stream())) return nullptr;
  try {
    queue();
  } catch (...) {  // leave the stream out of capture mode before reporting
    try {
      VAE_CALL(target, graph_destroy, VAE_CALL(target, graph_end_capture, ctx.stream()));
    } catch (...) {
    }
    throw;
  }
  return VAE_CALL(target, graph_end_capture, ctx.stream());
}

}  // namespace vae
