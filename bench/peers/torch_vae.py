#!/usr/bin/env python3
"""The benchmark's VAE in PyTorch, written as a PyTorch user would at their best: the whole data
set on the device, no DataLoader, Adam's fused (CUDA) or foreach implementation, and optionally
torch.compile. Same model, hyperparameters, initialisation scheme (nn.Linear's default is the
trainer's U(+-1/sqrt(fan_in))) and estimator as `vae train`'s defaults.

  torch_vae.py --device cpu|cuda --mode eager|compile [--compile-mode default|reduce-overhead|...]
               [--threads N] [--epochs 3] [--batch-size 128]

Prints one JSON line per epoch: epoch, epoch_seconds (training only, as `vae train` counts it),
samples_per_second, test_elbo (nats per test image, one sample of z, as `vae eval`)."""

import time

import common
import torch
import torch.nn as nn
import torch.nn.functional as F


class Vae(nn.Module):
    def __init__(self, dim, hidden, latent):
        super().__init__()
        self.latent = latent
        self.enc = nn.Linear(dim, hidden)
        self.heads = nn.Linear(hidden, 2 * latent)  # [mu, log sigma^2]
        self.dec = nn.Linear(latent, hidden)
        self.out = nn.Linear(hidden, dim)

    def elbo(self, x, eps):
        """Per-datapoint ELBO (B,): Bernoulli log-likelihood of x under the decoder's logits at
        z = mu + sigma * eps, minus the analytic KL to N(0, I)."""
        mu, logvar = self.heads(F.relu(self.enc(x))).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.out(F.relu(self.dec(z)))
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = -0.5 * (1 + logvar - mu * mu - logvar.exp()).sum(1)
        return log_px - kl

    def forward(self, x):
        eps = torch.randn(x.shape[0], self.latent, device=x.device, dtype=x.dtype)
        return -self.elbo(x, eps).mean()


def main():
    p = common.parser(__doc__)
    p.add_argument("--mode", choices=["eager", "compile"], default="eager")
    p.add_argument("--compile-mode", default="default", help="torch.compile's mode")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    # Adam's second moments drift into denormals within an epoch, which slows CPU arithmetic
    # several-fold; flushing them is what the trainer does too.
    torch.set_flush_denormal(True)
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    train_np, test_np = common.load(a.data, a.train_limit, a.test_limit)
    train = torch.from_numpy(train_np).to(dev)
    test = torch.from_numpy(test_np).to(dev)
    model = Vae(train.shape[1], common.HIDDEN, common.LATENT).to(dev)
    kw = {}
    if dev.type == "cuda":
        kw["fused"] = True
    elif "foreach" in torch.optim.Adam.__init__.__code__.co_varnames:
        kw["foreach"] = True
    opt = torch.optim.Adam(model.parameters(), lr=common.LR, betas=common.BETAS, eps=common.EPS, **kw)
    loss_fn = model
    if a.mode == "compile":
        if not hasattr(torch, "compile"):
            raise SystemExit(f"torch_vae.py: --mode compile needs PyTorch 2, this is {torch.__version__}")
        loss_fn = torch.compile(model, mode=a.compile_mode)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(x):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x)
        loss.backward()
        opt.step()

    gen = torch.Generator(device=dev)
    gen.manual_seed(a.seed + 1)
    test_eps = torch.randn(test.shape[0], common.LATENT, device=dev, generator=gen)
    n, B = train.shape[0], a.batch_size
    for epoch in range(1, a.epochs + 1):
        perm = torch.randperm(n, device=dev)
        sync()
        t0 = time.perf_counter()
        for i in range(0, n, B):  # the partial last batch too, as the trainer does
            step(train[perm[i : i + B]])
        sync()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            test_elbo = model.elbo(test, test_eps).mean().item()
        common.report(
            peer="pytorch-" + a.mode,
            epoch=epoch,
            epoch_seconds=seconds,
            samples_per_second=n / seconds,
            test_elbo=test_elbo,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            device=str(dev),
            compile_mode=a.compile_mode if a.mode == "compile" else None,
        )


if __name__ == "__main__":
    main()
