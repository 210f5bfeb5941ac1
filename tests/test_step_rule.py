#!/usr/bin/env python3
"""bench/step_rule.py on a sweep log as gpu_check.sh's bench.log holds it (written out here): per card,
precision and batch the fused step's fastest variant only where it beat the composed step by the
margin; the cards it measured replace their entries, other cards' stay; the table compiles as
host/step_rule.cpp includes it; a log without a sweep leaves the table unchanged (exit 1)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "bench", "step_rule.py")
DEVICE = "NVIDIA H100 80GB HBM3 (sm_90)"


def row(batch, variant, step, us, precision="fp32", math="ffma", half=False, models=1, ticket=0, flags=False,
        cluster=1):
    return json.dumps({"device": DEVICE, "batch": batch, "variant": variant, "step": step, "steps_per_launch": 16,
                       "precision": precision, "models": models, "fused_math": math, "fused_grid": 66 if half else 132,
                       "half_grid": half, "ticket_chunks": ticket, "row_flags": flags, "cluster": cluster, "step_us": us, "epoch_s": 60000 / batch * us / 1e6})


LOG = "\n".join([
    "== build-gpu/bench/bench_step --device cuda --sweep --steps 320 --json 1",
    "bench_step --sweep: 784-400-20, Adam, 320 steps a variant (x16: in launches of 16 steps)",
    "   128  composed                     100.00       0.0469",
    row(32, "composed", "composed", 100.0), row(32, "fused", "fused", 91.0),  # 1.099x: under 10 %
    row(32, "fused x16", "fused", 92.0),
    row(128, "composed", "composed", 110.0), row(128, "fused", "fused", 120.0),
    row(128, "fused x16", "fused", 100.0),  # exactly 1.10x: fused
    row(128, "fused x16 3xtf32", "fused", 101.0, math="3xtf32"),
    row(128, "stack", "composed", 10.0, models=4),  # a stack of models: not a candidate
    row(512, "composed", "composed", 300.0), row(512, "fused x16 3xtf32", "fused", 150.0, math="3xtf32"),
    row(512, "fused x16 half", "fused", 140.0, half=True),
    row(512, "fused x16 flags", "fused", 139.0, flags=True),
    row(512, "fused x16 cluster 4", "fused", 141.0, cluster=4),
    row(1024, "composed", "composed", 500.0),  # the sweep cut before this batch's fused runs
    row(2048, "composed", "composed", 900.0),
    row(2048, "fused x16 flags cluster 4", "fused", 400.0, flags=True, cluster=4),
    row(128, "composed tf32", "composed", 90.0, precision="tf32", math="tf32"),
    row(128, "fused x16 tf32", "fused", 40.0, precision="tf32", math="tf32"),
    row(128, "fused x16 tf32 ticket 12", "fused", 35.0, precision="tf32", math="tf32", ticket=12),
    row(128, "fused x16 tf32 ticket 4", "fused", 38.0, precision="tf32", math="tf32", ticket=4),
    "{not json", "   512  fastest: fused x16 half (140.00 us/step)",
])

OTHER = ('{"NVIDIA H200", "fp32", 128, "fused", "3xtf32", false, 8, true, 1, 150.00, 199.00, "2026-11-26", "ae0a79c"},\n'
         '{"NVIDIA H100 80GB HBM3", "fp32", 64, "fused", "ffma", false, 0, false, 1, 1.00, 9.00, "2026-01-01", "0000000"},\n')


class StepRule(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.table = os.path.join(self.dir, "step_rule_table.inc")
        with open(self.table, "w") as f:
            f.write("// source: NVIDIA H200: an earlier run\n// source: NVIDIA H100 80GB HBM3: an old one\n" + OTHER)
        self.log = os.path.join(self.dir, "bench.log")
        with open(self.log, "w") as f:
            f.write(LOG + "\n")

    def tearDown(self):
        shutil.rmtree(self.dir)

    def run_tool(self, *extra):
        return subprocess.run([sys.executable, TOOL, "--log", self.log, "--date", "2026-12-08", "--commit", "abc1234",
                               "--table", self.table, *extra], capture_output=True, text=True)

    def entries(self):
        with open(self.table) as f:
            return [line.strip() for line in f if line.startswith("{")], f.name

    def test_fastest_fused_variant_only_past_the_margin(self):
        r = self.run_tool()
        self.assertEqual(r.returncode, 0, r.stderr)
        lines, _ = self.entries()
        h100 = [x for x in lines if x.startswith('{"NVIDIA H100 80GB HBM3"')]
        self.assertEqual(h100, [
            '{"NVIDIA H100 80GB HBM3", "fp32", 32, "composed", "", false, 0, false, 1, 91.00, 100.00, "2026-12-08", "abc1234"},',
            '{"NVIDIA H100 80GB HBM3", "fp32", 128, "fused", "ffma", false, 0, false, 1, 100.00, 110.00, "2026-12-08", "abc1234"},',
            '{"NVIDIA H100 80GB HBM3", "fp32", 512, "fused", "ffma", false, 0, true, 1, 139.00, 300.00, "2026-12-08", "abc1234"},',
            '{"NVIDIA H100 80GB HBM3", "fp32", 1024, "composed", "", false, 0, false, 1, 0.00, 500.00, "2026-12-08", "abc1234"},',
            '{"NVIDIA H100 80GB HBM3", "fp32", 2048, "fused", "ffma", false, 0, true, 4, 400.00, 900.00, "2026-12-08", "abc1234"},',
            '{"NVIDIA H100 80GB HBM3", "tf32", 128, "fused", "tf32", false, 12, false, 1, 35.00, 90.00, "2026-12-08", "abc1234"},',
        ])
        # The other card's entry and source stay; this card's old ones are gone.
        self.assertIn(OTHER.splitlines()[0], lines)
        with open(self.table) as f:
            text = f.read()
        self.assertIn("// source: NVIDIA H200: an earlier run", text)
        self.assertNotIn("an old one", text)
        self.assertIn("// source: NVIDIA H100 80GB HBM3: bench_step --sweep on " + DEVICE +
                      ", 784-400-20, Adam, 320 steps a variant, 2026-12-08, commit abc1234, margin 0.10", text)
        # A larger margin leaves the 1.10x batch composed; none keeps the 1.099x one fused.
        self.assertEqual(self.run_tool("--margin", "0.2").returncode, 0)
        self.assertIn('"fp32", 128, "composed", ""', "\n".join(self.entries()[0]))
        self.assertEqual(self.run_tool("--margin", "0").returncode, 0)
        self.assertIn('"fp32", 32, "fused", "ffma", false, 0, false, 1, 91.00', "\n".join(self.entries()[0]))

    def test_the_table_compiles_as_the_trainer_includes_it(self):
        cxx = shutil.which("g++") or shutil.which("c++")
        if not cxx:
            self.skipTest("no C++ compiler")
        self.assertEqual(self.run_tool().returncode, 0)
        src = os.path.join(self.dir, "t.cpp")
        with open(src, "w") as f:
            f.write('#include "step_rule.h"\nconst std::vector<vae::StepRuleEntry> t = {\n#include "'
                    + self.table + '"\n};\nint main() { return t.size() == 7 ? 0 : 1; }\n')
        exe = os.path.join(self.dir, "t")
        c = subprocess.run([cxx, "-std=c++17", "-Wall", "-Werror", "-I", os.path.join(ROOT, "host"), "-I",
                            os.path.join(ROOT, "cuda"), src, "-o", exe], capture_output=True, text=True)
        self.assertEqual(c.returncode, 0, c.stderr[-2000:])
        self.assertEqual(subprocess.run([exe]).returncode, 0)

    def test_a_log_without_a_sweep_changes_nothing(self):
        with open(self.log, "w") as f:
            f.write("bench_step: 784-400-20, batch 128\nstep 0.2 ms\n")
        with open(self.table) as f:
            before = f.read()
        r = self.run_tool()
        self.assertEqual(r.returncode, 1)
        self.assertIn("no bench_step --sweep --json 1 lines", r.stderr)
        with open(self.table) as f:
            self.assertEqual(f.read(), before)
        r = subprocess.run([sys.executable, TOOL, "--log", os.path.join(self.dir, "missing.log"), "--date", "d",
                            "--commit", "c", "--table", self.table], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("missing.log", r.stderr)


if __name__ == "__main__":
    unittest.main()
