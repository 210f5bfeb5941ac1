#!/usr/bin/env python3
"""Our trainer against the peers on one machine, in one call: the same model (784-400-20, ReLU,
Bernoulli decoder, Adam 1e-3, batch 128, L = 1) for the same epochs on Fashion-MNIST, runs
alternating between implementations (round r uses seed r for every implementation), then one
table: seconds per epoch (median of every epoch after the first, over all rounds), samples/s,
test ELBO after the last epoch (mean ± standard deviation over the rounds' seeds) and each
peer's time per epoch over ours.

  compare.py --device cpu   # vae --device cpu against PyTorch eager at each thread split, JAX
                            # where a Python has it, and any --torch-python eager and compiled
  compare.py --device cuda  # vae (CUDA graph, fp32 and --tf32) against PyTorch eager, torch.compile,
                            # JAX jitted per step, and JAX with the epoch in one jitted lax.scan
                            # (fp32 and TF32)

On the CPU the peers get this machine's best OpenBLAS kernels (the same OPENBLAS_CORETYPE that
`vae` picks for itself where OpenBLAS does not know the CPU) and flush denormals, as `vae` does.
Also prints the floor: the epoch's GEMM work at the GEMM rates `bench_step` measures in the
same call. Writes the table and every run's lines to --out (default bench-peers-<device>/)."""

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import report  # noqa: E402  (bench/report.py)

ROOT = report.ROOT


