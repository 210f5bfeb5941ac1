#!/usr/bin/env bash
# On a machine with a GPU: build for the card, run the whole test suite on it (GPU tests must
# run, not skip), compare GPU and CPU training, run the benchmarks and the peers, print a
# summary table last. Full logs go into the report folder (at most 8 files, for the device
# tool's $OUT).
#
#   bench/gpu_check.sh REPORT_DIR [STAGE ...]
#
# VAE_COMMIT names the tree's commit where the copy's git metadata is not the tree's (a device
# machine that receives a copy of a working tree): the summaries print it.
#
# Stages: check (build, tests, compute-sanitizer, GPU against CPU, the fused step's 10-epoch test ELBO
# against the composed step's and its bits from the same seed), bench (bench_kernels,
# bench_step, throughput.py), profile (ncu: per-kernel GPU times of one training step at batch
# 128 and 4096, as a table in the summary), peers (bench/peers/compare.py: PyTorch eager,
# torch.compile and JAX, jitted per step and scanned per epoch, on the same card). Default: all. Each stage fits a 10-minute call on its own; a
# later call reuses build-gpu/ when the machine is still warm (the build step is then quick).
#
# VAE_GPU_BUDGET_S (seconds, optional) bounds the whole run, so that a device call with a time
# limit still ends with its summaries: a stage or benchmark that would start with less than
# VAE_GPU_RESERVE_S (default 30) left is skipped, and each command runs under `timeout` with what is
# left; the summary names what was skipped. Without it nothing is bounded.
#
# A fused step that hangs on the card (a grid barrier that some block never reaches) must not eat
# the call: VAE_GPU_HANG_S (default 60) bounds each of its GPU tests and benchmark runs (the sweep
# 4x, its sanitizer runs 4x); its GPU tests run first on their own, and after one hang every later
# run of the fused step is skipped (the summary's `fused` row says so) while the composed step's go
# on. Its variants in thread-block clusters (sm_90) are tested apart after that, bounded alike: a
# fault or hang there drops only the cluster variants from the benchmarks (the `clusters` row).
#
# Where the machine lacks the Debian packages the build needs and cannot fetch them, prepare
# .gpu-deps/ here with bench/gpu_deps.sh and carry it along: this script unpacks it under /tmp
# (never into /) and points the build at it. Each stage is meant to finish in under 9 minutes on
# 16 cores (the build, a few minutes, is shared by the stages of one warm machine).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
report=${1:?usage: bench/gpu_check.sh REPORT_DIR [check|bench|profile|peers ...]}
shift
stages=" ${*:-check bench profile peers} "
for st in $stages; do
  case $st in check | bench | profile | peers) ;; *)
    echo "gpu_check.sh: unknown stage '$st' (check, bench, profile or peers)" >&2
    exit 2
    ;;
  esac
done
want() { [[ $stages == *" $1 "* ]]; }
mkdir -p "$report"
report=$(cd "$report" && pwd)
export PATH="$PATH:/usr/local/cuda/bin"
jobs=$(nproc)
t_start=$(date +%s)
rows=()
failed=0

# record NAME STATUS DETAIL (STATUS ok, part, skip or FAIL; only FAIL fails the run)
record() {
  rows+=("$1|$2|$3")
  [ "$2" != FAIL ] || failed=1
}

elapsed() { echo $(($(date +%s) - $1)); }

# The time budget (VAE_GPU_BUDGET_S): seconds left for work, after the reserve for the summaries;
# a large number without a budget.
budget=${VAE_GPU_BUDGET_S:-}
reserve=${VAE_GPU_RESERVE_S:-30}
if [ -n "$budget" ] && ! [[ $budget =~ ^[0-9]+$ && $reserve =~ ^[0-9]+$ ]]; then
  echo "gpu_check.sh: VAE_GPU_BUDGET_S and VAE_GPU_RESERVE_S must be whole seconds" >&2
  exit 2
fi
hang=${VAE_GPU_HANG_S:-60}
if ! [[ $hang =~ ^[0-9]+$ ]] || [ "$hang" -eq 0 ]; then
  echo "gpu_check.sh: VAE_GPU_HANG_S must be a positive number of whole seconds" >&2
  exit 2
