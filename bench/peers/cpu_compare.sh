#!/usr/bin/env bash
# The CPU comparison in one command, on a machine without a GPU: installs what is missing (the
# project's packages, Debian's python3-torch, and JAX for the CPU from PyPI into
# build-peers/jax-venv), builds the Release binary, then runs compare.py --device cpu, which
# alternates `vae train --device cpu` with PyTorch at every thread split and JAX, and prints the
# table. With --with-pypi-torch, PyPI's current PyTorch (MKL, torch.compile; about 5 GB with the
# CUDA libraries it depends on) goes into build-peers/torch-venv and runs too, eager and
# compiled. Other arguments go to compare.py (--epochs, --rounds, --skip jax, ...).
#
#   bench/peers/cpu_compare.sh [--with-pypi-torch] [compare.py arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
pypi_torch=0
args=()
for a in "$@"; do
  if [ "$a" = --with-pypi-torch ]; then pypi_torch=1; else args+=("$a"); fi
done
cmake/setup.sh python3-torch python3-numpy python3-venv
venvs=build-peers
jax_python=$(bench/peers/jax_venv.sh)
extra=()
if [ "$pypi_torch" = 1 ]; then
  if [ ! -x "$venvs/torch-venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venvs/torch-venv"
    "$venvs/torch-venv/bin/pip" install -q torch numpy
  fi
  extra=(--torch-python "$venvs/torch-venv/bin/python")
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target vae bench_step >/dev/null
exec /usr/bin/python3 bench/peers/compare.py --device cpu --build build --python /usr/bin/python3 \
  --jax-python "$jax_python" "${extra[@]}" "${args[@]}"