def openblas_core_env():
    """OPENBLAS_CORETYPE for the peers where OpenBLAS falls back to a generic core on this CPU."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return {}
    try:
        lib = ctypes.CDLL("libopenblas.so.0")
        lib.openblas_get_corename.restype = ctypes.c_char_p
        core = lib.openblas_get_corename().decode().lower()
    except (OSError, AttributeError):
        return {}
    flags = open("/proc/cpuinfo").read()
    if core not in ("prescott", "nehalem", "core2", "unknown"):
        return {}
    if " avx512f" in flags and " avx512bw" in flags:
        return {"OPENBLAS_CORETYPE": "SkylakeX"}
    if " avx2" in flags:
        return {"OPENBLAS_CORETYPE": "Haswell"}
    return {}


class Config:
    """One implementation in one configuration. precision: the GEMMs' (fp32 or tf32); each peer's
    time is divided by our fastest time at the same precision."""

    def __init__(self, impl, label, argv, env=None, ours=False, precision="fp32"):
        self.impl, self.label, self.argv, self.env, self.ours = impl, label, argv, env or {}, ours
        self.precision = precision
        self.epochs = []  # (round, epoch record)
        self.failure = None


def run_ours(cfg, args, rnd, log):
    with tempfile.TemporaryDirectory(prefix="vae-peers-") as out:
        cmd = cfg.argv + ["--seed", str(1 + rnd), "--out", os.path.join(out, "run")]
        log.write(f"$ {' '.join(cmd)}\n")
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **cfg.env})
        log.write(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"exit {r.returncode}: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        with open(os.path.join(out, "run", "metrics.jsonl")) as f:
            lines = [json.loads(x) for x in f if x.strip()]
    for m in lines:
        log.write(json.dumps(m) + "\n")
    return lines


def run_peer(cfg, args, rnd, log):
    cmd = cfg.argv + ["--seed", str(1 + rnd)]
    log.write(f"$ {' '.join(f'{k}={v}' for k, v in cfg.env.items())} {' '.join(cmd)}\n")
    # torch.compile's kernels are compiled afresh for every run (in epoch 1, which is not timed):
    # a shared cache serves one PyTorch installation's binaries to another, which fails to load.
    with tempfile.TemporaryDirectory(prefix="vae-peers-inductor-") as cache:
        env = {**os.environ, **cfg.env, "TORCHINDUCTOR_CACHE_DIR": cache}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE)
    log.write(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()
        raise RuntimeError(f"exit {r.returncode}: {tail[-1] if tail else ''}")
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


def floor(args, log):
    """bench_step's GEMM floor for the default model at the benchmark's batch size."""
    exe = os.path.join(args.build, "bench", "bench_step")
    cmd = [exe, "--device", args.device, "--batch", str(args.batch_size), "--steps", "200", "--json", "1"]
    log.write(f"$ {' '.join(cmd)}\n")
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write(r.stdout + r.stderr)
    if r.returncode != 0:
        return None
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")][-1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds over all implementations, seeds 1..")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--build", default=os.path.join(ROOT, "build"), help="the CMake build folder holding host/vae")
    p.add_argument("--python", default=sys.executable, help="the Python that has torch (and jax) for the peers")
    p.add_argument("--jax-python", default=None, help="a Python that has jax, where --python lacks it")
    p.add_argument("--torch-python", action="append", default=[],
                   help="CPU: another Python with another PyTorch (say PyPI's, with MKL and torch.compile), "
                        "run eager and compiled at 1 and all threads; may be repeated")
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    p.add_argument("--skip", default="", help="comma-separated peers to leave out: torch-compile, jax, ...")
    p.add_argument("--vmap-models", type=int, default=0,
                   help="also the JAX peer of vae sweep: this many models, the scanned epoch vmapped (GPU, fp32)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    # The peers run from this folder: a Python given by a relative path must not depend on it.
    for attr in ("python", "jax_python"):
        v = getattr(args, attr)
        if v and os.sep in v:
            setattr(args, attr, os.path.abspath(v))
    args.torch_python = [os.path.abspath(v) if os.sep in v else v for v in args.torch_python]
    out = args.out or f"bench-peers-{args.device}"
    os.makedirs(out, exist_ok=True)
    vae = os.path.join(args.build, "host", "vae")
    if not os.access(vae, os.X_OK):
        sys.exit(f"compare.py: --build {args.build}: no host/vae there (build the project first)")

    common = ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--data", args.data]
    limits = []
    if args.train_limit:
        limits += ["--train-limit", str(args.train_limit)]
    if args.test_limit:
        limits += ["--test-limit", str(args.test_limit)]
    ours = [vae, "train", "--device", args.device, "--quiet"] + common + limits
    peer = lambda script, *extra, python=args.python: [python, os.path.join(HERE, script), "--device", args.device,
                                                       *common, *limits, *extra]
    jax_python = args.jax_python or args.python
    has_jax = subprocess.run([jax_python, "-c", "import jax"], capture_output=True).returncode == 0
    skip = set(filter(None, args.skip.split(",")))
    configs = []
    if args.device == "cpu":
        configs.append(Config("vae", "cpu, 2 workers" if os.cpu_count() == 2 else "cpu", ours, ours=True))
        core = openblas_core_env()
        n = os.cpu_count() or 1
        splits = sorted({(1, 1), (1, n), (n, 1), (n, n)})
        for t, b in splits:
            env = {**core, "OMP_NUM_THREADS": str(t), "OPENBLAS_NUM_THREADS": str(b)}
            label = f"{t} torch thread{'s' if t > 1 else ''}, {b} OpenBLAS" + (
                f", {core['OPENBLAS_CORETYPE']}" if core else "")
            configs.append(Config("pytorch eager", label, peer("torch_vae.py", "--threads", str(t)), env))
        for py in args.torch_python:
            r = subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"compare.py: --torch-python {py}: cannot import torch")
            version = r.stdout.strip()
            for t in sorted({1, n}):
                env = {"OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t), "OPENBLAS_NUM_THREADS": str(t)}
                label = f"{t} thread{'s' if t > 1 else ''}, torch {version}"
                configs.append(Config("pytorch eager", label, peer("torch_vae.py", "--threads", str(t), python=py), env))
                configs.append(Config("torch.compile", label, peer("torch_vae.py", "--threads", str(t), "--mode",
                                                                   "compile", python=py), env))
        if "jax" not in skip and has_jax:
            configs.append(Config("jax jit", "XLA CPU, a dispatch per step", peer("jax_vae.py", python=jax_python)))
            configs.append(Config("jax scan", "XLA CPU, the epoch in one lax.scan",
                                  peer("jax_vae.py", "--mode", "scan", python=jax_python)))
    else:
        configs.append(Config("vae", "CUDA graph, fp32", ours, ours=True))
        configs.append(Config("vae", "CUDA graph, --tf32", ours + ["--tf32"], ours=True, precision="tf32"))
        configs.append(Config("vae", "no graph, fp32", ours + ["--no-graph"], ours=True))
        # The fastest peer (the JAX scan) first after ours: a run cut by a time limit keeps it.
        if "jax" not in skip:
            for precision, label in (("highest", "fp32"), ("tensorfloat32", "tf32")):
                configs.append(Config("jax scan", f"XLA GPU, the epoch in one lax.scan, {label}",
                                      peer("jax_vae.py", "--mode", "scan", "--precision", precision,
                                           python=jax_python), precision=label))
            # JAX's default matmul precision on recent NVIDIA cards is TF32.
            configs.append(Config("jax jit", "XLA GPU, a dispatch per step, default (TF32)",
                                  peer("jax_vae.py", python=jax_python), precision="tf32"))
            if args.vmap_models > 1:  # its time is all the models' (compare it with vae sweep's)
                configs.append(Config("jax vmap", f"XLA GPU, {args.vmap_models} models vmapped, fp32",
                                      peer("jax_vae.py", "--mode", "vmap", "--models", str(args.vmap_models),
                                           "--precision", "highest", python=jax_python)))
        configs.append(Config("pytorch eager", "fused Adam", peer("torch_vae.py", "--mode", "eager")))
        if "torch-compile" not in skip:
            for mode in ("default", "reduce-overhead"):
                configs.append(Config("torch.compile", mode, peer("torch_vae.py", "--mode", "compile",
                                                                   "--compile-mode", mode)))
    configs = [c for c in configs if c.impl.replace(" ", "-") not in skip]

    report.cut_on_sigterm()
    fl = None
    with open(os.path.join(out, "runs.log"), "w") as log:
        log.write(f"compare.py {' '.join(sys.argv[1:])}  {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        try:
            for rnd in range(args.rounds):
                for c in configs:
                    if c.failure:
                        continue
                    print(f"round {rnd + 1}/{args.rounds}: {c.impl} {c.label}", file=sys.stderr, flush=True)
                    try:
                        lines = (run_ours if c.ours else run_peer)(c, args, rnd, log)
                        if len(lines) != args.epochs:
                            raise RuntimeError(f"reported {len(lines)} epochs of {args.epochs}")
                        c.epochs += [(rnd, m) for m in lines]
                    except (RuntimeError, OSError, ValueError) as e:
                        c.failure = str(e)
                        print(f"  failed: {e}", file=sys.stderr)
                    log.flush()
            fl = floor(args, log)
        except report.Cut as e:  # the rounds measured stay; a configuration with none is marked cut
            report.measured()
            print(f"compare.py: {e}", file=sys.stderr)
            log.write(f"{e}\n")
            for c in configs:
                if not c.epochs and not c.failure:
                    c.failure = str(e)
    report.measured()

    done = [c for c in configs if c.epochs]
    # Images per epoch as the runs report them (the data may be a slice: --train-limit, or the
    # smaller Fashion-MNIST copy a GPU machine carries).
    first = done[0].epochs[0][1] if done else None
    n_train = round(first["samples_per_second"] * first["epoch_seconds"]) if first else (args.train_limit or 60000)
    ours_by_precision = {}
    for c in done:
        if c.ours:
            s = report.median_epoch_seconds([m for _, m in c.epochs])
            ours_by_precision[c.precision] = min(s, ours_by_precision.get(c.precision, s))
    ours_s = ours_by_precision.get("fp32")
    rows = []
    for c in done:
        s = report.median_epoch_seconds([m for _, m in c.epochs])
        last = [m["test_elbo"] for _, m in c.epochs if m["epoch"] == args.epochs]
        elbo = f"{statistics.mean(last):.2f}" + (f" ± {statistics.stdev(last):.2f}" if len(last) > 1 else "")
        mine = ours_by_precision.get(c.precision, ours_s)
        rows.append((c.impl, c.label, f"{s:.3f}", f"{n_train / s:,.0f}", elbo, f"{s / mine:.2f}" if mine else "-"))
    for c in configs:
        if c.failure:
            rows.append((c.impl, c.label, "failed", "", "", c.failure[:60]))
    if fl and ours_s:
        for seconds, rate, what in (("floor_step_gemms_s", "floor_step_gemms_gflops", "the step's GEMMs alone"),
                                    ("floor_peak_gemm_s", "floor_peak_gemm_gflops", "at the peak SGEMM rate"),
                                    ("floor_fma_s", "floor_fma_gflops",
                                     f"at the {fl.get('fma_isa', '')} FMA peak (no loads)")):
            if seconds not in fl:  # the FMA peak: the CPU only
                continue
            floor_s = fl[seconds] * n_train / 60000  # bench_step's floors are for 60000 images
            rows.append(("GEMM floor", f"{what}, {fl[rate]:.0f} GFLOP/s", f"{floor_s:.3f}", "", "",
                         f"{floor_s / ours_s:.2f}"))
    head = ("implementation", "configuration", "s/epoch", "samples/s", f"test ELBO @{args.epochs}",
            "÷ ours (same precision)")
    title = (f"compare.py --device {args.device}: {args.epochs} epochs x {args.rounds} rounds, batch "
             f"{args.batch_size}, commit {report.commit()}, {report.today()}")
    title += f", {n_train} training images"
    table = title + "\n\n" + report.markdown_table(head, rows)
    print(table)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "floor": fl, "runs": [
            {"impl": c.impl, "label": c.label, "precision": c.precision, "failure": c.failure,
             "epochs": [m for _, m in c.epochs]}
            for c in configs]}, f, indent=1)
    return 0 if all(not c.failure for c in configs) else 1


if __name__ == "__main__":
    sys.exit(main())
