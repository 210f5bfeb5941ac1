// OpenBLAS picks its kernels from the CPU model at load time. On CPUs it does not know (a
// virtual machine's generic "Intel Xeon Processor", say) it falls back to SSE3 kernels
// (Prescott) at about half the speed. This names the kernel set the CPU's features allow.
#pragma once

namespace vae {

// The OPENBLAS_CORETYPE worth setting ("SkylakeX", "Haswell"), or nullptr when OpenBLAS already
// uses a fitting kernel set or OPENBLAS_CORETYPE is set by the user.
const char* better_openblas_coretype();

// For a program's main(): when better_openblas_coretype() names one, re-executes the program with
// OPENBLAS_CORETYPE set (OpenBLAS reads it only when it loads). Returns if there is nothing to do
// or the exec fails.
void reexec_with_better_openblas_core(char** argv);

}  // namespace vae
