#!/usr/bin/env python3
"""The event files `vae train` writes, read with TensorBoard's own reader (EventAccumulator):
every epoch scalar equals metrics.jsonl's figure at its step, the images are the PNG files of the
run folder, the posterior histograms hold every test image's latent values; a run resumed from an
older checkpoint reads as one continuous run, its retrained steps once; a file cut in the middle
of a record reads up to its last whole record; `tensorboard --logdir` serves the run's scalars
over HTTP on localhost. Runs with the TensorBoard of
build-peers/tensorboard-venv (`cmake/venv.sh tensorboard-venv tensorboard tensorboard` makes it, as cmake/test.sh does) or of
$VAE_TENSORBOARD_PYTHON; exits 77 (skipped) where there is none.

  test_tensorboard.py VAE_BINARY"""

import glob
import json
import os
import shutil
import subprocess
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.environ.get("VAE_TENSORBOARD_PYTHON") or os.path.join(ROOT, "build-peers", "tensorboard-venv", "bin",
                                                                  "python")

CHECK = r'''
import glob, json, os, struct, sys
from tensorboard.backend.event_processing import event_accumulator as ea

def load(path):
    acc = ea.EventAccumulator(path, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0, ea.HISTOGRAMS: 0})
    acc.Reload()
    return acc

run, test_rows, latent = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
acc = load(run)
metrics = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
tags = acc.Tags()
problems = []
for m in metrics:
    for key, value in m.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        events = [e for e in acc.Scalars("epoch/" + key) if e.step == m["step"]]
        if len(events) != 1:
            problems.append(f"epoch/{key} at step {m['step']}: {len(events)} events")
        elif abs(events[0].value - struct.unpack("f", struct.pack("f", float(value)))[0]) > 1e-6 * max(1, abs(value)):
            problems.append(f"epoch/{key} at step {m['step']}: {events[0].value} != {value}")
# Every tag's steps once (no step of a retrained stretch twice).
for tag in tags["scalars"]:
    steps = [e.step for e in acc.Scalars(tag)]
    if len(steps) != len(set(steps)):
        problems.append(f"{tag}: steps {steps} repeat")
    if steps != sorted(steps):
        problems.append(f"{tag}: steps {steps} out of order")
for tag in ("step/train_elbo", "step/grad_norm", "step/update_norm", "step/lr"):
    if tag not in tags["scalars"]:
        problems.append(f"no {tag}")
    elif not all(e.value == e.value and e.value >= 0 or tag == "step/train_elbo" for e in acc.Scalars(tag)):
        problems.append(f"{tag}: {[e.value for e in acc.Scalars(tag)]}")
for name in ("samples", "reconstructions"):
    images = acc.Images(name)
    if len(images) != len(metrics):
        problems.append(f"{name}: {len(images)} images for {len(metrics)} epochs")
    for m, im in zip(metrics, images):
        png = open(os.path.join(run, f"{name}_{m['epoch']}.png"), "rb").read()
        if im.step != m["step"] or im.encoded_image_string != png:
            problems.append(f"{name} of epoch {m['epoch']} is not {name}_{m['epoch']}.png")
for name in ("posterior/mu", "posterior/logvar"):
    hs = acc.Histograms(name)
    if len(hs) != len(metrics):
        problems.append(f"{name}: {len(hs)} histograms for {len(metrics)} epochs")
    for h in hs:
        if h.histogram_value.num != test_rows * latent or sum(h.histogram_value.bucket) != test_rows * latent:
            problems.append(f"{name} at step {h.step}: {h.histogram_value.num} values, not {test_rows * latent}")
print(json.dumps({"problems": problems, "scalar_tags": len(tags["scalars"])}))
'''


