#!/usr/bin/env python3
"""The event files `vae train` writes, read with TensorBoard's own reader (EventAccumulator):
every epoch scalar equals metrics.jsonl's figure at its step, the images are the PNG files of the
run folder, the posterior histograms hold every test image's latent values; a run resumed from an
older checkpoint reads as one continuous run, its retrained steps once; a file cut in the middle
of a record reads up to its last whole record. Runs with the TensorBoard of
build-peers/tensorboard-venv (`cmake/venv.sh tensorboard-venv tensorboard tensorboard` makes it, as cmake/test.sh does) or of
$VAE_TENSORBOARD_PYTHON; exits 77 (skipped) where there is none.

  test_tensorboard.py VAE_BINARY"""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

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
        print("ok: scalars, images and histograms as the run wrote them; resumed and cut files read")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
