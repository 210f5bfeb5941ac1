#!/usr/bin/env bash
# A Python venv under build-peers/ with packages from PyPI, made unless it is there (it is when
# MODULE imports), and its python printed. Used for the Python the tests and benchmarks read
# with: bench/peers/jax_venv.sh (JAX), and cmake/test.sh for TensorBoard's event reader.
#
#   cmake/venv.sh NAME MODULE PACKAGE...
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: cmake/venv.sh NAME MODULE PACKAGE...}
module=${2:?usage: cmake/venv.sh NAME MODULE PACKAGE...}
shift 2
venv=build-peers/$name
if ! "$venv/bin/python" -c "import $module" >/dev/null 2>&1; then
  echo "venv.sh: installing $* into $venv" >&2
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q "$@" >&2
fi
echo "$PWD/$venv/bin/python"
