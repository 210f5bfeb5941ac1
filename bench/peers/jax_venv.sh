#!/usr/bin/env bash
# Installs JAX for the CPU (jax[cpu] and numpy, from PyPI) into build-peers/jax-venv unless it is
# there, and prints the venv's python. Used by cpu_compare.sh and by cmake/test.sh (the suite runs
# the JAX peers on a slice of Fashion-MNIST, so their code is exercised without a GPU).
exec "$(dirname "$0")/../../cmake/venv.sh" jax-venv "jax, numpy" "jax[cpu]" numpy