fi
fused_hung=0     # set once a run of the fused step outlived its bound
clusters_bad=0  # set once its GPU tests in thread-block clusters failed or hung: no cluster variants after
time_left() {
  if [ -n "$budget" ]; then echo $((budget - reserve - $(elapsed "$t_start"))); else echo 1000000; fi
}
# in_budget NAME: true when there is time left to start NAME; else records it as skipped.
in_budget() {
  local left
  left=$(time_left)
  [ "$left" -gt 0 ] && return 0
  record "$1" skip "the time budget (VAE_GPU_BUDGET_S=$budget) ran out"
  return 1
}
# bounded CMD...: CMD under `timeout` with the time left (as it is without a budget).
bounded() {
  [ -n "$budget" ] || { "$@"; return; }
  local left
  left=$(time_left)
  [ "$left" -gt 0 ] || return 124  # (timeout 0 would mean no limit)
  timeout --signal=TERM --kill-after=10 "$left" "$@"
}

# capped CAP CMD...: CMD bounded by the time left and by CAP seconds; sets capped_out=1 where CAP
# (not the budget) stopped it.
capped_out=0
capped() {
  local cap=$1 left rc
  shift
  capped_out=0
  left=$(time_left)
  [ "$left" -gt 0 ] || return 124
  if [ "$cap" -ge "$left" ]; then
    bounded "$@"
    return
  fi
  timeout --signal=TERM --kill-after=10 "$cap" "$@"
  rc=$?
  { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && capped_out=1
  return "$rc"
}
# fused_run CMD...: true where CMD runs the fused step (a word `fused`, as in --step fused, or --sweep).
fused_run() {
  local w
  for w in "$@"; do
    case $w in fused | --sweep) return 0 ;; esac
  done
  return 1
}

# ---- machine --------------------------------------------------------------------------------
{
  date -u
  nvidia-smi || true
  nvcc --version || true
  "${CXX:-g++}" --version | head -1 || true
  cmake --version | head -1 || true
  echo "commit ${VAE_COMMIT:-$(git rev-parse HEAD 2>/dev/null)}"
} >"$report/build.log" 2>&1
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d .)
arch=${VAE_CUDA_ARCH:-${cc:-90}}
record machine "$([ -n "$gpu" ] && echo ok || echo FAIL)" "${gpu:-no GPU found} (sm_$arch)"

