#!/usr/bin/env python3
"""The benchmark's VAE in JAX with jit, as a JAX user would write it at their best: the data set
on the device, the whole step (batch gather, ε, forward, backward, Adam) in one jitted function
with its buffers donated. Same model, hyperparameters, initialisation scheme and estimator as
`vae train`'s defaults (see common.py).

  jax_vae.py [--device gpu|cpu] [--epochs 3] [--batch-size 128]

Prints one JSON line per epoch, as torch_vae.py does."""

import functools
import time

import common
import jax
import jax.numpy as jnp
import numpy as np

LAYERS = ("enc", "heads", "dec", "out")


def init(rng, dim):
    """nn.Linear's default: weight (out, in) and bias both U(-1/sqrt(in), 1/sqrt(in))."""
    shapes = {"enc": (common.HIDDEN, dim), "heads": (2 * common.LATENT, common.HIDDEN),
              "dec": (common.HIDDEN, common.LATENT), "out": (dim, common.HIDDEN)}
    params = {}
    for name in LAYERS:
        out, fan_in = shapes[name]
        bound = 1.0 / np.sqrt(fan_in)
        params[name + "_w"] = jnp.asarray(rng.uniform(-bound, bound, (out, fan_in)), jnp.float32)
        params[name + "_b"] = jnp.asarray(rng.uniform(-bound, bound, (out,)), jnp.float32)
    return params


def elbo(p, x, eps):
    """Per-datapoint ELBO (B,): Bernoulli log-likelihood at z = mu + sigma eps minus analytic KL."""
    h = jax.nn.relu(x @ p["enc_w"].T + p["enc_b"])
    heads = h @ p["heads_w"].T + p["heads_b"]
    mu, logvar = heads[:, : common.LATENT], heads[:, common.LATENT :]
    z = mu + jnp.exp(0.5 * logvar) * eps
    logits = jax.nn.relu(z @ p["dec_w"].T + p["dec_b"]) @ p["out_w"].T + p["out_b"]
    log_px = jnp.sum(x * logits - jax.nn.softplus(logits), axis=1)
    kl = -0.5 * jnp.sum(1 + logvar - mu * mu - jnp.exp(logvar), axis=1)
    return log_px - kl


@functools.partial(jax.jit, static_argnames=("size",), donate_argnums=(0, 1, 2))
def step(p, m, v, t, data, perm, start, key, size):
    idx = jax.lax.dynamic_slice(perm, (start,), (size,))
    x = data[idx]
    eps = jax.random.normal(jax.random.fold_in(key, t), (size, common.LATENT), jnp.float32)
    grads = jax.grad(lambda q: -jnp.mean(elbo(q, x, eps)))(p)
    b1, b2 = common.BETAS
    t1 = t + 1
    m = jax.tree_util.tree_map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
    c1, c2 = 1 - b1**t1, 1 - b2**t1
    p = jax.tree_util.tree_map(lambda q, a, s: q - common.LR * (a / c1) / (jnp.sqrt(s / c2) + common.EPS), p, m, v)
    return p, m, v


def main():
    p = common.parser(__doc__)
    a = p.parse_args()
    platform = {"cuda": "gpu"}.get(a.device, a.device)
    dev = jax.devices(platform)[0]
    train_np, test_np = common.load(a.data, a.train_limit, a.test_limit)
    with jax.default_device(dev):
        rng = np.random.default_rng(a.seed)
        params = init(rng, train_np.shape[1])
        m = jax.tree_util.tree_map(jnp.zeros_like, params)
        v = jax.tree_util.tree_map(jnp.zeros_like, params)
        train = jax.device_put(train_np, dev)
        test = jax.device_put(test_np, dev)
        test_eps = jax.device_put(rng.standard_normal((test_np.shape[0], common.LATENT)).astype(np.float32), dev)
        key = jax.random.PRNGKey(a.seed)
        eval_elbo = jax.jit(lambda q, x, e: jnp.mean(elbo(q, x, e)))
        n, B = train_np.shape[0], a.batch_size
        t = 0
        for epoch in range(1, a.epochs + 1):
            perm = jax.device_put(rng.permutation(n).astype(np.int32), dev)
            jax.block_until_ready(params)
            t0 = time.perf_counter()
            for start in range(0, n, B):  # the partial last batch too, as the trainer does
                params, m, v = step(params, m, v, t, train, perm, start, key, size=min(B, n - start))
                t += 1
            jax.block_until_ready(params)
            seconds = time.perf_counter() - t0
            common.report(peer="jax-jit", epoch=epoch, epoch_seconds=seconds, samples_per_second=n / seconds,
                          test_elbo=float(eval_elbo(params, test, test_eps)), jax=jax.__version__,
                          device=str(dev))


if __name__ == "__main__":
    main()
