#!/usr/bin/env bash
# Installs JAX for the CPU (jax[cpu] and numpy, from PyPI) into build-peers/jax-venv unless it is
# there, and prints the venv's python. Used by cpu_compare.sh and by cmake/test.sh (the suite runs
# the JAX peers on a slice of Fashion-MNIST, so their code is exercised without a GPU).
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=build-peers/jax-venv
if ! "$venv/bin/python" -c "import jax, numpy" >/dev/null 2>&1; then
  echo "jax_venv.sh: installing jax[cpu] into $venv" >&2
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q "jax[cpu]" numpy >&2
fi
echo "$PWD/$venv/bin/python"