# ---- carried dependencies -------------------------------------------------------------------
cmake_deps=()
if [ -d .gpu-deps/debs ]; then
  deps=/tmp/vae-gpu-deps
  rm -rf "$deps" && mkdir -p "$deps"
    for f in .gpu-deps/debs/*.deb; do
    if command -v dpkg-deb >/dev/null; then
      dpkg-deb -x "$f" "$deps"
    else  # a .deb is an ar archive holding data.tar.{xz,zst,gz}
      member=$(ar t "$f" | grep '^data.tar')
      ar p "$f" "$member" | tar -x -a -f - -C "$deps" 2>/dev/null || ar p "$f" "$member" | tar -xJ -C "$deps"
    fi
  done
  inc=$deps/usr/include
  lib=$deps/usr/lib/x86_64-linux-gnu
  # Debian's alternatives would link these; dpkg-deb -x does not.
  ln -sf openblas-pthread/cblas.h "$inc/x86_64-linux-gnu/cblas.h"
  export CPATH="$inc:$inc/x86_64-linux-gnu${CPATH:+:$CPATH}"
  export LIBRARY_PATH="$lib:$lib/openblas-pthread${LIBRARY_PATH:+:$LIBRARY_PATH}"
  export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  cmake_deps=(-DCMAKE_PREFIX_PATH="$deps/usr;$deps/usr/lib/x86_64-linux-gnu/cmake"
    -DBLAS_LIBRARIES="$lib/openblas-pthread/libopenblas.so.0")
  record deps ok "unpacked $(find .gpu-deps/debs -name "*.deb" | wc -l) packages under $deps"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d .gpu-deps/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .gpu-deps/fashion-mnist /usr/share/datasets/
fi

# ---- build ----------------------------------------------------------------------------------
t=$(date +%s)
# NCCL: the toolkit's where it has one, else the nvidia-nccl wheel of this machine's Python.
if [ -z "${NCCL_ROOT:-}" ] && [ ! -f /usr/local/cuda/include/nccl.h ]; then
  NCCL_ROOT=$(python3 -c "import nvidia.nccl as m; print(list(m.__path__)[0])" 2>/dev/null || true)
fi
[ -n "${NCCL_ROOT:-}" ] && cmake_deps+=(-DNCCL_ROOT="$NCCL_ROOT")
if cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DVAE_WITH_CUDA=ON -DVAE_CUDA_ARCHITECTURES="$arch" \
  "${cmake_deps[@]}" >>"$report/build.log" 2>&1 && bounded cmake --build build-gpu -j "$jobs" >>"$report/build.log" 2>&1; then
  record build ok "sm_$arch, $(grep -o 'MPI [A-Z]*, NCCL [A-Z]*' "$report/build.log" | head -1), $(elapsed "$t") s"
else
  record build FAIL "see build.log"
  tail -30 "$report/build.log"
fi

# ---- the whole test suite on the GPU --------------------------------------------------------
if [ -x build-gpu/host/vae ] && want check && in_budget tests; then
  t=$(date +%s)
  # The test of the JAX peer needs a JAX (it would skip, which counts as a failure here): this
  # machine's python3 where it has one, else build-peers/jax-venv if it was carried.
  if [ -z "${VAE_JAX_PYTHON:-}" ] && python3 -c "import jax" >/dev/null 2>&1; then
    VAE_JAX_PYTHON=$(command -v python3)
    export VAE_JAX_PYTHON
  fi
  # The fused step's GPU tests first, on their own and bounded: a hang there costs VAE_GPU_HANG_S
  # once (ctest stops at the first failure), and the whole suite then leaves them out.
  fused_tests='FusedStep.*/cuda'
  capped $((2 * hang)) ctest --test-dir build-gpu --output-on-failure -j 4 -R "$fused_tests" --timeout "$hang" \
    --stop-on-failure >/tmp/vae-fused-tests.log 2>&1
  frc=$?
  if [ "$capped_out" -eq 1 ] || grep -qE '\(Timeout\)' /tmp/vae-fused-tests.log; then
    fused_hung=1
    record fused FAIL "its GPU tests ran past VAE_GPU_HANG_S=$hang s (a hang?): tests.log; every later run of the fused step skipped"
  elif [ "$frc" -eq 0 ]; then
    record fused ok "$(grep -oE 'out of [0-9]+' /tmp/vae-fused-tests.log | tail -1 | grep -oE '[0-9]+') GPU tests of the fused step, $(elapsed "$t") s"
  else
    record fused FAIL "its GPU tests failed (tests.log)"
  fi
  # Then its variants in thread-block clusters, apart and bounded alike (FusedClusters, FusedClustersLaunch, and
  # the host layer's test of clusters on the GPU).
  cluster_tests='FusedClusters.*/cuda|HostExec.Clusters.*/cuda'
  excluded=()
  if [ "$fused_hung" -eq 1 ]; then
    excluded=("$fused_tests" "$cluster_tests")
  else
    t_clusters=$(date +%s)
    capped $((2 * hang)) ctest --test-dir build-gpu --output-on-failure -j 4 -R "$cluster_tests" --timeout "$hang" \
      --stop-on-failure >/tmp/vae-cluster-tests.log 2>&1
    crc=$?
    cat /tmp/vae-cluster-tests.log >>/tmp/vae-fused-tests.log
    if [ "$capped_out" -eq 1 ] || grep -qE '\(Timeout\)' /tmp/vae-cluster-tests.log; then
      clusters_bad=1
      excluded=("$cluster_tests")
      record clusters FAIL "the fused step's GPU tests in clusters ran past VAE_GPU_HANG_S=$hang s: no cluster variants"
    elif [ "$crc" -eq 0 ]; then
      record clusters ok "$(grep -oE 'out of [0-9]+' /tmp/vae-cluster-tests.log | tail -1 | grep -oE '[0-9]+') GPU tests of the fused step in clusters, $(elapsed "$t_clusters") s"
    else
      clusters_bad=1
      record clusters FAIL "the fused step's GPU tests in clusters failed (tests.log): no cluster variants"
    fi
  fi
  exclude=()
  if [ "${#excluded[@]}" -gt 0 ]; then
    joined=$(IFS='|'; echo "${excluded[*]}")
    exclude=(-E "$joined")
  fi
  bounded ctest --test-dir build-gpu --output-on-failure -j 4 --timeout "${VAE_TEST_TIMEOUT:-300}" "${exclude[@]}" \
    >"$report/tests.log" 2>&1
  rc=$?
  total=$(grep -oE 'out of [0-9]+' "$report/tests.log" | tail -1 | grep -oE '[0-9]+')
  # Every test must run, except the multi-process MPI tests on a machine without MPI.
  skip_ok='^$'
  grep -q 'vae: MPI OFF' "$report/build.log" && skip_ok=' Mpi\.'
  skipped=$(grep -E '\(Skipped\)$' "$report/tests.log" | grep -cvE "$skip_ok")
  failed_tests=$(grep -cE '\((Failed|Timeout|SEGFAULT|Child aborted|Subprocess aborted)\)' "$report/tests.log")
  if [ "$rc" -eq 124 ] && [ -n "$budget" ]; then
    record tests FAIL "cut off by the time budget after $(elapsed "$t") s (VAE_GPU_BUDGET_S=$budget)"
  elif [ "$rc" -eq 0 ] && [ "$skipped" -eq 0 ]; then
    record tests ok "${total:-?} tests, none skipped, $(elapsed "$t") s"
  else
    record tests FAIL "${total:-?} tests: $failed_tests failed, $skipped skipped (GPU tests must run)"
    grep -E '\((Failed|Skipped|Timeout)' "$report/tests.log" | head -20
  fi
  { echo; echo "== the fused step's GPU tests, run first on their own"; cat /tmp/vae-fused-tests.log; } >>"$report/tests.log"
