#include "blas_core.h"

#include <cstdlib>
#include <cstring>

#include <unistd.h>

extern "C" char* openblas_get_corename(void);

namespace vae {

const char* better_openblas_coretype() {
  if (std::getenv("OPENBLAS_CORETYPE")) return nullptr;
  const char* core = openblas_get_corename();
  if (!core) return nullptr;
  static const char* const kFallbacks[] = {"prescott",  "core2",  "nehalem", "unknown",    "katmai", "coppermine",
                                           "northwood", "banias", "atom",    "dunnington", "penryn"};
  bool fallback = false;
  for (const char* f : kFallbacks) fallback = fallback || strcasecmp(core, f) == 0;
  if (!fallback) return nullptr;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

void reexec_with_better_openblas_core(char** argv) {
  if (const char* core = better_openblas_coretype()) {
    setenv("OPENBLAS_CORETYPE", core, 1);
    execv("/proc/self/exe", argv);
  }
}

}  // namespace vae
