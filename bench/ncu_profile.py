#!/usr/bin/env python3
"""Per-kernel GPU times of one training step, from an Nsight Compute CSV.

The CSV comes from `ncu --csv --print-units base --metrics gpu__time_duration.sum[,
device__attribute_multiprocessor_count]` over `vae train --no-graph` (bench/gpu_check.sh's
profile stage runs it). A training step ends with the kernel that moves the step counter on:
`advance_step_kernel` (commits up to 2026-11-26's H200 run), the optimizer (since), or the fused
step kernel, which is a step by itself; the kernels between two of them are one step, and the
steps after the first are averaged (the first also holds the epoch's shuffle). Prints the kernels per step and, for each kernel of the step,
its launches, blocks, time per step and share, largest first; a kernel launched with fewer
blocks than half the SMs is flagged (the SM count from the CSV, or --sms).

  ncu_profile.py [--batch B] [--sms N] [--json] CSV"""

import argparse
import csv
import json
import statistics
import sys

# The kernel that ends a training step, by the first of these names a profile holds.
STEP_ENDS = ("advance_step_kernel", "optimizer_step_kernel", "fused_step_kernel")


def short_name(name):
    """The kernel's name without 'void ', its return type and its parameter list."""
    name = name.strip()
    if name.startswith("void "):
        name = name[5:]
    depth = 0
    for i, ch in enumerate(name):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0 and i > 0:
            return name[:i]
    return name


def to_us(value, unit):
    v = float(value.replace(",", ""))
    scale = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3, "s": 1e6,
             "second": 1e6}
    if unit not in scale:
        raise ValueError(f"unknown time unit '{unit}'")
    return v * scale[unit]


def read_kernels(path):
    """[(id, short name, blocks, µs)] in launch order, and the SM count if the CSV has it."""
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        raise ValueError(f"{path}: no ncu CSV header (a line starting with \"ID\")")
    rows = csv.DictReader([l for l in lines[start:] if l.startswith('"')])
    kernels, sms = {}, None
    for r in rows:
        metric = r["Metric Name"]
        if metric == "device__attribute_multiprocessor_count":
            sms = int(float(r["Metric Value"].replace(",", "")))
        elif metric == "gpu__time_duration.sum":
            grid = [int(x) for x in r["Grid Size"].strip("()").split(",")]
            blocks = grid[0] * grid[1] * grid[2]
            kernels[int(r["ID"])] = (short_name(r["Kernel Name"]), blocks, to_us(r["Metric Value"], r["Metric Unit"]))
    if not kernels:
        raise ValueError(f"{path}: no gpu__time_duration.sum rows")
    return [kernels[i] for i in sorted(kernels)], sms


def ends_step(name, end):
    """Whether a kernel's short name is the step-ending kernel `end` (a template's arguments aside)."""
    return name.split("<")[0].endswith(end)


def steps_of(kernels):
    """The training steps after the first: the kernels after one step-ending kernel up to and
    including the next."""
    end = next((e for e in STEP_ENDS if any(ends_step(k[0], e) for k in kernels)), STEP_ENDS[0])
    ends = [i for i, k in enumerate(kernels) if ends_step(k[0], end)]
    if len(ends) < 2:
        raise ValueError(f"fewer than two training steps ({len(ends)} {end} launches): profile at least two")
    return [kernels[a + 1:b + 1] for a, b in zip(ends, ends[1:])]


def summarize(kernels, sms=None):
    steps = steps_of(kernels)
    per_step = {}  # name -> [launches per step, min blocks, µs per step]
    for step in steps:
        for name, blocks, us in step:
            e = per_step.setdefault(name, [0, blocks, 0.0])
            e[0] += 1
            e[1] = min(e[1], blocks)
            e[2] += us
    n = len(steps)
    total = sum(e[2] for e in per_step.values()) / n
    rows = []
    for name, (launches, blocks, us) in sorted(per_step.items(), key=lambda kv: -kv[1][2]):
        rows.append({"kernel": name, "launches": launches / n, "blocks": blocks, "us": us / n,
                     "share": us / n / total, "few_blocks": bool(sms) and blocks < sms / 2})
    counts = sorted({len(s) for s in steps})
    return {"steps": n, "kernels_per_step": counts, "step_us": total, "sms": sms, "kernels": rows}


def table(s, batch=None):
    head = f"batch {batch}: " if batch else ""
    k = s["kernels_per_step"]
    out = [f"{head}{k[0] if len(k) == 1 else k} kernels per step, {s['step_us']:.1f} µs per step (sum of kernel "
           f"times, mean of {s['steps']} steps)" + (f", {s['sms']} SMs" if s["sms"] else ""), "",
           "| kernel | per step | blocks | µs/step | share |", "|---|---|---|---|---|"]
    for r in s["kernels"]:
        flag = " (< half the SMs)" if r["few_blocks"] else ""
        launches = f"{r['launches']:g}"
        out.append(f"| {r['kernel']} | {launches} | {r['blocks']}{flag} | {r['us']:.1f} | {100 * r['share']:.1f} % |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--batch", type=int, default=None, help="the batch size, for the title")
    p.add_argument("--sms", type=int, default=None, help="the card's SM count, where the CSV lacks it")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = p.parse_args()
    try:
        kernels, sms = read_kernels(a.csv)
        s = summarize(kernels, a.sms or sms)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"ncu_profile.py: {a.csv}: {e}")
    print(json.dumps(s, indent=1) if a.json else table(s, a.batch))


if __name__ == "__main__":
    main()