fi

# ---- compute-sanitizer on the GPU instances of the kernel tests -----------------------------
# sanitizer_outcome RC WHAT: a line for check.log when a run did not pass.
sanitizer_outcome() {
  [ "$1" -eq 0 ] && return
  if [ "$1" -eq 124 ] && [ -n "$budget" ]; then echo "SANITIZER_CUT $2"; else echo "SANITIZER_FAILED $2"; fi
}
if [ -x build-gpu/host/vae ] && want check && in_budget sanitizer; then
  t=$(date +%s)
  san_ok=ok
  {
    for tool in memcheck racecheck; do
      for bin in test_kernels test_hostexec test_gemm; do
        echo "== compute-sanitizer --tool $tool $bin"
        filter='*cuda*'
        [ "$clusters_bad" -eq 0 ] || filter='*cuda*:-*Clusters*'  # their GPU tests failed or hung
        bounded compute-sanitizer --tool "$tool" --error-exitcode 99 "build-gpu/tests/$bin" --gtest_filter="$filter"
        sanitizer_outcome $? "$tool $bin"
      done
    done
    # The fused step kernel (cp.async stages, split-K tickets, grid barriers): one step of each tile
    # arithmetic and the launch tests, under every tool that reads shared memory and barriers.
    # Skipped after a hang; each run bounded by 4x VAE_GPU_HANG_S (the tools slow kernels down).
    # Its launch tests in clusters too (distributed shared memory), unless their GPU tests failed.
    fused_filter='*EachTileArithmetic*cuda*:*FusedStepLaunch*cuda*'
    [ "$clusters_bad" -eq 1 ] || fused_filter="$fused_filter:*FusedClustersLaunch*cuda*"
    for tool in memcheck racecheck synccheck; do
      echo "== compute-sanitizer --tool $tool test_fused_step"
      if [ "$fused_hung" -eq 1 ]; then
        echo "SANITIZER_SKIPPED $tool test_fused_step: the fused step hung earlier"
        continue
      fi
      capped $((4 * hang)) compute-sanitizer --tool "$tool" --error-exitcode 99 build-gpu/tests/test_fused_step \
        --gtest_filter="$fused_filter"
      rc=$?
      if [ "$capped_out" -eq 1 ]; then
        echo "SANITIZER_FAILED $tool test_fused_step: ran past $((4 * hang)) s (VAE_GPU_HANG_S=$hang)"
      else
        sanitizer_outcome $rc "$tool test_fused_step"
      fi
    done
  } >"$report/check.log" 2>&1
  san_detail="memcheck + racecheck on the GPU kernel and GEMM tests, + synccheck on the fused step, $(elapsed "$t") s"
  grep -q SANITIZER_FAILED "$report/check.log" && san_ok=FAIL
  if grep -q SANITIZER_SKIPPED "$report/check.log"; then
    [ "$san_ok" = FAIL ] || san_ok=part
    san_detail="$san_detail; the fused step's runs skipped (it hung in its tests)"
  fi
  if grep -q SANITIZER_CUT "$report/check.log"; then
    san_ok=FAIL
    san_detail="$san_detail; $(grep -c SANITIZER_CUT "$report/check.log") runs cut off by the time budget"
  fi
  record sanitizer "$san_ok" "$san_detail"
