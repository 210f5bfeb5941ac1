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

std::string printable(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (out.size() >= 64) return out + "...";
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

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
