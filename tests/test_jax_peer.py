#!/usr/bin/env python3
"""The JAX peer of the benchmarks (bench/peers/jax_vae.py) on the CPU, on a slice of
Fashion-MNIST: the epoch scanned in one jitted lax.scan trains the same model as one dispatch
per step (same seed, same order, same noise: the same test ELBO up to float reassociation), and
both improve the ELBO. Runs with the JAX of build-peers/jax-venv (bench/peers/jax_venv.sh makes
it; cmake/test.sh runs that) or of $VAE_JAX_PYTHON; exits 77 (skipped) where there is none."""

import json
import math
import os
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(ROOT, "bench", "peers", "jax_vae.py")
PYTHON = os.environ.get("VAE_JAX_PYTHON") or os.path.join(ROOT, "build-peers", "jax-venv", "bin", "python")


def run(mode, *extra):
    # 1000 images at batch 128: 7 full batches in the scan, then a partial batch of 104.
    cmd = [PYTHON, PEER, "--device", "cpu", "--mode", mode, "--epochs", "2", "--train-limit", "1000",
           "--test-limit", "300", "--seed", "3", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-2000:]}")
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


class JaxPeer(unittest.TestCase):
    def test_scan_trains_as_the_step_does(self):
        step, scan = run("step"), run("scan")
        self.assertEqual([m["epoch"] for m in step], [1, 2])
        self.assertEqual([m["epoch"] for m in scan], [1, 2])
        self.assertEqual(scan[0]["peer"], "jax-scan")
        for a, b in zip(step, scan):
            self.assertTrue(math.isfinite(a["test_elbo"]) and a["test_elbo"] < 0)
            self.assertAlmostEqual(a["test_elbo"], b["test_elbo"], delta=0.05)
        self.assertGreater(scan[1]["test_elbo"], scan[0]["test_elbo"])

    def test_vmap_trains_each_model_as_the_scan_does(self):
        # Model 0 of the vmapped models is seeded as the lone scan with the same seed: the same
        # initialisation, order and noise, so the same test ELBO up to float reassociation.
        scan, vmap = run("scan"), run("vmap", "--models", "3")
        self.assertEqual([m["epoch"] for m in vmap], [1, 2])
        self.assertEqual(vmap[0]["peer"], "jax-vmap")
        self.assertEqual(vmap[0]["models"], 3)
        for a, b in zip(scan, vmap):
            self.assertAlmostEqual(a["test_elbo"], b["test_elbo"], delta=0.05)
        self.assertGreater(vmap[1]["test_elbo_median"], vmap[0]["test_elbo_median"])


if __name__ == "__main__":
    if not os.access(PYTHON, os.X_OK):
        print(f"skipped: no JAX Python at {PYTHON} (bench/peers/jax_venv.sh installs one)")
        sys.exit(77)
    unittest.main()
