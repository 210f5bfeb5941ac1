#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, builds with warnings as errors
# (CPU and GPU halves of every kernel), runs ctest, checks formatting, then builds and runs the
# suite again under AddressSanitizer + UndefinedBehaviorSanitizer, the tests of kernels whose blocks
# share data under ThreadSanitizer, and fuzzes the file readers.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/cuda/bin"
jobs=$(nproc)

cmake/setup.sh
bench/peers/jax_venv.sh >/dev/null  # JAX for the CPU, for the test of the JAX peer
cmake/venv.sh tensorboard-venv tensorboard tensorboard >/dev/null  # TensorBoard's reader, for the event files' test

with_cuda=ON
command -v nvcc >/dev/null 2>&1 || with_cuda=OFF

# Ninja for a new build folder: it compiles a target's sources while the libraries they link are
# still building, where make waits; the two builds took 224 and 396 s with it, 258 and 465 s with
# make (one after the other, 2-vCPU Xeon, 2026-12-07). A folder configured before keeps its generator.
generator() {
  local cache="$1/CMakeCache.txt"
  if [ -f "$cache" ]; then sed -n 's/^CMAKE_GENERATOR:INTERNAL=//p' "$cache"; else echo Ninja; fi
}

# The CPU half in folder $1 under the sanitizer option $2 (VAE_SANITIZE: ASan + UBSan; VAE_TSAN),
# without MPI and the benchmarks. Line tables only (-g1): the sanitizers' reports keep each frame's
# file and line, and the ASan build takes 314 s instead of 440 with full -g (2 cores, 2026-12-06).
configure_sanitized() {
  cmake -G "$(generator "$1")" -S . -B "$1" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
    "-D$2=ON" -DVAE_WERROR=ON -DVAE_WITH_CUDA=OFF -DVAE_WITH_MPI=OFF -DVAE_BUILD_BENCH=OFF >/dev/null
}

echo "== build (VAE_WITH_CUDA=$with_cuda)"
# The GPU half for sm_75 and sm_90 only: the kernels' code differs only below and from sm_80
# (__CUDA_ARCH__ >= 800), so sm_80 and sm_86 compile what sm_90 does. Each added architecture
# costs ~26 s of nvcc time on this project's 13 .cu files (165 s for four, 88 s for sm_90 alone,
# each file timed in turn on a 2-vCPU Xeon, 2026-12-07). The quick start's build keeps all four.
cmake -G "$(generator build)" -S . -B build -DCMAKE_BUILD_TYPE=Release -DVAE_WERROR=ON -DVAE_WITH_CUDA=$with_cuda \
  -DVAE_CUDA_ARCHITECTURES="75;90" >/dev/null
cmake --build build -j "$jobs"
echo "== tests"
ctest --test-dir build --output-on-failure -j "$jobs"

echo "== format"
git ls-files '*.cpp' '*.h' '*.cu' '*.cuh' | xargs clang-format --dry-run --Werror

echo "== tests under ASan + UBSan (CPU half)"
# Without MPI: Open MPI's own allocations at MPI_Finalize read as leaks to LeakSanitizer (the
# data-parallel tests say so as they skip; they run in the build above).
configure_sanitized build-sanitize VAE_SANITIZE
cmake --build build-sanitize -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-sanitize --output-on-failure -j "$jobs"

echo "== the kernels' synchronization between blocks under ThreadSanitizer (CPU half)"
# A block that reads what another wrote without the barrier, counter or ticket that orders it, or
# without the fence that makes the counter an order (ticket.cuh), races on the GPU; x86's strong
# ordering hides it from the runs above, TSan does not (hostexec.h tells it what the GPU's fences
# order). The tests of the kernels whose blocks share data: the host layer's, the kernels' and the
# composed and fused steps'. Of the float64 reference cases of the fused step on 7 blocks, one (13 s
# under TSan, 70 s the four): each optimizer at batch 1, 7 and 129 (a last phase split in K), at
# barriers and row flags; two rounds and clusters run in the launch tests and the cluster cases.
configure_sanitized build-tsan VAE_TSAN
tsan_tests="test_hostexec test_kernels test_step test_fused_step"
cmake --build build-tsan -j "$jobs" --target $tsan_tests
ctest --test-dir build-tsan --output-on-failure -j "$jobs" -L "^(${tsan_tests// /|})\$" \
  -E '^Cases/FusedStep\.ThreeStepsOfEachOptimizerMatchReference/cpu_(bernoulli_tanh_L3|gaussian_relu_L3|gaussian_tanh_L1)'

echo "== fuzz: the IDX, NPY, checkpoint and PSF font readers under libFuzzer, 20 s each"
fuzz/run.sh 20
echo "== all tests passed"
