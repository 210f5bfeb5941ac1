#!/usr/bin/env python3
"""The table `vae train --step auto` follows (host/step_rule_table.inc), from a sweep.

Reads the JSON lines of `bench_step --sweep --json 1` (a gpu_check.sh bench.log holds them among
other output) and, for each card, precision and batch measured there, writes one entry: the fused
step (its fastest variant's tiles, grid, split-K ticket, row flags and cluster) where that variant beat the
composed step by at least --margin (the composed step is the one every path of the trainer has run
for longest), else the composed step. The entries of the cards this sweep measured replace theirs
in the table; other cards' stay. Each entry keeps both steps' µs a step, the date and the commit.

  python3 bench/step_rule.py --log REPORT/bench.log --date 2026-12-08 --commit abc1234 \\
      [--margin 0.10] [--table host/step_rule_table.inc]

Exit 1 when the log holds no sweep lines; the table is then left as it was.
"""

import argparse
import json
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = """\
// The rule `vae train --step auto` follows (host/step_rule.h), measured: one entry per card, precision
// and batch of a `bench_step --sweep --json 1` run, written by bench/step_rule.py (do not edit by hand:
// run it on the sweep's log). The fused step only where its fastest variant beat the composed step by
// the margin named below; both steps' microseconds a step, the date and the commit beside each entry.
// {card, precision, batch, step, fused tiles, half grid, ticket chunks, row flags, cluster, fused us, composed us,
//  date, commit}
"""
ENTRY = re.compile(
    r'^\s*\{"(?P<card>[^"]*)", "(?P<precision>fp32|tf32)", (?P<batch>\d+), "(?P<step>fused|composed)", '
    r'"(?P<math>[^"]*)", (?P<half>true|false), (?P<ticket>\d+), (?P<flags>true|false), (?P<cluster>\d+), '
    r'(?P<fused>[0-9.]+), (?P<composed>[0-9.]+), '
    r'"(?P<date>[^"]*)", "(?P<commit>[^"]*)"\},\s*$')


def card_of(device):
    """bench_step's device: "NVIDIA H200 (sm_90)" -> "NVIDIA H200"; "cpu (2 workers)" -> "cpu"."""
    if device.startswith("cpu"):
        return "cpu"
    return re.sub(r"\s*\(sm_\d+\)$", "", device)


def read_sweep(path):
    """The sweep's JSON rows (one model) and its header line's words after "bench_step --sweep: "."""
    rows, header = [], ""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("bench_step --sweep: ") and not header:
                header = re.sub(r"\s*\(x16:.*\)$", "", line[len("bench_step --sweep: "):])
            if not line.startswith("{"):
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and "variant" in r and "step_us" in r and r.get("models", 1) == 1:
                rows.append(r)
    return rows, header


def entries_from(rows, margin, date, commit):
    groups = {}
    for r in rows:
        groups.setdefault((card_of(r["device"]), r["precision"], int(r["batch"])), []).append(r)
    out = []
    for (card, precision, batch), rs in sorted(groups.items()):
        composed = [r for r in rs if r["step"] == "composed"]
        fused = [r for r in rs if r["step"] == "fused"]
        if not composed:
            print(f"step_rule.py: {card} {precision} batch {batch}: no composed step measured; left out",
                  file=sys.stderr)
            continue
        c = min(composed, key=lambda r: r["step_us"])
        f = min(fused, key=lambda r: r["step_us"]) if fused else None
        use_fused = f is not None and c["step_us"] / f["step_us"] >= 1 + margin - 1e-9
        out.append({
            "card": card, "precision": precision, "batch": batch, "step": "fused" if use_fused else "composed",
            "math": f["fused_math"] if use_fused else "", "half": bool(use_fused and f.get("half_grid", False)),
            "ticket": int(f.get("ticket_chunks", 0)) if use_fused else 0,
            "flags": bool(use_fused and f.get("row_flags", False)),
            "cluster": max(1, int(f.get("cluster", 1))) if use_fused else 1,
            "fused": f["step_us"] if f else 0.0, "composed": c["step_us"], "date": date, "commit": commit})
    return out


def read_table(path):
    kept, sources = [], []
    if not os.path.exists(path):
        return kept, sources
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = ENTRY.match(line)
            if m:
                kept.append({"card": m["card"], "precision": m["precision"], "batch": int(m["batch"]),
                             "step": m["step"], "math": m["math"], "half": m["half"] == "true",
                             "ticket": int(m["ticket"]), "flags": m["flags"] == "true", "cluster": int(m["cluster"]),
                             "fused": float(m["fused"]), "composed": float(m["composed"]), "date": m["date"],
                             "commit": m["commit"]})
            elif line.startswith("// source:"):
                sources.append(line.rstrip("\n"))
    return kept, sources


def format_entry(e):
    return (f'{{"{e["card"]}", "{e["precision"]}", {e["batch"]}, "{e["step"]}", "{e["math"]}", '
            f'{"true" if e["half"] else "false"}, {e["ticket"]}, {"true" if e["flags"] else "false"}, {e["cluster"]}, '
            f'{e["fused"]:.2f}, {e["composed"]:.2f}, "{e["date"]}", '
            f'"{e["commit"]}"}},')


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--log", required=True, help="a log holding bench_step --sweep --json 1 output")
    p.add_argument("--date", required=True)
    p.add_argument("--commit", required=True)
    p.add_argument("--margin", type=float, default=0.10,
                   help="the fused step's least lead over the composed step (0.10: 10 %%)")
    p.add_argument("--table", default=os.path.join(ROOT, "host", "step_rule_table.inc"))
    a = p.parse_args()
    if a.margin < 0:
        p.error("--margin: must be >= 0")
    try:
        rows, header = read_sweep(a.log)
    except OSError as e:
        print(f"step_rule.py: {a.log}: {e.strerror}", file=sys.stderr)
        return 1
    new = entries_from(rows, a.margin, a.date, a.commit)
    if not new:
        print(f"step_rule.py: {a.log}: no bench_step --sweep --json 1 lines; the table is unchanged", file=sys.stderr)
        return 1
    old, sources = read_table(a.table)
    cards = {e["card"] for e in new}
    entries = sorted([e for e in old if e["card"] not in cards] + new,
                     key=lambda e: (e["card"], e["precision"], e["batch"]))
    sources = [s for s in sources if not any(f"// source: {c}:" in s for c in cards)]
    for c in sorted(cards):
        device = next(r["device"] for r in rows if card_of(r["device"]) == c)
        sources.append(f"// source: {c}: bench_step --sweep on {device}" + (f", {header}" if header else "")
                       + f", {a.date}, commit {a.commit}, margin {a.margin:.2f}")
    text = HEADER + "\n".join(sorted(sources)) + "\n" + "\n".join(format_entry(e) for e in entries) + "\n"
    d = os.path.dirname(os.path.abspath(a.table))
    with tempfile.NamedTemporaryFile("w", dir=d, delete=False, encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, a.table)
    for e in new:
        print(f'{e["card"]} {e["precision"]} batch {e["batch"]}: {e["step"]}'
              f'{" " + e["math"] if e["math"] else ""}{" half grid" if e["half"] else ""}'
              f'{" ticket " + str(e["ticket"]) if e["ticket"] else ""}{" row flags" if e["flags"] else ""}'
              f'{" cluster " + str(e["cluster"]) if e["cluster"] > 1 else ""} '
              f'(fused {e["fused"]:.1f} us, composed {e["composed"]:.1f} us)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