fi

# ---- GPU against CPU: 200 steps of the default model, same seed ----------------------------
if [ -x build-gpu/host/vae ] && want check && in_budget gpu_vs_cpu; then
  t=$(date +%s)
  {
    for dev in cuda cpu; do
      rm -rf "/tmp/vae-200-$dev"
      bounded build-gpu/host/vae train --device "$dev" --train-limit 25600 --test-limit 10000 --epochs 1 --quiet \
        --out "/tmp/vae-200-$dev" && cat "/tmp/vae-200-$dev/metrics.jsonl"
    done
  } >>"$report/check.log" 2>&1
  read -r gpu_elbo cpu_elbo < <(python3 - <<'PY' 2>>"$report/check.log"
import json
g = json.loads(open("/tmp/vae-200-cuda/metrics.jsonl").readline())
c = json.loads(open("/tmp/vae-200-cpu/metrics.jsonl").readline())
print(g["test_elbo"], c["test_elbo"])
PY
  )
  if [ -n "${gpu_elbo:-}" ] && python3 -c "import sys; sys.exit(0 if abs($gpu_elbo - $cpu_elbo) < 1.0 else 1)"; then
    record gpu_vs_cpu ok "200 steps: test ELBO GPU $gpu_elbo, CPU $cpu_elbo (tolerance 1 nat)"
  else
    record gpu_vs_cpu FAIL "200 steps: test ELBO GPU ${gpu_elbo:-?}, CPU ${cpu_elbo:-?} (tolerance 1 nat)"
  fi
fi

# ---- the fused step's training against the composed step's (issue 17's targets) -------------
# 10 epochs of the default model (batch 128, fp32) with each step: the test ELBOs within 0.2 nats;
# and the fused step twice with the same seed: the same checkpoint, byte for byte. Each fused run
# bounded by 2·VAE_GPU_HANG_S (a hang there skips the fused step's later runs, as in the tests).
if [ -x build-gpu/host/vae ] && want check && in_budget fused_elbo; then
  t=$(date +%s)
  if [ "$fused_hung" -eq 1 ]; then
    record fused_elbo skip "the fused step hung earlier"
  else
    runs_ok=1
    for run in composed fused fused-again; do
      rm -rf "/tmp/vae-10-$run"
      echo "== vae train --step ${run%-again} --epochs 10" >>"$report/check.log"
      capped $((2 * hang)) build-gpu/host/vae train --device cuda --step "${run%-again}" --epochs 10 --quiet \
        --no-tensorboard --out "/tmp/vae-10-$run" >>"$report/check.log" 2>&1 || runs_ok=0
      if [ "$capped_out" -eq 1 ] && [ "$run" != composed ]; then
        fused_hung=1
        break
      fi
    done
    if [ "$fused_hung" -eq 1 ]; then
      record fused_elbo FAIL "10 epochs of the fused step ran past $((2 * hang)) s (VAE_GPU_HANG_S=$hang): its later runs skipped"
    else
      # "ok|detail" or "FAIL|detail": the last epoch's test ELBO of each, and which step each ran.
      verdict=$(python3 - <<'PY' 2>>"$report/check.log"
import json
def last(run):
    with open(f"/tmp/vae-10-{run}/metrics.jsonl") as f:
        return json.loads([l for l in f if l.strip()][-1])
c, f = last("composed"), last("fused")
gap = f["test_elbo"] - c["test_elbo"]
ok = f["step_kernel"] == "fused" and c["step_kernel"] == "composed" and f["epoch"] == c["epoch"] == 10 and abs(gap) <= 0.2
print(f"{'ok' if ok else 'FAIL'}|10 epochs, test ELBO fused {f['test_elbo']:.3f} ({f['step_kernel']}), "
      f"composed {c['test_elbo']:.3f} ({c['step_kernel']}): {gap:+.3f} nats (target within 0.2)")
PY
      )
      [ -n "$verdict" ] || verdict="FAIL|10 epochs: no metrics of a run (check.log)"
      if cmp -s /tmp/vae-10-fused/checkpoint.safetensors /tmp/vae-10-fused-again/checkpoint.safetensors; then
        same="the same seed twice: the same checkpoint"
      else
        same="the same seed twice: checkpoints DIFFER (or missing)"
        verdict="FAIL|${verdict#*|}"
      fi
      [ "$runs_ok" -eq 1 ] || verdict="FAIL|${verdict#*|}; a run failed (check.log)"
      record fused_elbo "${verdict%%|*}" "${verdict#*|}; $same; $(elapsed "$t") s"
    fi
  fi
