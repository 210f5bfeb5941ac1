#include "runtime/check.h"

#include <cstdio>
#include <cstring>

namespace vae {

namespace {
std::string where(const char* file, int line) {
  const char* base = std::strrchr(file, '/');
  return std::string(base ? base + 1 : file) + ":" + std::to_string(line);
}
}  // namespace

void throw_error(const char* file, int line, const std::string& what) {
  throw Error(what + " [" + where(file, line) + "]");
}

void throw_cuda_error(const char* file, int line, const char* expr, cudaError_t err) {
  throw Error(std::string("CUDA error ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") in " + expr +
              " [" + where(file, line) + "]");
}

void throw_cublas_error(const char* file, int line, const char* expr, int status) {
  throw Error("cuBLAS error " + std::to_string(status) + " in " + expr + " [" + where(file, line) + "]");
}

void throw_curand_error(const char* file, int line, const char* expr, int status) {
  throw Error("cuRAND error " + std::to_string(status) + " in " + expr + " [" + where(file, line) + "]");
}

}  // namespace vae