def serve(run):
    """As a new user would: `tensorboard --logdir` on the run's parent folder, headless on
    localhost, its HTTP API asked for the run's epoch/test_elbo: every epoch's figure of
    metrics.jsonl, at its step."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tensorboard = os.path.join(os.path.dirname(PYTHON), "tensorboard")
    server = subprocess.Popen([tensorboard, "--logdir", os.path.dirname(run), "--host", "127.0.0.1", "--port",
                               str(port), "--load_fast", "false", "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/data/plugin/scalars"
    name = os.path.basename(run)
    try:
        deadline = time.time() + 120
        while True:
            try:
                tags = json.load(urllib.request.urlopen(base + "/tags", timeout=5))
                if "epoch/test_elbo" in tags.get(name, {}):
                    break
            except (OSError, ValueError):
                pass
            assert server.poll() is None, f"tensorboard exited with {server.returncode}"
            assert time.time() < deadline, "tensorboard served no epoch/test_elbo of the run in 120 s"
            time.sleep(1)
        query = urllib.parse.urlencode({"run": name, "tag": "epoch/test_elbo"})
        served = json.load(urllib.request.urlopen(base + "/scalars?" + query, timeout=10))
        metrics = [json.loads(l) for l in open(os.path.join(run, "metrics.jsonl")) if l.strip()]
        got = {int(step): value for _, step, value in served}
        want = {m["step"]: m["test_elbo"] for m in metrics}
        assert set(got) == set(want), (got, want)
        for step, value in want.items():
            assert abs(got[step] - value) <= 1e-5 * abs(value), (step, got[step], value)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    vae = sys.argv[1]
    if not os.access(PYTHON, os.X_OK):
        print(f"skipped: no TensorBoard at {PYTHON} (cmake/venv.sh tensorboard-venv tensorboard tensorboard installs it)")
        return 77
    tmp = tempfile.mkdtemp(prefix="vae-tensorboard-")
    try:
        run = os.path.join(tmp, "run")
        flags = ["--device", "cpu", "--quiet", "--train-limit", "600", "--test-limit", "130", "--batch-size", "50",
                 "--hidden", "32", "--latent", "5", "--log-every", "4"]
        subprocess.run([vae, "train", "--epochs", "2", "--out", run] + flags, check=True)
        files = glob.glob(os.path.join(run, "events.out.tfevents.*"))
        assert len(files) == 1, files

        def check(path):
            r = subprocess.run([PYTHON, "-c", CHECK, path, "130", "5"], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr[-3000:]
            out = json.loads(r.stdout.strip().splitlines()[-1])
            assert not out["problems"], "\n".join(out["problems"])
            return out

        check(run)
        # Resume from epoch 1's checkpoint: epoch 2 again, in a second file that starts with a
        # SessionLog START at that step; the first file's epoch-2 events are dropped on reading.
        first = sorted(glob.glob(os.path.join(run, "checkpoints", "step_*.safetensors")),
                       key=lambda p: int(p.rsplit("_", 1)[1].split(".")[0]))[0]
        subprocess.run([vae, "train", "--epochs", "2", "--device", "cpu", "--quiet", "--resume", first, "--out", run,
                        "--log-every", "4"], check=True)
        assert len(glob.glob(os.path.join(run, "events.out.tfevents.*"))) == 2
        check(run)
        # A file cut in the middle of its last record (kill -9 mid-write) reads up to the cut.
        cut = os.path.join(tmp, "cut")
        os.makedirs(cut)
        src = files[0]
        data = open(src, "rb").read()
        open(os.path.join(cut, os.path.basename(src)), "wb").write(data[:-7])
        r = subprocess.run([PYTHON, "-c", (
            "import sys\nfrom tensorboard.backend.event_processing import event_accumulator as ea\n"
            "a = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0}); a.Reload()\n"
            "print(len(a.Tags()['scalars']), len(a.Histograms('posterior/mu')), len(a.Histograms('posterior/logvar')))"),
            cut], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        scalars, mu, logvar = (int(v) for v in r.stdout.split())
        # The last record is epoch 2's log σ² histogram: everything before it reads.
        assert scalars > 0 and mu == 2 and logvar == 1, r.stdout
        serve(run)
        print("ok: scalars, images and histograms as the run wrote them; resumed and cut files read; "
              "tensorboard --logdir served the run's scalars")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
