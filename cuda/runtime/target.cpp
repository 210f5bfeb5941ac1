#include "runtime/target.h"

#include <cuda_runtime.h>

#include "runtime/check.h"

namespace vae {

std::string cuda_unavailable_reason() {
#if !VAE_WITH_CUDA
  return "this build has no CUDA kernels (VAE_WITH_CUDA=OFF)";
#else
  int count = 0;  // left unset when the call fails
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  }
  if (count <= 0) return "cudaGetDeviceCount reports no device";
  return "";
#endif
}

bool cuda_device_available() {
  static const bool available = cuda_unavailable_reason().empty();
  return available;
}

std::optional<Target> parse_device(const std::string& name) {
  if (name == "cpu") return Target::cpu;
  if (name == "cuda") return Target::cuda;
  if (name == "auto") return std::nullopt;
  throw Error("--device: expected auto, cpu or cuda, got '" + printable(name) + "'");
}

Target resolve_target(std::optional<Target> wanted) {
  if (!wanted) return cuda_device_available() ? Target::cuda : Target::cpu;
  if (*wanted == Target::cuda && !cuda_device_available()) {
    throw Error("--device cuda: no usable GPU: " + cuda_unavailable_reason());
  }
  return *wanted;
}

const char* target_name(Target t) { return t == Target::cuda ? "cuda" : "cpu"; }

int select_cuda_device(int local_rank) {
#if VAE_WITH_CUDA
  int count = 0;
  VAE_CUDA_CHECK(cudaGetDeviceCount(&count));
  VAE_REQUIRE(count > 0, "select_cuda_device: no GPU");
  const int device = local_rank % count;
  VAE_CUDA_CHECK(cudaSetDevice(device));
  return device;
#else
  (void)local_rank;
  return 0;
#endif
}

}  // namespace vae
