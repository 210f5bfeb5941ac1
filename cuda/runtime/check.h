// Error checks with file and line. The library throws vae::Error; the CLI turns it into a
// one-line message and an exit code.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace vae {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// An allocation the device (the GPU, or the host's memory for the CPU target) cannot take.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& what);
// Text from a file, fit for a one-line message: bytes outside printable ASCII as \xNN, at most 64
// characters (then "...").
std::string printable(const std::string& s);
[[noreturn]] void throw_cuda_error(const char* file, int line, const char* expr, cudaError_t err);
[[noreturn]] void throw_cublas_error(const char* file, int line, const char* expr, int status);
[[noreturn]] void throw_curand_error(const char* file, int line, const char* expr, int status);

}  // namespace vae

#define VAE_CUDA_CHECK(expr)                                                                   \
  do {                                                                                         \
    cudaError_t vae_err_ = (expr);                                                             \
    if (vae_err_ != cudaSuccess) ::vae::throw_cuda_error(__FILE__, __LINE__, #expr, vae_err_); \
  } while (0)

#define VAE_CUBLAS_CHECK(expr)                                                               \
  do {                                                                                       \
    int vae_status_ = static_cast<int>(expr);                                                \
    if (vae_status_ != 0) ::vae::throw_cublas_error(__FILE__, __LINE__, #expr, vae_status_); \
  } while (0)

#define VAE_CURAND_CHECK(expr)                                                               \
  do {                                                                                       \
    int vae_status_ = static_cast<int>(expr);                                                \
    if (vae_status_ != 0) ::vae::throw_curand_error(__FILE__, __LINE__, #expr, vae_status_); \
  } while (0)

// Precondition of a library call: throws with the condition's text.
#define VAE_REQUIRE(cond, msg)                                                              \
  do {                                                                                      \
    if (!(cond)) ::vae::throw_error(__FILE__, __LINE__, std::string(msg) + " (" #cond ")"); \
  } while (0)
