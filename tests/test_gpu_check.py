#!/usr/bin/env python3
"""bench/gpu_check.sh's time budget (VAE_GPU_BUDGET_S) and its guard against a fused step that
hangs (VAE_GPU_HANG_S), without a GPU: the script runs in a copy of its folder with stand-ins for
nvidia-smi, cmake (which makes stand-in programs), ctest and compute-sanitizer on PATH. A device
call has a hard limit; the budget must cut what would overrun it and still leave both summaries.
The stand-in sanitizer sleeps far past the budget, so the run must cut it and skip every stage
after it; a script that ignored the budget would run for minutes (the test's timeout fails it).
Where the fused step's stand-in tests or benchmark runs hang instead, the run must stop the first
of them at its bound, skip the fused step's later runs and go on with the composed step's."""

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

STUBS = {
    "nvidia-smi": """#!/bin/sh
case "$*" in
  *name*) echo "NVIDIA Stand-in GPU" ;;
  *compute_cap*) echo "9.0" ;;
  *) echo "stand-in nvidia-smi" ;;
esac
""",
    # Configuring makes the programs the stages look for (each exits 0 at once, bench_step as
    # $BENCH_STEP_STUB says); building does nothing.
    "cmake": """#!/bin/sh
case " $* " in
  *" --build "*|*" --version "*) exit 0 ;;
esac
mkdir -p build-gpu/host build-gpu/bench build-gpu/tests
for f in host/vae bench/bench_kernels tests/test_kernels tests/test_hostexec tests/test_gemm tests/test_fused_step; do
  printf '#!/bin/sh\\nexit 0\\n' >"build-gpu/$f" && chmod +x "build-gpu/$f"
done
[ -z "${VAE_STUB:-}" ] || printf '#!/bin/sh\\n%s\\nexit 0\\n' "$VAE_STUB" >build-gpu/host/vae
printf '#!/bin/sh\\n%s\\nexit 0\\n' "${BENCH_STEP_STUB:-}" >build-gpu/bench/bench_step
chmod +x build-gpu/bench/bench_step
echo "vae: MPI OFF, NCCL OFF"
""",
    "ctest": """#!/bin/sh
echo "100% tests passed, 0 tests failed out of 3"
""",
    "compute-sanitizer": """#!/bin/sh
exec sleep 300
""",
}