fi

# ---- benchmarks -------------------------------------------------------------------------------
# bench CMD...: runs one benchmark into bench.log and counts it as failed on a non-zero exit
# (bench_kernels exits 1 when a fused kernel disagrees with its unfused composition).
bench_failures=0
bench_skipped=0
bench() {
  echo "== $*"
  if [ "$(time_left)" -le 0 ]; then
    echo "BENCH_SKIPPED (the time budget ran out): $*"
    bench_skipped=$((bench_skipped + 1))
    return
  fi
  local rc cap=$hang
  if fused_run "$@"; then
    if [ "$fused_hung" -eq 1 ]; then
      echo "BENCH_SKIPPED (the fused step hung earlier): $*"
      bench_skipped=$((bench_skipped + 1))
      return
    fi
    case " $* " in *" --sweep "*) cap=$((4 * hang)) ;; esac
    capped "$cap" "$@"
    rc=$?
    if [ "$capped_out" -eq 1 ]; then
      echo "BENCH_HUNG (ran past $cap s, VAE_GPU_HANG_S=$hang; the fused step's later runs are skipped): $*"
      fused_hung=1
      bench_failures=$((bench_failures + 1))
      return
    fi
  else
    bounded "$@"
    rc=$?
  fi
  if [ "$rc" -eq 124 ] && [ -n "$budget" ]; then
    echo "BENCH_CUT (the time budget ran out): $*"
    bench_skipped=$((bench_skipped + 1))
  elif [ "$rc" -ne 0 ]; then
    echo "BENCH_FAILED ($rc): $*"
    bench_failures=$((bench_failures + 1))
  fi
}
if [ -x build-gpu/host/vae ] && want bench && in_budget bench; then
  t=$(date +%s)
  {
    # Where the fused step's time goes at batch 128 (issue 17): its phase timers and grid barriers
    # (first: a short run, bounded by VAE_GPU_HANG_S, before the sweep's long one).
    bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --phases
    # The GEMM phases meeting at row flags and counters instead of grid barriers (one left a step),
    # also before the sweep: a launch that fails there (a counter never reached traps on the GPU) or
    # hangs leaves the sweep without its row-flags variants, not without its later batches.
    failures_before=$bench_failures hung_before=$fused_hung
    bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --steps-per-launch 20 \
      --row-flags 1 --phases
    sweep_flags=1
    [ "$bench_failures" -eq "$failures_before" ] || sweep_flags=0
    if [ "$fused_hung" -ne "$hung_before" ]; then  # the row flags hung, not the fused step with barriers
      fused_hung=$hung_before
      sweep_flags=0
    fi
    # Split tiles' K slices meeting in thread-block clusters (sm_90) instead of at tickets: also before
    # the sweep, for the same reason (a cluster barrier cannot time out: a hang costs its bound once).
    sweep_clusters=0
    if [ "$clusters_bad" -eq 0 ]; then
      failures_before=$bench_failures hung_before=$fused_hung
      bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --steps-per-launch 20 \
        --cluster 4 --phases
      sweep_clusters=1
      [ "$bench_failures" -eq "$failures_before" ] || sweep_clusters=0
      if [ "$fused_hung" -ne "$hung_before" ]; then  # the clusters hung, not the fused step without them
        fused_hung=$hung_before
        sweep_clusters=0
      fi
    fi
    # Every step variant at batch 32-1024 in one process, the fastest per batch (issue 17's rule).
    bench build-gpu/bench/bench_step --device cuda --sweep --steps 320 --json 1 --sweep-flags "$sweep_flags" \
      --sweep-clusters "$sweep_clusters"
    for b in 32 512; do
      bench build-gpu/bench/bench_step --device cuda --batch "$b" --steps 300 --step fused --phases
    done
    bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --tf32 1 --phases
    # Persistent: 20 steps a launch (the launch gap between steps gone).
    bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --steps-per-launch 20 --phases
    # fp32 on the tensor cores (3xTF32) and one block per SM (half the grid), 20 steps a launch.
    bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --steps-per-launch 20 \
      --fused-math 3xtf32 --phases
    bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --steps-per-launch 20 \
      --fused-grid half --phases
    # Fewer split-K splits: a phase splits only where that saves more than 12 chunks (the tickets' cost).
    bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --steps-per-launch 20 \
      --ticket-chunks 12 --phases
    bench build-gpu/bench/bench_kernels --device cuda
    bench build-gpu/bench/bench_kernels --device cuda --cache warm --reps 500
    # The fused step (one cooperative kernel) against the composed step: the rule of `--step auto`.
    for b in 32 64 128 256 512 1024; do
      for kind in composed fused; do
        bench build-gpu/bench/bench_step --device cuda --batch "$b" --steps 300 --step "$kind" --json 1
        bench build-gpu/bench/bench_step --device cuda --batch "$b" --steps 300 --step "$kind" --tf32 1 --json 1
      done
    done
    for args in "--batch 4096" "--batch 128 --hidden 100"; do
      # shellcheck disable=SC2086 # $args is several flags
      bench build-gpu/bench/bench_step --device cuda $args --steps 300
    done
    for variant in "" "--step fused"; do
      rm -rf /tmp/vae-bench
      # shellcheck disable=SC2086
      bench build-gpu/host/vae train --device cuda --epochs 3 --quiet --out /tmp/vae-bench $variant &&
        cat /tmp/vae-bench/metrics.jsonl
    done
    # vae sweep's stack (issue 19): one step of N models at batch 128, per stacked step and per model-step.
    for m in 1 4 16 64; do
      bench build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --models "$m" --json 1
    done
    # Also the fused step at each batch, and vae sweep of 1, 4, 16 and 64 models at batch 128.
    # (without the fused step where it hung: throughput.py's runs are not bounded one by one)
    fused_flag=(--fused)
    [ "$fused_hung" -eq 0 ] || fused_flag=()
    bench python3 bench/throughput.py --device cuda --build build-gpu "${fused_flag[@]}" --models 1,4,16,64 \
      --out /tmp/vae-throughput
  } >"$report/bench.log" 2>&1
  bench_status=ok
  [ "$bench_skipped" -eq 0 ] || bench_status=part
  [ "$bench_failures" -eq 0 ] || bench_status=FAIL
  record bench "$bench_status" \
    "bench.log: $bench_failures failed, $bench_skipped cut or skipped, $(elapsed "$t") s"
  if grep -q '^BENCH_HUNG' "$report/bench.log"; then
    record fused_hang FAIL "a benchmark run of the fused step ran past its bound (bench.log: BENCH_HUNG); its later runs skipped"
  fi
