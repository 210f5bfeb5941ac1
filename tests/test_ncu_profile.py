#!/usr/bin/env python3
"""bench/ncu_profile.py (gpu_check.sh's profile stage) on a recorded Nsight Compute CSV of the
H200 run of 2026-11-26 (tests/data/ncu_4096_h200.csv, commit 4951278) against the figures
published from that run, and on a small CSV written here with known times."""

import os
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))
import ncu_profile  # noqa: E402

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size",'
          '"Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def row(i, name, grid, metric, unit, value):
    return (f'"{i}","1","vae","h","{name}","1","13","(256, 1, 1)","{grid}","0","9.0","Command line profiler metrics",'
            f'"{metric}","{unit}","{value}"')


class RecordedH200Profile(unittest.TestCase):
    def test_matches_the_published_step(self):
        kernels, sms = ncu_profile.read_kernels(os.path.join(HERE, "data", "ncu_4096_h200.csv"))
        self.assertIsNone(sms)  # that run did not ask for the SM count
        s = ncu_profile.summarize(kernels, sms=132)
        # Published (gpu-runs/2026-11-26-h200/README.md): 32 kernels, 1272 µs per step at batch
        # 4096, of which dense_activation_backward 682 µs (13 blocks for 400 columns).
        self.assertEqual(s["kernels_per_step"], [32])
        self.assertEqual(s["steps"], 5)
        self.assertAlmostEqual(s["step_us"], 1272, delta=2)
        backward = [r for r in s["kernels"] if r["kernel"].startswith("vae::dense_activation_backward_kernel")]
        self.assertAlmostEqual(sum(r["us"] for r in backward), 682, delta=7)
        self.assertTrue(all(r["few_blocks"] for r in backward))
        self.assertAlmostEqual(sum(r["share"] for r in s["kernels"]), 1.0, places=9)
        table = ncu_profile.table(s, 4096)
        self.assertIn("32 kernels per step", table)
        self.assertIn("| vae::dense_activation_backward_kernel<1> | 2 | 13 (< half the SMs) |", table)


class SmallProfile(unittest.TestCase):
    def write(self, lines):
        f = tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False)
        f.write("==PROF== Connected to process 1 (vae)\n" + "\n".join(lines) + "\n")
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_steps_between_step_counters_are_averaged(self):
        lines, i = [HEADER], 0
        # A shuffle kernel, then three steps of (gemm, recon, advance); the first step is not counted.
        seq = [("void thrust::shuffle<int>(int *)", "(48, 1, 1)", "5,000")]
        for step in range(3):
            seq += [("sm90_gemm_kernel", "(66, 2, 1)", f"{1000 + 200 * step:,}"),
                    ("void vae::bernoulli_reconstruction_kernel<1>(const float *, float *)", "(10, 1, 1)", "3000"),
                    ("vae::advance_step_kernel(vae::StepState *, int)", "(1, 1, 1)", "1500")]
        for name, grid, value in seq:
            lines.append(row(i, name, grid, "gpu__time_duration.sum", "ns", value))
            lines.append(row(i, name, grid, "device__attribute_multiprocessor_count", "", "132"))
            i += 1
        s = ncu_profile.summarize(*ncu_profile.read_kernels(self.write(lines)))
        self.assertEqual(s["sms"], 132)
        self.assertEqual(s["steps"], 2)
        self.assertEqual(s["kernels_per_step"], [3])
        self.assertAlmostEqual(s["step_us"], (1.2 + 1.4) / 2 + 3.0 + 1.5)
        by_name = {r["kernel"]: r for r in s["kernels"]}
        self.assertEqual(list(by_name), ["vae::bernoulli_reconstruction_kernel<1>", "vae::advance_step_kernel",
                                         "sm90_gemm_kernel"])
        self.assertAlmostEqual(by_name["sm90_gemm_kernel"]["us"], 1.3)
        self.assertEqual(by_name["sm90_gemm_kernel"]["blocks"], 132)
        self.assertFalse(by_name["sm90_gemm_kernel"]["few_blocks"])
        self.assertTrue(by_name["vae::bernoulli_reconstruction_kernel<1>"]["few_blocks"])

    def test_the_optimizer_ends_a_step_where_no_step_counter_kernel_runs(self):
        lines, i = [HEADER], 0
        for step in range(3):
            for name, us in (("void vae::gather_batch_kernel<unsigned char>(const T1 *)", "1000"),
                             ("void vae::optimizer_step_kernel<0>(vae::OptimizerHyper, float *)", f"{2000 + step}")):
                lines.append(row(i, name, "(640, 1, 1)", "gpu__time_duration.sum", "ns", us))
                i += 1
        s = ncu_profile.summarize(ncu_profile.read_kernels(self.write(lines))[0], sms=132)
        self.assertEqual(s["steps"], 2)
        self.assertEqual(s["kernels_per_step"], [2])
        self.assertAlmostEqual(s["step_us"], 1.0 + 2.0015)

    def test_one_step_is_an_error(self):
        lines = [HEADER, row(0, "vae::advance_step_kernel(int)", "(1, 1, 1)", "gpu__time_duration.sum", "ns", "1")]
        with self.assertRaisesRegex(ValueError, "fewer than two training steps"):
            ncu_profile.summarize(*ncu_profile.read_kernels(self.write(lines)))

    def test_no_csv_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "no ncu CSV header"):
            ncu_profile.read_kernels(self.write(["==ERROR== the application returned an error"]))


if __name__ == "__main__":
    unittest.main()
