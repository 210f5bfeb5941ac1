#!/usr/bin/env bash
# Prepares .gpu-deps/ (git-ignored) for bench/gpu_check.sh on a GPU machine that cannot reach a
# package registry: the Debian packages the build needs beyond the CUDA image, as .deb files,
# and Fashion-MNIST's image files (all 60000 training images, so that benchmarks time whole
# epochs, and the test set). Run it here, where apt works, then name .gpu-deps in the device
# tool's `carry`. About 55 MiB (the carry limit is 64 MiB with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
out=.gpu-deps
rm -rf "$out"
mkdir -p "$out/debs" "$out/fashion-mnist"
packages=(
  libboost-context1.74-dev libboost-context1.74.0 libboost1.74-dev
  libopenblas0-pthread libopenblas-pthread-dev libopenblas-dev libopenblas0 libgfortran5
  libgtest-dev googletest libcli11-dev nlohmann-json3-dev
  libpng-dev libpng16-16 zlib1g-dev
)
(cd "$out/debs" && apt-get download "${packages[@]}" >/dev/null 2>&1) || {
  echo "gpu_deps: apt-get download failed (run apt-get update?)" >&2
  exit 1
}
src=/usr/share/datasets/fashion-mnist
[ -d "$src" ] || { echo "gpu_deps: $src missing: run cmake/setup.sh first" >&2; exit 1; }
cp "$src/t10k-images-idx3-ubyte.gz" "$src/train-images-idx3-ubyte.gz" "$out/fashion-mnist/"
du -sh "$out"