fi

# ---- profile: per-kernel GPU times of one training step ---------------------------------------
# ncu's gpu__time_duration.sum of every kernel of a --no-graph run of 6 steps (one epoch of 6B
# images), unlocked clocks; bench/ncu_profile.py cuts it into steps at the optimizer's kernel and
# sums the steps after the first by kernel. Raw CSVs and tables go into profile.log.
if [ -x build-gpu/host/vae ] && want profile && in_budget profile; then
  t=$(date +%s)
  prof_ok=ok
  : >"$report/profile.log"
  for b in 128 4096; do
    rm -rf "/tmp/vae-profile-$b"
    csv="/tmp/vae-profile-$b.csv"
    if bounded ncu --clock-control none --cache-control none --csv --print-units base \
      --metrics gpu__time_duration.sum,device__attribute_multiprocessor_count \
      build-gpu/host/vae train --device cuda --no-graph --batch-size "$b" --train-limit $((6 * b)) --test-limit 64 \
      --epochs 1 --quiet --out "/tmp/vae-profile-$b" >"$csv" 2>&1 &&
      python3 bench/ncu_profile.py --batch "$b" "$csv" >"/tmp/vae-profile-$b.md"; then
      cat "/tmp/vae-profile-$b.md" >>"$report/profile.log"
    else
      prof_ok=FAIL
      echo "profile at batch $b failed" >>"$report/profile.log"
    fi
    { echo; echo "== raw ncu CSV, batch $b"; cat "$csv"; echo; } >>"$report/profile.log"
  done
  record profile "$prof_ok" "profile.log, $(elapsed "$t") s"
