#!/usr/bin/env python3
"""bench/summary_json.py on the results.json files of throughput.py and compare.py as they write
them (written out here): one entry per measured configuration in the form the fused-step issue
gives, seconds per epoch the median of the epochs after the first, failed configurations left out."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "bench", "summary_json.py")

THROUGHPUT = {"device": "cuda", "epochs": 3, "runs": [
    {"trainer": "vae", "step": "composed", "batch": 128, "precision": "fp32", "models": 1, "cuda_graph": True,
     "seconds_per_epoch": 0.059, "test_elbo": -250.0},
    {"trainer": "vae", "step": "fused", "batch": 128, "precision": "tf32", "models": 1, "cuda_graph": True,
     "seconds_per_epoch": 0.031, "test_elbo": -250.1},
    {"trainer": "vae", "step": "sweep", "batch": 128, "precision": "fp32", "models": 16, "seconds_per_epoch": 0.4}]}

COMPARE = {"args": {"batch_size": 128, "epochs": 3}, "floor": None, "runs": [
    {"impl": "jax scan", "label": "XLA GPU, the epoch in one lax.scan, fp32", "precision": "fp32", "failure": None,
     "epochs": [{"epoch": 1, "epoch_seconds": 3.0}, {"epoch": 2, "epoch_seconds": 0.041},
                {"epoch": 3, "epoch_seconds": 0.039}]},
    {"impl": "jax vmap", "label": "XLA GPU, 16 models vmapped, fp32", "precision": "fp32", "failure": None,
     "epochs": [{"epoch": 1, "epoch_seconds": 5.0, "models": 16}, {"epoch": 2, "epoch_seconds": 0.3, "models": 16}]},
    {"impl": "vae", "label": "CUDA graph, fp32", "precision": "fp32", "failure": None,
     "epochs": [{"epoch": 1, "epoch_seconds": 0.2, "step_kernel": "composed"},
                {"epoch": 2, "epoch_seconds": 0.06, "step_kernel": "composed"}]},
    {"impl": "torch.compile", "label": "reduce-overhead", "precision": "fp32", "failure": "exit 1: oom", "epochs": []}]}


class SummaryJson(unittest.TestCase):
    def test_every_measured_configuration_in_the_issues_form(self):
        with tempfile.TemporaryDirectory() as d:
            paths = []
            for name, content in (("throughput.json", THROUGHPUT), ("compare.json", COMPARE)):
                paths.append(os.path.join(d, name))
                with open(paths[-1], "w") as f:
                    json.dump(content, f)
            out = os.path.join(d, "summary.json")
            subprocess.run([sys.executable, TOOL, "--card", "NVIDIA H200", "--commit", "a" * 40, "--date",
                            "2026-12-06", "--out", out] + paths + [os.path.join(d, "missing.json")], check=True,
                           capture_output=True)
            with open(out) as f:
                s = json.load(f)
        self.assertEqual((s["card"], s["date"], s["commit"]), ("NVIDIA H200", "2026-12-06", "a" * 40))
        runs = {(r["trainer"], r["step"], r["precision"], r["models"]): r for r in s["runs"]}
        self.assertEqual(len(s["runs"]), 6)  # the failed torch.compile left out
        for r in s["runs"]:
            self.assertEqual(set(r) >= {"trainer", "step", "batch", "precision", "models", "seconds_per_epoch"}, True)
            self.assertEqual(r["batch"], 128)
        self.assertEqual(runs[("vae", "fused", "tf32", 1)]["seconds_per_epoch"], 0.031)
        self.assertEqual(runs[("vae", "sweep", "fp32", 16)]["seconds_per_epoch"], 0.4)
        self.assertAlmostEqual(runs[("jax-scan", None, "fp32", 1)]["seconds_per_epoch"], 0.040)  # epochs 2, 3
        self.assertEqual(runs[("jax-vmap", None, "fp32", 16)]["seconds_per_epoch"], 0.3)
        # vae's composed fp32 step measured twice (throughput.py's 0.059, compare.py's epoch 2): both kept.
        self.assertEqual(sorted(r["seconds_per_epoch"] for r in s["runs"]
                                if (r["trainer"], r["step"], r["precision"]) == ("vae", "composed", "fp32")),
                         [0.059, 0.06])


if __name__ == "__main__":
    unittest.main()
