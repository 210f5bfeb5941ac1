// Target selection: one binary holds the CPU and the GPU build of every kernel.
#pragma once

#include <optional>
#include <string>

namespace vae {

enum class Target { cpu, cuda };

// True when the CUDA build is present and cudaGetDeviceCount reports a device. Never links
// libcuda: without a driver the runtime just returns an error.
bool cuda_device_available();
// Why no GPU is usable (for skip messages); empty when one is.
std::string cuda_unavailable_reason();
// --device: "cpu" or "cuda", or "auto" (nullopt: the GPU when one is usable); throws vae::Error
// for another name.
std::optional<Target> parse_device(const std::string& name);
// The target of a --device choice (nullopt: auto); throws vae::Error for an unavailable GPU.
Target resolve_target(std::optional<Target> wanted);
// Both at once, for programs that take --device as a string (the benchmarks).
inline Target resolve_target(const std::string& name) { return resolve_target(parse_device(name)); }
const char* target_name(Target t);
// The GPU of a rank: device local_rank modulo the node's device count (cudaSetDevice), before
// any context is made. Returns the device index.
int select_cuda_device(int local_rank);

}  // namespace vae