fi

# ---- peers: PyTorch eager, torch.compile, JAX on this card ------------------------------------
if [ -x build-gpu/host/vae ] && want peers && in_budget peers; then
  t=$(date +%s)
  prc=0
  : >"$report/peers.log"
  # Batch 128: 3 epochs (2 timed); batch 4096 takes ~10-30 ms an epoch: 10 epochs (9 timed).
  # torch.compile only at batch 128: its compile time alone overran the stage at 4096 (2026-11-26).
  # At batch 128 also JAX's vmap of 16 models (the peer of vae sweep --models 16).
  for run in "128 3 none 16" "4096 10 torch-compile 0"; do
    read -r b epochs skip vmap <<<"$run"
    rm -rf "/tmp/vae-peers-$b"
    [ "$(time_left)" -gt 0 ] || { echo "peers at batch $b skipped: the time budget ran out" >>"$report/peers.log"; continue; }
    bounded python3 bench/peers/compare.py --device cuda --build build-gpu --epochs "$epochs" --rounds 1 --batch-size "$b" \
      --skip "$skip" --vmap-models "$vmap" --out "/tmp/vae-peers-$b" >>"$report/peers.log" 2>&1 || prc=1
    cat "/tmp/vae-peers-$b/runs.log" >>"$report/peers.log" 2>/dev/null
  done
  record peers "$([ $prc -eq 0 ] && echo ok || echo FAIL)" "peers.log, $(elapsed "$t") s"
fi

# ---- summary (last) -------------------------------------------------------------------------
{
  echo "gpu_check on ${gpu:-?}, commit ${VAE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo ?)}, $(date -u +%F), $(elapsed "$t_start") s"
  printf '%-12s %-6s %s\n' step status detail
  for r in "${rows[@]}"; do
    IFS='|' read -r name status detail <<<"$r"
    printf '%-12s %-6s %s\n' "$name" "$status" "$detail"
  done
  [ -f "$report/bench.log" ] && sed -n '/^throughput.py/,$p' "$report/bench.log"
  # What the sweep makes of --step auto's rule (the table itself is written where the log comes back:
  # bench/step_rule.py --log bench.log --date D --commit C updates host/step_rule_table.inc).
  if [ -f "$report/bench.log" ] && grep -q '"variant"' "$report/bench.log"; then
    echo
    echo "step rule from the sweep (bench/step_rule.py):"
    cp host/step_rule_table.inc /tmp/vae-step-rule.inc &&
      python3 bench/step_rule.py --log "$report/bench.log" --date "$(date -u +%F)" --commit "${VAE_COMMIT:-?}" \
        --table /tmp/vae-step-rule.inc 2>&1
  fi
  # Where the fused step's time goes at batch 128: the sync points of the bench stage's first run.
  if [ -f "$report/bench.log" ] && grep -q '^sync points' "$report/bench.log"; then
    echo
    echo "fused step, batch 128 (the bench stage's first run):"
    sed -n '/^sync points/,/^timer:/p;/^timer:/q' "$report/bench.log"
  fi
  for b in 128 4096; do
    want profile && [ -f "/tmp/vae-profile-$b.md" ] && { echo; cat "/tmp/vae-profile-$b.md"; }
  done
  for b in 128 4096; do
    [ -f "/tmp/vae-peers-$b/table.md" ] && want peers && { echo; cat "/tmp/vae-peers-$b/table.md"; }
  done
} | tee "$report/summary.txt"
# The same figures for the team's records (bench/results/<date>-<card>/summary.json): every measured
# configuration's seconds per epoch, from throughput.py's and compare.py's results.json.
results=()
for f in /tmp/vae-throughput/results.json /tmp/vae-peers-128/results.json /tmp/vae-peers-4096/results.json; do
  [ -f "$f" ] && results+=("$f")
done
python3 bench/summary_json.py --card "${gpu:-unknown}" --commit "${VAE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}" \
  --out "$report/summary.json" "${results[@]}" || failed=1
exit $failed
