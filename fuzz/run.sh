#!/usr/bin/env bash
# Builds the fuzz targets (clang, libFuzzer, ASan + UBSan) into build-fuzz/ and runs each for
# SECONDS (default 20) on a copy of its corpus in fuzz/corpus/<target>/, with a per-input timeout.
# Exits non-zero on any finding (crash, hang, sanitizer report, leak, an error that is not a
# one-line vae::Error naming the file); libFuzzer then writes the input as build-fuzz/<target>-*.
# Run longer with: fuzz/run.sh 3600. A finding, once fixed, joins the corpus as a regression test.
#   fuzz/run.sh [SECONDS] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-20}
shift || true
if [ $# -gt 0 ]; then targets=("$@"); else targets=(fuzz_idx fuzz_npy fuzz_checkpoint fuzz_psf); fi
cmake -S fuzz -B build-fuzz -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCUDAToolkit_ROOT=/usr/local/cuda >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
status=0
for t in "${targets[@]}"; do
  work=build-fuzz/corpus-$t
  rm -rf "$work" && mkdir -p "$work" && cp fuzz/corpus/"$t"/* "$work"/
  echo "== $t: ${seconds} s"
  if ! (cd build-fuzz && ./"$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 "corpus-$t" 2>"$t.log"); then
    echo "$t: FINDING (see build-fuzz/$t.log)"
    tail -40 "build-fuzz/$t.log"
    status=1
  else
    grep -E "stat::number_of_executed_units|Done [0-9]+ runs" "build-fuzz/$t.log" | tail -1 || true
  fi
done
exit $status
