#!/usr/bin/env bash
# Installs the Debian packages the project needs, when any is missing, and any further packages
# named as arguments (bench/peers/cpu_compare.sh names PyTorch's). Safe to run again.
# The CUDA toolkit itself (nvcc, cuBLAS, cuRAND, Thrust) is expected under /usr/local/cuda.
set -euo pipefail

packages=(
  cmake g++ make ninja-build pkg-config python3 python3-venv  # ninja: the test script's builds
  libboost-context-dev   # fibers of the host execution layer
  libopenblas-dev        # CPU GEMM
  libblis4-openmp libdnnl-dev  # the other CPU GEMM engines bench/bench_gemm measures
  libopenmpi-dev openmpi-bin  # data parallel over processes (mpirun), and its tests
  libgtest-dev           # tests
  libcli11-dev nlohmann-json3-dev
  zlib1g-dev libpng-dev
  psf-unifont            # the console font vae report draws its text with
  clang-format
  clang libclang-rt-14-dev  # the fuzz targets (libFuzzer)
  dataset-fashion-mnist  # the default data: /usr/share/datasets/fashion-mnist
  "$@"
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: nvcc not found; install the CUDA toolkit, or configure with -DVAE_WITH_CUDA=OFF for a CPU-only build" >&2
fi
