#!/usr/bin/env python3
"""End-to-end training throughput of `vae train` on Fashion-MNIST: seconds per epoch (median
of the epochs after the first) and samples/s at batch 128 and 4096, with and without the CUDA
graph, in fp32 and TF32 (on the CPU: the batch sizes only). Then the GEMM share at each batch
size from bench_step: the step's GEMMs alone against a large square GEMM of the same precision
measured in the same call. With --models, also `vae sweep --models N` at the first batch size:
seconds per epoch of all N models (the median epoch of the sum of their epoch times), model-epochs
per second, and that against one model's.

  throughput.py --device cuda|cpu [--epochs 3] [--batches 128,4096] [--models 1,4,16,64] [--fused]
                [--build build] [--out DIR]

Writes table.md and results.json (one entry per measured configuration) into --out."""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import report


def run_logged(cmd, log):
    """Runs cmd with its output into log; None, or the last line it printed when it failed."""
    log.write("$ " + " ".join(cmd) + "\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write(r.stdout + r.stderr)
    if r.returncode == 0:
        return None
    tail = (r.stderr or r.stdout).strip().splitlines()
    return tail[-1] if tail else f"exit {r.returncode}"


def train(vae, device, batch, epochs, extra, log):
    with tempfile.TemporaryDirectory(prefix="vae-throughput-") as tmp:
        out = os.path.join(tmp, "run")
        err = run_logged([vae, "train", "--device", device, "--batch-size", str(batch), "--epochs", str(epochs),
                          "--quiet", "--out", out] + extra, log)
        if err:
            return None, err
        with open(os.path.join(out, "metrics.jsonl")) as f:
            lines = [json.loads(x) for x in f if x.strip()]
        log.write("".join(json.dumps(m) + "\n" for m in lines))
        return lines, None


def sweep(vae, device, batch, models, epochs, log):
    """Seconds per epoch of a sweep of `models` models (the median over epochs of the sum of the
    models' epoch times), or None and the error."""
    with tempfile.TemporaryDirectory(prefix="vae-sweep-") as tmp:
        err = run_logged([vae, "sweep", "--device", device, "--batch-size", str(batch), "--epochs", str(epochs),
                          "--quiet", "--models", str(models), "--out", os.path.join(tmp, "sweep")], log)
        if err:
            return None, err
        per_epoch = [0.0] * epochs
        for k in range(models):
            with open(os.path.join(tmp, "sweep", f"model_{k}", "metrics.jsonl")) as f:
                for line in f:
                    if line.strip():
                        m = json.loads(line)
                        per_epoch[m["epoch"] - 1] += m["epoch_seconds"]
        return sorted(per_epoch)[len(per_epoch) // 2], None


def measure(a, vae, bench_step, batches, variants, gpu, log, rows, gemm_rows, sweep_rows, runs):
    """Every configuration's runs, appended to rows, gemm_rows, sweep_rows and runs as each finishes
    (a Cut leaves them holding what was measured)."""
    for b in batches:
        for graph, tf32, fused in variants:
            extra = (([] if graph or not gpu else ["--no-graph"]) + (["--tf32"] if tf32 else []) +
                     (["--step", "fused"] if fused else []))
            print(f"batch {b} {' '.join(extra)}", file=sys.stderr, flush=True)
            lines, err = train(vae, a.device, b, a.epochs, extra, log)
            if lines is None:
                rows.append((b, "fused" if fused else "-", "-", "-", "failed", "", err))
                continue
            s = report.median_epoch_seconds(lines)
            n = lines[-1]["samples_per_second"] * lines[-1]["epoch_seconds"]
            rows.append((b, lines[-1]["step_kernel"], "yes" if lines[-1]["cuda_graph"] else "no",
                         "TF32" if tf32 else "fp32", f"{s:.3f}", f"{n / s:,.0f}", f"{lines[-1]['test_elbo']:.2f}"))
            runs.append({"trainer": "vae", "step": lines[-1]["step_kernel"], "batch": b,
                         "precision": "tf32" if tf32 else "fp32", "models": 1, "cuda_graph": lines[-1]["cuda_graph"],
                         "seconds_per_epoch": s, "test_elbo": lines[-1]["test_elbo"]})
        for tf32 in (False, True) if gpu else (False,):
            cmd = [bench_step, "--device", a.device, "--batch", str(b), "--steps", "100" if gpu else "20",
                   "--tf32", str(int(tf32)), "--json", "1"]
            log.write("$ " + " ".join(cmd) + "\n")
            r = subprocess.run(cmd, capture_output=True, text=True)
            log.write(r.stdout + r.stderr)
            js = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
            if r.returncode != 0 or not js:
                gemm_rows.append((b, "TF32" if tf32 else "fp32", "failed", "", "", ""))
                continue
            j = js[-1]
            gemm_rows.append((b, "TF32" if tf32 else "fp32", f"{j['step_gemm_gflop'] / (j['step_ms'] * 1e-3):.0f}",
                              f"{j['floor_step_gemms_gflops']:.0f}", f"{j['floor_peak_gemm_gflops']:.0f}",
                              f"{100 * j['floor_step_gemms_gflops'] / j['floor_peak_gemm_gflops']:.0f}%"))
    one = None
    for n in [int(m) for m in a.models.split(",") if m]:
        print(f"sweep of {n} models at batch {batches[0]}", file=sys.stderr, flush=True)
        s, err = sweep(vae, a.device, batches[0], n, a.epochs, log)
        if s is None:
            sweep_rows.append((n, "failed", "", "", err))
            continue
        one = one if one is not None or n != 1 else s
        rate = n / s
        runs.append({"trainer": "vae", "step": "sweep", "batch": batches[0], "precision": "fp32", "models": n,
                     "seconds_per_epoch": s})
        sweep_rows.append((n, f"{s:.3f}", f"{rate:.2f}", f"{rate * one:.2f}x" if one else "", ""))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batches", default="128,4096")
    p.add_argument("--models", default="", help="sweep sizes to time, e.g. 1,4,16,64 (none by default)")
    p.add_argument("--fused", action="store_true", help="also each batch and precision with --step fused")
    p.add_argument("--build", default=os.path.join(report.ROOT, "build"))
    p.add_argument("--out", default=None)
    a = p.parse_args()
    out = a.out or f"bench-throughput-{a.device}"
    os.makedirs(out, exist_ok=True)
    vae = os.path.join(a.build, "host", "vae")
    bench_step = os.path.join(a.build, "bench", "bench_step")
    if not os.access(vae, os.X_OK):
        sys.exit(f"throughput.py: --build {a.build}: no host/vae there (build the project first)")
    batches = [int(b) for b in a.batches.split(",")]
    gpu = a.device == "cuda"
    variants = [(g, t, False) for g in (True, False) for t in (False, True)] if gpu else [(False, False, False)]
    if a.fused:
        variants += [(True, t, True) for t in ((False, True) if gpu else (False,))]
    rows, gemm_rows, sweep_rows, failed = [], [], [], False
    runs = []  # results.json: one entry per measured configuration (bench/summary_json.py reads it)
    report.cut_on_sigterm()
    with open(os.path.join(out, "runs.log"), "w") as log:
        try:
            measure(a, vae, bench_step, batches, variants, gpu, log, rows, gemm_rows, sweep_rows, runs)
        except report.Cut as e:  # what was measured stays; the table says where it stopped
            report.measured()
            print(f"throughput.py: {e}", file=sys.stderr)
            log.write(f"{e}\n")
            rows.append(("-", "-", "-", "-", "cut", "", str(e)))
            failed = True
    report.measured()
    failed = failed or any("failed" in r for r in rows + gemm_rows + sweep_rows)
    title = (f"throughput.py --device {a.device}: `vae train`, {a.epochs} epochs each, commit {report.commit()}, "
             f"{report.today()}")
    table = (title + "\n\n" + report.markdown_table(
        ("batch", "step", "CUDA graph", "GEMMs", "s/epoch", "samples/s", f"test ELBO @{a.epochs}"), rows) + "\n\n" +
        "GEMM rates from bench_step (GFLOP/s): the whole step's GEMM work over its time, the step's GEMMs alone, "
        "a large square GEMM of the same precision, and the step's GEMMs as a share of it\n\n" +
        report.markdown_table(("batch", "GEMMs", "in the step", "GEMMs alone", "large GEMM", "share"), gemm_rows))
    if sweep_rows:
        table += (f"\n\n`vae sweep --models N` at batch {batches[0]}, fp32: seconds per epoch of all N models, "
                  "model-epochs per second, and that against one model's\n\n" +
                  report.markdown_table(("models", "s/epoch (all)", "model-epochs/s", "vs one model", ""), sweep_rows))
    print(table)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"device": a.device, "epochs": a.epochs, "runs": runs}, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
