#!/usr/bin/env python3
"""Data-parallel scaling of `vae train` over R ranks (one process per GPU, or per CPU core group):
seconds per epoch (median of the epochs after the first) and samples/s for R = 1, 2, 4, ...
under the given launcher, and the efficiency against R = 1.

  weak scaling   (default): the per-rank batch fixed, the global batch R times it;
  strong scaling (--strong): the global batch fixed, each rank takes 1/R of it.

Efficiency = samples/s at R / (R x samples/s at 1). It needs a machine (or nodes) with at least
max(R) GPUs; on one GPU or on the CPU it only checks the path. No number is claimed from it until
it has run on such a machine (bench/RESULTS.md).

  scaling.py --device cuda --ranks 1,2,4,8 [--batch 128] [--strong] [--epochs 3]
             [--launcher "mpirun -np {ranks}"] [--build build] [--train-limit N]"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

import report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], required=True)
    p.add_argument("--ranks", default="1,2,4,8", help="comma-separated world sizes")
    p.add_argument("--batch", type=int, default=128, help="per-rank batch (weak) or global batch (--strong)")
    p.add_argument("--strong", action="store_true")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--launcher", default="mpirun -np {ranks}", help="command prefix; {ranks} is replaced")
    p.add_argument("--build", default="build")
    p.add_argument("--train-limit", type=int, default=0)
    args = p.parse_args()
    vae = os.path.join(args.build, "host", "vae")
    rows = []
    base = None
    for r in [int(x) for x in args.ranks.split(",")]:
        batch = args.batch if args.strong else args.batch * r
        if batch % r:
            sys.exit(f"scaling.py: global batch {batch} does not divide among {r} ranks")
        with tempfile.TemporaryDirectory(prefix="vae-scaling-") as tmp:
            out = os.path.join(tmp, "run")
            cmd = shlex.split(args.launcher.format(ranks=r)) + [
                vae, "train", "--device", args.device, "--batch-size", str(batch), "--epochs", str(args.epochs),
                "--quiet", "--out", out]
            if args.train_limit:
                cmd += ["--train-limit", str(args.train_limit)]
            print("$ " + " ".join(cmd), file=sys.stderr)
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"scaling.py: {r} ranks failed (exit {res.returncode}): {res.stderr.strip()[-400:]}")
            with open(os.path.join(out, "metrics.jsonl")) as f:
                lines = [json.loads(x) for x in f if x.strip()]
        timed = [m["epoch_seconds"] for m in lines[1:]] or [lines[0]["epoch_seconds"]]
        secs = statistics.median(timed)
        rate = statistics.median([m["samples_per_second"] for m in lines[1:]] or [lines[0]["samples_per_second"]])
        base = base or rate
        rows.append([str(r), str(batch), f"{secs:.3f}", f"{rate:,.0f}", f"{rate / (r * base):.0%}",
                     f"{lines[-1]['test_elbo']:.2f}", lines[-1]["device"]])
    kind = "strong (global batch fixed)" if args.strong else "weak (per-rank batch fixed)"
    print(f"scaling.py --device {args.device}: {kind} scaling, `{args.launcher}`, {args.epochs} epochs, "
          f"commit {report.commit()}\n")
    print(report.markdown_table(["ranks", "global batch", "s/epoch", "samples/s", "efficiency", "test ELBO", "device"],
                                rows))


if __name__ == "__main__":
    main()