class GpuCheckBudget(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="vae-gpu-check-")
        os.makedirs(os.path.join(self.dir, "repo", "bench"))
        for f in ("gpu_check.sh", "summary_json.py", "step_rule.py"):
            shutil.copy(os.path.join(ROOT, "bench", f), os.path.join(self.dir, "repo", "bench", f))
        os.makedirs(os.path.join(self.dir, "repo", "host"))
        shutil.copy(os.path.join(ROOT, "host", "step_rule_table.inc"), os.path.join(self.dir, "repo", "host"))
        self.bin = os.path.join(self.dir, "bin")
        os.makedirs(self.bin)
        for name, text in STUBS.items():
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
        self.report = os.path.join(self.dir, "report")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def stub(self, name, text):
        with open(os.path.join(self.bin, name), "w") as f:
            f.write(text)

    def run_check(self, budget, reserve="1", **extra):
        env = dict(os.environ, PATH=self.bin + os.pathsep + os.environ["PATH"], VAE_GPU_BUDGET_S=budget,
                   VAE_GPU_RESERVE_S=reserve, VAE_COMMIT="0123abc", **extra)
        env.pop("NCCL_ROOT", None)
        start = time.monotonic()
        p = subprocess.run(["bash", os.path.join(self.dir, "repo", "bench", "gpu_check.sh"), self.report],
                           cwd=self.dir, env=env, capture_output=True, text=True, timeout=120)
        return p, time.monotonic() - start

    def test_cuts_what_overruns_and_still_writes_both_summaries(self):
        p, seconds = self.run_check("8")
        self.assertLess(seconds, 60, p.stdout + p.stderr)  # the sanitizer alone would sleep 300 s
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)  # the cut sanitizer run is no pass
        with open(os.path.join(self.report, "summary.txt")) as f:
            rows = {line.split()[0]: line.split(None, 2)[1:] for line in f if line.strip()}
        self.assertEqual(rows["machine"][0], "ok")
        self.assertEqual(rows["build"][0], "ok")
        self.assertEqual(rows["tests"][0], "ok")
        self.assertEqual(rows["sanitizer"][0], "FAIL")
        self.assertIn("cut off by the time budget", rows["sanitizer"][1])
        for stage in ("gpu_vs_cpu", "fused_elbo", "bench", "profile", "peers"):
            self.assertEqual(rows[stage][0], "skip", stage)
            self.assertIn("VAE_GPU_BUDGET_S=8", rows[stage][1])
        with open(os.path.join(self.report, "summary.json")) as f:
            summary = json.load(f)
        self.assertEqual(summary["card"], "NVIDIA Stand-in GPU")
        self.assertEqual(summary["commit"], "0123abc")
        self.assertEqual(summary["runs"], [])

    def summary_rows(self):
        with open(os.path.join(self.report, "summary.txt")) as f:
            return {line.split()[0]: line.split(None, 2)[1:] for line in f if line.strip()}

    def bench_log(self):
        with open(os.path.join(self.report, "bench.log")) as f:
            return f.read()

    def test_a_fused_step_that_hangs_in_its_tests_is_left_out_after_one_bound(self):
        # Its GPU tests (run first, alone: ctest -R) hang; the whole suite passes without them.
        self.stub("ctest", """#!/bin/sh
case " $* " in *" -R "*) exec sleep 300 ;; esac
echo "100% tests passed, 0 tests failed out of 3"
""")
        self.stub("compute-sanitizer", "#!/bin/sh\nexit 0\n")
        p, seconds = self.run_check("300", VAE_GPU_HANG_S="2")
        self.assertLess(seconds, 60, p.stdout + p.stderr)
        rows = self.summary_rows()
        self.assertEqual(rows["fused"][0], "FAIL", rows)
        self.assertIn("VAE_GPU_HANG_S=2", rows["fused"][1])
        self.assertEqual(rows["fused_elbo"], ["skip", "the fused step hung earlier\n"], rows)
        self.assertEqual(rows["tests"][0], "ok", rows)
        self.assertEqual(rows["sanitizer"][0], "part", rows)
        log = self.bench_log()
        self.assertIn("BENCH_SKIPPED (the fused step hung earlier): build-gpu/bench/bench_step --device cuda --sweep", log)
        self.assertIn("BENCH_SKIPPED (the fused step hung earlier): build-gpu/host/vae train", log)
        self.assertNotIn("BENCH_SKIPPED (the fused step hung earlier): build-gpu/bench/bench_step --device cuda --batch 128 "
                         "--steps 300 --step composed", log)
        self.assertIn("== python3 bench/throughput.py --device cuda --build build-gpu --models", log)  # no --fused

    def test_a_fused_step_that_hangs_in_a_benchmark_is_stopped_and_skipped_after(self):
        # Its tests pass; the first benchmark run of it hangs.
        self.stub("compute-sanitizer", "#!/bin/sh\nexit 0\n")
        p, seconds = self.run_check("300", VAE_GPU_HANG_S="2",
                                    BENCH_STEP_STUB='case " $* " in *" fused "*|*" --sweep "*) exec sleep 300 ;; esac')
        self.assertLess(seconds, 60, p.stdout + p.stderr)
        rows = self.summary_rows()
        self.assertEqual(rows["tests"][0], "ok", rows)
        self.assertEqual(rows["sanitizer"][0], "ok", rows)
        self.assertEqual(rows["fused"][0], "ok", rows)  # its tests passed
        self.assertEqual(rows["fused_hang"][0], "FAIL", rows)
        self.assertIn("BENCH_HUNG", rows["fused_hang"][1])
        self.assertEqual(rows["bench"][0], "FAIL", rows)
        log = self.bench_log()
        self.assertEqual(log.count("BENCH_HUNG"), 1, log)
        self.assertIn("BENCH_HUNG (ran past 2 s, VAE_GPU_HANG_S=2; the fused step's later runs are skipped): "
                      "build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step fused --phases", log)
        self.assertIn("BENCH_SKIPPED (the fused step hung earlier): build-gpu/bench/bench_step --device cuda --sweep", log)
        composed = "== build-gpu/bench/bench_step --device cuda --batch 128 --steps 300 --step composed --json 1\n"
        self.assertIn(composed, log)
        after = log.split(composed, 1)[1].splitlines()[0] if log.split(composed, 1)[1] else ""
        self.assertFalse(after.startswith("BENCH_"), after)  # the composed step's run ran and passed

    def test_the_summary_says_what_the_sweep_makes_of_the_step_rule(self):
        # The stand-in sweep prints JSON rows as bench_step --sweep --json 1 does: at batch 128 the fused
        # step 1.5x the composed, at 512 slower.
        sweep = os.path.join(self.dir, "sweep.txt")
        with open(sweep, "w") as f:
            for batch, step, us in ((128, "composed", 150.0), (128, "fused", 100.0), (512, "composed", 200.0),
                                    (512, "fused", 300.0)):
                f.write(json.dumps({"device": "NVIDIA Stand-in GPU (sm_90)", "batch": batch, "variant": step,
                                    "step": step, "precision": "fp32", "models": 1, "fused_math": "ffma",
                                    "half_grid": False, "step_us": us}) + "\n")
        self.stub("compute-sanitizer", "#!/bin/sh\nexit 0\n")
        table = os.path.join(self.dir, "repo", "host", "step_rule_table.inc")
        with open(table) as f:
            before = f.read()
        p, _ = self.run_check("300", SWEEP_ROWS=sweep, BENCH_STEP_STUB='case " $* " in *" --sweep "*) cat "$SWEEP_ROWS" ;; esac')
        with open(os.path.join(self.report, "summary.txt")) as f:
            summary = f.read()
        self.assertIn("step rule from the sweep (bench/step_rule.py):", summary, p.stdout + p.stderr)
        self.assertIn("NVIDIA Stand-in GPU fp32 batch 128: fused ffma (fused 100.0 us, composed 150.0 us)", summary)
        self.assertIn("NVIDIA Stand-in GPU fp32 batch 512: composed (fused 300.0 us, composed 200.0 us)", summary)
        with open(table) as f:
            self.assertEqual(f.read(), before)  # the tree's table is written where the log comes back, not here

    def test_the_summary_shows_the_sync_points_of_the_first_fused_run(self):
        # Each stand-in run with --phases prints a sync-point table of its own batch; the summary shows
        # the first run's (batch 128) and nothing of the later ones.
        self.stub("compute-sanitizer", "#!/bin/sh\nexit 0\n")
        stub = ('case " $* " in *" --phases "*) b=$(echo "$*" | sed "s/.*--batch \\([0-9]*\\).*/\\1/"); '
                'printf "sync points (us)\\nencoder 1 at batch %s\\ntimer: 30 ns\\n" "$b" ;; esac')
        p, _ = self.run_check("300", BENCH_STEP_STUB=stub)
        with open(os.path.join(self.report, "summary.txt")) as f:
            summary = f.read()
        self.assertIn("fused step, batch 128 (the bench stage's first run):\nsync points (us)\nencoder 1 at batch 128\n"
                      "timer: 30 ns\n", summary, p.stdout + p.stderr)
        self.assertNotIn("at batch 32", summary)
        self.assertNotIn("at batch 512", summary)

    def test_the_fused_steps_ten_epochs_against_the_composed_steps(self):
        # The stand-in vae train writes, for --epochs 10, the last epoch's metrics (test ELBO -250 composed,
        # $FUSED_ELBO fused) and a checkpoint (the same bytes each run, or with $VARY its process id).
        self.stub("compute-sanitizer", "#!/bin/sh\nexit 0\n")
        vae = ('out=""; step=""; prev=""; for a in "$@"; do case $prev in --out) out=$a ;; --step) step=$a ;; esac; '
               'prev=$a; done; case " $* " in *" --epochs 10 "*) mkdir -p "$out"; elbo=-250.0; '
               '[ "$step" = fused ] && elbo=$FUSED_ELBO; '
               'echo "{\\"epoch\\": 10, \\"test_elbo\\": $elbo, \\"step_kernel\\": \\"$step\\"}" >"$out/metrics.jsonl"; '
               'echo "weights ${VARY:+$$}" >"$out/checkpoint.safetensors" ;; esac')
        for fused, vary, status, words in (("-250.15", "", "ok", "-0.150 nats"), ("-250.3", "", "FAIL", "-0.300 nats"),
                                           ("-249.9", "1", "FAIL", "checkpoints DIFFER")):
            p, _ = self.run_check("300", VAE_STUB=vae, FUSED_ELBO=fused, VARY=vary)
            row = self.summary_rows()["fused_elbo"]
            self.assertEqual(row[0], status, (fused, vary, row, p.stdout + p.stderr))
            self.assertIn(words, row[1])
            self.assertIn("test ELBO fused %.3f (fused), composed -250.000 (composed)" % float(fused), row[1])
            shutil.rmtree(self.report)

    def test_a_hang_bound_that_is_not_a_positive_whole_number_is_refused(self):
        for bad in ("0", "1.5", "x"):
            p, _ = self.run_check("300", VAE_GPU_HANG_S=bad)
            self.assertEqual(p.returncode, 2, bad)
            self.assertIn("VAE_GPU_HANG_S", p.stderr)

    def test_a_budget_that_is_not_whole_seconds_is_refused(self):
        for bad in ("5m", "-3", "1.5"):
            p, _ = self.run_check(bad)
            self.assertEqual(p.returncode, 2, bad)
            self.assertIn("VAE_GPU_BUDGET_S", p.stderr)
            self.assertFalse(os.path.exists(os.path.join(self.report, "summary.txt")))


if __name__ == "__main__":
    unittest.main()
