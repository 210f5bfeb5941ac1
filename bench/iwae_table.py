#!/usr/bin/env python3
"""Burda et al.'s table for this data set: the default 784-400-20 model on Fashion-MNIST with
dynamic binarization, trained for the same epochs on the ELBO with L = k samples and on the
IWAE bound with K = k (standard and DReG gradients), k = 1, 5, 50; each checkpoint then
evaluated with the importance-weighted estimate of log p(x) (IWAE-5000 by default). Prints a
Markdown table with the seconds per epoch, the test ELBO and the estimate with its standard
error; every run's flags and seed are in it.

  iwae_table.py [--device cpu] [--epochs 5] [--ks 1,5,50] [--iw-samples 5000] [--test-limit 0]
                [--build build] [--seed 1] [--out DIR]"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def run(cmd, log):
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write(r.stdout + r.stderr)
    if r.returncode != 0:
        sys.exit(f"iwae_table.py: {' '.join(cmd[:2])} failed (exit {r.returncode}): {(r.stderr or r.stdout).strip()}")
    return r.stdout


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--ks", default="1,5,50")
    p.add_argument("--iw-samples", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=0, help="evaluate on the first N test images (0: all 10 000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--build", default="build")
    p.add_argument("--out", default=None, help="keep the runs and the log here (default: a temporary folder)")
    a = p.parse_args()
    vae = os.path.join(a.build, "host", "vae")
    if not os.access(vae, os.X_OK):
        sys.exit(f"iwae_table.py: no {vae}; build first")
    out = a.out or tempfile.mkdtemp(prefix="vae-iwae-table-")
    os.makedirs(out, exist_ok=True)
    ks = [int(k) for k in a.ks.split(",")]
    settings = []
    for k in ks:
        settings.append(("ELBO", k, ["--samples", str(k)]))
        settings.append(("IWAE", k, ["--objective", "iwae", "--k", str(k)]))
        if k > 1:
            settings.append(("IWAE, DReG", k, ["--objective", "iwae", "--k", str(k), "--gradient", "dreg"]))
    rows = []
    with open(os.path.join(out, "log.txt"), "w") as log:
        for name, k, flags in settings:
            run_dir = os.path.join(out, f"{name.replace(', ', '-').lower()}-k{k}")
            train = [vae, "train", "--device", a.device, "--binarize", "dynamic", "--epochs", str(a.epochs),
                     "--seed", str(a.seed), "--quiet", "--out", run_dir] + flags
            t0 = time.time()
            run(train, log)
            with open(os.path.join(run_dir, "metrics.jsonl")) as f:
                metrics = [json.loads(x) for x in f if x.strip()]
            epoch_s = sorted(m["epoch_seconds"] for m in metrics)[len(metrics) // 2]
            ev = [vae, "eval", "--device", a.device, "--checkpoint", os.path.join(run_dir, "checkpoint.safetensors"),
                  "--iw-samples", str(a.iw_samples)]
            if a.test_limit:
                ev += ["--test-limit", str(a.test_limit)]
            e = json.loads(run(ev, log))
            rows.append((name, k, " ".join(flags), epoch_s, metrics[-1]["test_elbo"], metrics[-1]["test_objective"],
                         e["test_log_likelihood"], e["test_log_likelihood_stderr"], e["iw_seconds"],
                         time.time() - t0))
    test_n = a.test_limit or 10000
    print(f"784-400-20, Fashion-MNIST, dynamic binarization, {a.epochs} epochs, seed {a.seed}, device {a.device}; "
          f"log p(x) by IWAE-{a.iw_samples} on {test_n} test images")
    print()
    print("| objective | k | flags | s/epoch | test ELBO | test bound at k | IWAE-%d log p(x) | eval s |" % a.iw_samples)
    print("|---|---|---|---|---|---|---|---|")
    for name, k, flags, es, elbo, bound, ll, se, evs, _ in rows:
        print(f"| {name} | {k} | `{flags}` | {es:.2f} | {elbo:.2f} | {bound:.2f} | {ll:.2f} ± {se:.2f} | {evs:.0f} |")


if __name__ == "__main__":
    main()
