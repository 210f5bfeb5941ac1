#!/usr/bin/env python3
"""The Python benchmark drivers under a time limit (gpu_check.sh's budget sends SIGTERM): what was
measured before the signal is written to table.md and results.json, the run in flight is killed,
and the configurations not measured are marked. Stand-ins for `vae` (it writes its epochs at once)
and for the peers' Python and bench_step (they sleep far past the test)."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# `vae train ... --epochs E ... --out DIR`: DIR/metrics.jsonl with E epochs, at once; any other
# batch size than 128 sleeps (throughput.py's second batch is cut there).
VAE = """#!/usr/bin/env python3
import json, os, sys, time
a = sys.argv
epochs = int(a[a.index("--epochs") + 1]) if "--epochs" in a else 1
batch = int(a[a.index("--batch-size") + 1]) if "--batch-size" in a else 128
if batch != 128:
    time.sleep(300)
out = a[a.index("--out") + 1]
os.makedirs(out)
with open(os.path.join(out, "metrics.jsonl"), "w") as f:
    for e in range(1, epochs + 1):
        f.write(json.dumps({"epoch": e, "epoch_seconds": 0.5 + 0.01 * e, "samples_per_second": 1000.0,
                            "test_elbo": -250.0 - e, "step_kernel": "composed", "cuda_graph": False}) + "\\n")
"""
SLEEPER = """#!/bin/sh
case "$1" in -c) exit 1 ;; esac
exec sleep 300
"""


def write_exe(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


class CutByATimeLimit(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="vae-bench-cut-")
        self.build = os.path.join(self.dir, "build")
        write_exe(os.path.join(self.build, "host", "vae"), VAE)
        write_exe(os.path.join(self.build, "bench", "bench_step"), SLEEPER)
        self.sleeper = os.path.join(self.dir, "sleeper")
        write_exe(self.sleeper, SLEEPER)
        self.out = os.path.join(self.dir, "out")

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def run_and_cut(self, argv, after_s):
        """Runs argv, sends SIGTERM once its stand-ins have started sleeping; returns its exit code
        and the seconds from the signal to its end."""
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, VAE_COMMIT="0123abc", VAE_CUT_TEST=self.dir))
        time.sleep(after_s)
        if p.poll() is not None:
            self.fail("ended before the signal: " + p.communicate()[1])
        p.send_signal(signal.SIGTERM)
        t = time.monotonic()
        _, err = p.communicate(timeout=60)
        return p.returncode, time.monotonic() - t, err

    def sleepers_left(self):
        """The stand-ins of this test still running (they inherit VAE_CUT_TEST)."""
        left = []
        for pid in subprocess.run(["pgrep", "sleep"], capture_output=True, text=True).stdout.split():
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"VAE_CUT_TEST={self.dir}".encode() in f.read().split(b"\0"):
                        left.append(pid)
            except OSError:
                pass
        return left

    def test_compare_keeps_the_runs_before_the_signal(self):
        rc, seconds, err = self.run_and_cut(
            [sys.executable, os.path.join(ROOT, "bench", "peers", "compare.py"), "--device", "cuda", "--build",
             self.build, "--python", self.sleeper, "--epochs", "3", "--rounds", "1", "--out", self.out], 4)
        self.assertEqual(rc, 1, err)
        self.assertLess(seconds, 15, err)
        with open(os.path.join(self.out, "results.json")) as f:
            runs = {(r["impl"], r["label"]): r for r in json.load(f)["runs"]}
        # Ours ran (three configurations, 3 epochs each); the peer in flight and the rest are cut.
        ours = [r for (impl, _), r in runs.items() if impl == "vae"]
        self.assertEqual(len(ours), 3)
        for r in ours:
            self.assertIsNone(r["failure"])
            self.assertEqual([m["epoch"] for m in r["epochs"]], [1, 2, 3])
        peers = [r for (impl, _), r in runs.items() if impl != "vae"]
        self.assertTrue(peers)
        for r in peers:
            self.assertEqual(r["epochs"], [])
            self.assertIn("cut by signal", r["failure"] or "")
        with open(os.path.join(self.out, "table.md")) as f:
            table = f.read()
        self.assertIn("CUDA graph, fp32", table)
        self.assertIn("cut by signal", table)
        self.assertEqual(self.sleepers_left(), [])

    def test_throughput_keeps_the_batches_before_the_signal(self):
        rc, seconds, err = self.run_and_cut(
            [sys.executable, os.path.join(ROOT, "bench", "throughput.py"), "--device", "cpu", "--build", self.build,
             "--batches", "128,4096", "--epochs", "2", "--out", self.out], 4)
        self.assertEqual(rc, 1, err)
        self.assertLess(seconds, 15, err)
        with open(os.path.join(self.out, "results.json")) as f:
            runs = json.load(f)["runs"]
        # Batch 128's training run is in; bench_step (a sleeper) was in flight when the signal came.
        self.assertEqual([(r["batch"], r["step"], r["precision"]) for r in runs], [(128, "composed", "fp32")])
        self.assertAlmostEqual(runs[0]["seconds_per_epoch"], 0.52)
        with open(os.path.join(self.out, "table.md")) as f:
            self.assertIn("cut by signal", f.read())
        self.assertEqual(self.sleepers_left(), [])


if __name__ == "__main__":
    unittest.main()
