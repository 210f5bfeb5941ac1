"""What the peer trainers share: the data, the model's shape and hyperparameters, and how a run
reports itself (one JSON line per epoch, the same keys as `vae train`'s metrics.jsonl)."""

import argparse
import gzip
import json
import os
import struct
import sys

import numpy as np

DEFAULT_DATA = "/usr/share/datasets/fashion-mnist"
# The model every peer trains: 784-400-20, ReLU, Bernoulli decoder on [0,1] pixels, Adam 1e-3,
# summed BCE + analytic KL per datapoint, averaged over the minibatch; L = 1.
HIDDEN = 400
LATENT = 20
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8


def read_idx_images(path):
    """(N, rows*cols) uint8 from an MNIST-format IDX file, gzip or not."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 16:
        raise SystemExit(f"{path}: too short for an IDX image file")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 0x803:
        raise SystemExit(f"{path}: not an IDX image file (magic {magic:#x})")
    if len(raw) != 16 + n * rows * cols:
        raise SystemExit(f"{path}: holds {len(raw) - 16} bytes of pixels, header says {n * rows * cols}")
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows * cols)


def find(data_dir, stem):
    for name in (stem + ".gz", stem):
        p = os.path.join(data_dir, name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{data_dir}: no {stem}[.gz]")


def load(data_dir, train_limit=None, test_limit=None):
    """Training and test images as float32 in [0, 1], (N, 784)."""
    train = read_idx_images(find(data_dir, "train-images-idx3-ubyte"))[:train_limit]
    test = read_idx_images(find(data_dir, "t10k-images-idx3-ubyte"))[:test_limit]
    return train.astype(np.float32) / 255.0, test.astype(np.float32) / 255.0


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cpu or cuda (gpu for JAX)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with the IDX files")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--test-limit", type=int, default=None)
    return p


def report(**fields):
    """One epoch's line on stdout, flushed (the driver reads it as it comes)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
