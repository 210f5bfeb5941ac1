#!/usr/bin/env bash
# The CPU comparison in one command, on a machine without a GPU: installs what is missing (the
# project's packages, Debian's python3-torch, and JAX for the CPU from PyPI into
# build-peers/jax-venv), builds the Release binary, then runs compare.py --device cpu, which
# alternates `vae train --device cpu` with PyTorch at every thread split and JAX, and prints the
# table. Extra arguments go to compare.py (--epochs, --rounds, --skip jax, ...).
#
#   bench/peers/cpu_compare.sh [compare.py arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
cmake/setup.sh python3-torch python3-numpy python3-venv
venv=build-peers/jax-venv
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q "jax[cpu]" numpy
fi
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target vae bench_step >/dev/null
exec /usr/bin/python3 bench/peers/compare.py --device cpu --build build --python /usr/bin/python3 \
  --jax-python "$venv/bin/python" "$@"
