#!/usr/bin/env python3
"""A GPU check's summary.json: one entry per measured configuration, seconds per Fashion-MNIST
epoch as measured (the median of the epochs after the first), from throughput.py's and
compare.py's results.json files:

  {"card": "NVIDIA H200", "date": "2026-12-05", "commit": "<full commit>",
   "runs": [{"trainer": "vae" | "jax-scan" | "jax-step" | "jax-vmap" | "torch-eager" | "torch-compile",
             "step": "fused" | "composed" | "sweep" | null, "batch": 128, "precision": "fp32" | "tf32",
             "models": 1, "seconds_per_epoch": 0.0123, ...}, ...]}

  summary_json.py --card NAME --commit SHA [--date YYYY-MM-DD] --out summary.json RESULTS.json..."""

import argparse
import json
import statistics
import sys
import time

# compare.py's implementation names as the summary's trainers.
TRAINERS = {"vae": "vae", "pytorch eager": "torch-eager", "torch.compile": "torch-compile", "jax jit": "jax-step",
            "jax scan": "jax-scan", "jax vmap": "jax-vmap"}


def median_epoch_seconds(epochs):
    timed = [m["epoch_seconds"] for m in epochs if m.get("epoch", 1) > 1] or [m["epoch_seconds"] for m in epochs]
    return statistics.median(timed)


def runs_of(results):
    """The summary's entries of one results.json (throughput.py's or compare.py's)."""
    if "args" not in results:  # throughput.py: entries already in the summary's form
        return [dict(r) for r in results["runs"]]
    batch = results["args"]["batch_size"]
    out = []
    for r in results["runs"]:
        if r.get("failure") or not r.get("epochs") or r["impl"] not in TRAINERS:
            continue
        trainer = TRAINERS[r["impl"]]
        last = r["epochs"][-1]
        out.append({"trainer": trainer, "step": last.get("step_kernel") if trainer == "vae" else None,
                    "batch": batch, "precision": r.get("precision", "fp32"), "models": last.get("models", 1),
                    "seconds_per_epoch": median_epoch_seconds(r["epochs"]), "label": r["label"]})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--card", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--date", default=time.strftime("%Y-%m-%d", time.gmtime()))
    p.add_argument("--out", required=True)
    p.add_argument("results", nargs="*")
    a = p.parse_args()
    runs = []
    for path in a.results:
        try:
            with open(path) as f:
                runs += runs_of(json.load(f))
        except (OSError, ValueError, KeyError) as e:
            print(f"summary_json.py: {path}: skipped ({e})", file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump({"card": a.card, "date": a.date, "commit": a.commit, "runs": runs}, f, indent=1)
        f.write("\n")
    print(f"summary_json.py: {len(runs)} runs into {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
