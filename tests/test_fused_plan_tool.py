#!/usr/bin/env python3
"""bench/fused_plan (the fused step's work plan from its planners' arithmetic, no kernel run) against
what the kernel ran: bench_step --step fused --phases on the CPU's 7 blocks, GEMM phase by GEMM
phase, the work items over the blocks and the most K chunks one block ran, read from the kernel's
timers. Two small models whose plans take every path on 7 blocks: 37-65-3 at batch 97 (the output
layer's update carried in part to the next phase, the last phase's second round split in K) and
150-32-3 at batch 128 (the first encoder layer's forward and the output layer's input gradient in
two rounds of K slices).

  test_fused_plan_tool.py BENCH_STEP FUSED_PLAN"""

import os
import subprocess
import sys
import unittest

BENCH, PLAN = sys.argv[1], sys.argv[2]
GRID = 7
MODELS = [(37, 65, 3, 97), (150, 32, 3, 128)]  # dim, hidden, latent, batch


def planned(dim, hidden, latent, batch):
    """fused_plan's rows for the batch: (phase, items, chunks), the sum left out."""
    out = subprocess.run([PLAN, "--grid", str(GRID), "--dim", str(dim), "--hidden", str(hidden), "--latent",
                          str(latent), "--batches", str(batch), "--verbose"],
                         check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines()[2:]:  # "%6d  %-20s %6d %6d %6d  GEMMs"
        name, fields = line[8:28].strip(), line[28:].split()
        if line[:6].strip() == str(batch) and name != "sum":
            rows.append((name, int(fields[0]), int(fields[1]), " ".join(fields[3:])))
    return rows


def measured(dim, hidden, latent, batch):
    """bench_step --phases' sync points table: (row, items, chunks) after the gather's."""
    env = dict(os.environ, VAE_CPU_WORKERS=str(GRID))
    out = subprocess.run([BENCH, "--device", "cpu", "--step", "fused", "--phases", "--steps", "2", "--batch",
                          str(batch), "--dim", str(dim), "--hidden", str(hidden), "--latent", str(latent),
                          "--fused-grid", str(GRID)],
                         check=True, capture_output=True, text=True, env=env).stdout
    lines = out.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith("grid barrier after"))
    rows = []
    for line in lines[start + 1:]:
        if line.startswith("sum"):
            break
        fields = line.split()
        rows.append((line[:28].strip(), int(fields[-2]), int(fields[-1])))
    return rows


class FusedPlanTool(unittest.TestCase):
    def test_the_plan_is_what_the_kernel_runs(self):
        paths = set()
        for dim, hidden, latent, batch in MODELS:
            with self.subTest(model=f"{dim}-{hidden}-{latent}", batch=batch):
                plan = planned(dim, hidden, latent, batch)
                ran = measured(dim, hidden, latent, batch)
                self.assertEqual(ran[0][0], "gather")
                self.assertEqual(len(plan), 8)
                self.assertEqual(len(ran), 1 + len(plan))
                for (name, items, chunks, gemms), (row, ran_items, ran_chunks) in zip(plan, ran[1:]):
                    self.assertEqual((ran_items, ran_chunks), (items, chunks), f"{name} ({row}): {gemms}")
                # Which of the planner's paths the model takes (tiles x chunks / slices of each GEMM).
                last = plan[-1][3].split()
                if len(last) == 3 and last[2].endswith("/2"):
                    paths.add("the last round split")
                if len(plan[6][3].split()) == 3:
                    paths.add("rows carried")
                if any(items > GRID and gemms.count("x") == 1 and not gemms.endswith("/1")
                       for _, items, _, gemms in plan):
                    paths.add("two rounds")
        self.assertEqual(paths, {"the last round split", "rows carried", "two rounds"})


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1])
