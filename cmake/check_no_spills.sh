#!/usr/bin/env bash
# A build check: compiles a kernel source for one architecture with `-Xptxas -v` and fails if the
# named kernel spills registers to local memory, or (with MAX_STACK) if its stack frame, each
# thread's local memory, is larger than MAX_STACK bytes. Prints its registers, stack and shared memory.
#   cmake/check_no_spills.sh NVCC ARCH SOURCE KERNEL INCLUDE_DIR [MAX_STACK]
set -euo pipefail
nvcc=$1 arch=$2 src=$3 kernel=$4 inc=$5 max_stack=${6:-}
out=$("$nvcc" -arch="sm_$arch" -std=c++17 --expt-relaxed-constexpr -Xptxas -v -I "$inc" -DVAE_WITH_CUDA=1 \
  -c "$src" -o /dev/null 2>&1) || { echo "$out"; exit 1; }
info=$(echo "$out" | grep -A2 "Function properties for .*$kernel" || true)
if [ -z "$info" ]; then
  echo "check_no_spills: no ptxas report for $kernel in $src"
  exit 1
fi
echo "$info"
if echo "$info" | grep -qE '[1-9][0-9]* bytes spill (stores|loads)'; then
  echo "check_no_spills: $kernel spills registers on sm_$arch"
  exit 1
fi
if [ -n "$max_stack" ]; then
  stack=$(echo "$info" | grep -oE '[0-9]+ bytes stack frame' | head -1 | grep -oE '^[0-9]+')
  if [ -z "$stack" ] || [ "$stack" -gt "$max_stack" ]; then
    echo "check_no_spills: $kernel's stack frame is ${stack:-?} bytes on sm_$arch, more than $max_stack"
    exit 1
  fi
fi
