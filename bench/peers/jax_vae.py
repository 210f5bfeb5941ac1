#!/usr/bin/env python3
"""The benchmark's VAE in JAX, as a JAX user would write it at their best: the data set on the
device, the whole step (batch gather, ε, forward, backward, Adam) in one jitted function with
its buffers donated. Same model, hyperparameters, initialisation scheme and estimator as
`vae train`'s defaults (see common.py). Two ways to run an epoch:

  --mode step   one dispatch of the jitted step per minibatch
  --mode scan   the whole epoch in one jitted function: the permuted epoch reshaped to (steps,
                B, D) and the step scanned over it with lax.scan, parameters and Adam's state
                carried and donated (the fastest JAX there is); the partial last batch, if
                any, is one more dispatch of the step, as the trainer takes it
  --mode vmap   --models N models (their own initialisation, shuffle and noise) at once: the
                scanned epoch vmapped over the models ("model ensembling"), the peer of
                `vae sweep --models N`; the epoch's seconds are all N models'

  jax_vae.py [--device gpu|cpu] [--mode step|scan|vmap] [--models 1]
             [--precision default|highest|tensorfloat32] [--epochs 3] [--batch-size 128]

--precision sets jax_default_matmul_precision: `highest` is fp32 on a GPU, `tensorfloat32` TF32
(JAX's default on recent NVIDIA cards is TF32 too). Prints one JSON line per epoch, as
torch_vae.py does."""

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
    x = data[jax.lax.dynamic_slice(perm, (start,), (size,))]
    return train_step(p, m, v, t, x, key)


def adam(p, m, v, grads, t):
    """torch.optim.Adam's update at step t + 1 (t counts from 0)."""
    b1, b2 = common.BETAS
    t1 = t + 1
    m = jax.tree_util.tree_map(lambda a, g: b1 * a + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda a, g: b2 * a + (1 - b2) * g * g, v, grads)
    c1, c2 = 1 - b1**t1, 1 - b2**t1
    p = jax.tree_util.tree_map(lambda q, a, s: q - common.LR * (a / c1) / (jnp.sqrt(s / c2) + common.EPS), p, m, v)
    return p, m, v


def train_step(p, m, v, t, x, key):
    eps = jax.random.normal(jax.random.fold_in(key, t), (x.shape[0], common.LATENT), jnp.float32)
    grads = jax.grad(lambda q: -jnp.mean(elbo(q, x, eps)))(p)
    return adam(p, m, v, grads, t)


def scan_steps(p, m, v, t, data, perm, key, steps, size):
    """`steps` full batches of `size` rows, in the order of perm, scanned."""
    batches = data[perm[: steps * size]].reshape(steps, size, data.shape[1])

    def body(carry, x):
        p, m, v, t = carry
        p, m, v = train_step(p, m, v, t, x, key)
        return (p, m, v, t + 1), None

    (p, m, v, _), _ = jax.lax.scan(body, (p, m, v, t), batches)
    return p, m, v


scan_epoch = functools.partial(jax.jit, static_argnames=("steps", "size"), donate_argnums=(0, 1, 2))(scan_steps)


@functools.partial(jax.jit, static_argnames=("steps", "size"), donate_argnums=(0, 1, 2))
def vmap_epoch(p, m, v, t, data, perms, keys, steps, size):
    """The scanned epoch of every model at once: parameters, state, permutation and key have a
    leading model axis."""
    one = lambda p, m, v, perm, key: scan_steps(p, m, v, t, data, perm, key, steps, size)
    return jax.vmap(one)(p, m, v, perms, keys)


@functools.partial(jax.jit, static_argnames=("size",), donate_argnums=(0, 1, 2))
def vmap_step(p, m, v, t, data, perms, start, keys, size):
    """One step of every model (the partial last batch)."""
    one = lambda p, m, v, perm, key: train_step(p, m, v, t, data[jax.lax.dynamic_slice(perm, (start,), (size,))], key)
    return jax.vmap(one)(p, m, v, perms, keys)


def main():
    p = common.parser(__doc__)
    p.add_argument("--mode", choices=["step", "scan", "vmap"], default="step")
    p.add_argument("--models", type=int, default=1, help="models trained at once by --mode vmap")
    p.add_argument("--precision", choices=["default", "highest", "tensorfloat32"], default="default")
    a = p.parse_args()
    if a.models < 1 or (a.models > 1 and a.mode != "vmap"):
        p.error("--models: at least 1, and more only with --mode vmap")
    if a.mode == "vmap":
        return main_vmap(a)
    if a.precision != "default":
        jax.config.update("jax_default_matmul_precision", a.precision)
    platform = {"cuda": "gpu"}.get(a.device, a.device)
    dev = jax.devices(platform)[0]
    train_np, test_np = common.load(a.data, a.train_limit, a.test_limit)
    with jax.default_device(dev):
        rng = np.random.default_rng(a.seed)
        # Committed to the device from the start, as the step's outputs are: otherwise the first
        # call with the outputs compiles the epoch's function again (in a timed epoch).
        params = jax.device_put(init(rng, train_np.shape[1]), dev)
        m = jax.device_put(jax.tree_util.tree_map(jnp.zeros_like, params), dev)
        v = jax.device_put(jax.tree_util.tree_map(jnp.zeros_like, params), dev)
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
            start = 0
            if a.mode == "scan" and n // B > 0:
                params, m, v = scan_epoch(params, m, v, t, train, perm, key, steps=n // B, size=B)
                t, start = t + n // B, n // B * B
            for start in range(start, n, B):  # the partial last batch too, as the trainer does
                params, m, v = step(params, m, v, t, train, perm, start, key, size=min(B, n - start))
                t += 1
            jax.block_until_ready(params)
            seconds = time.perf_counter() - t0
            common.report(peer=f"jax-{a.mode}", precision=a.precision, epoch=epoch, epoch_seconds=seconds,
                          samples_per_second=n / seconds, test_elbo=float(eval_elbo(params, test, test_eps)),
                          jax=jax.__version__, device=str(dev))


def main_vmap(a):
    """--mode vmap: a.models models, model k initialised, shuffled and noised from seed + k."""
    if a.precision != "default":
        jax.config.update("jax_default_matmul_precision", a.precision)
    dev = jax.devices({"cuda": "gpu"}.get(a.device, a.device))[0]
    train_np, test_np = common.load(a.data, a.train_limit, a.test_limit)
    stack = lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)
    with jax.default_device(dev):
        rngs = [np.random.default_rng(a.seed + k) for k in range(a.models)]
        params = jax.device_put(stack([init(r, train_np.shape[1]) for r in rngs]), dev)
        m = jax.device_put(jax.tree_util.tree_map(jnp.zeros_like, params), dev)
        v = jax.device_put(jax.tree_util.tree_map(jnp.zeros_like, params), dev)
        train = jax.device_put(train_np, dev)
        test = jax.device_put(test_np, dev)
        test_eps = jax.device_put(rngs[0].standard_normal((test_np.shape[0], common.LATENT)).astype(np.float32), dev)
        keys = jax.device_put(jnp.stack([jax.random.PRNGKey(a.seed + k) for k in range(a.models)]), dev)
        eval_elbo = jax.jit(jax.vmap(lambda q, x, e: jnp.mean(elbo(q, x, e)), in_axes=(0, None, None)))
        n, B = train_np.shape[0], a.batch_size
        t = 0
        for epoch in range(1, a.epochs + 1):
            perms = jax.device_put(np.stack([r.permutation(n) for r in rngs]).astype(np.int32), dev)
            jax.block_until_ready(params)
            t0 = time.perf_counter()
            start = 0
            if n // B > 0:
                params, m, v = vmap_epoch(params, m, v, t, train, perms, keys, steps=n // B, size=B)
                t, start = t + n // B, n // B * B
            if start < n:
                params, m, v = vmap_step(params, m, v, t, train, perms, start, keys, size=n - start)
                t += 1
            jax.block_until_ready(params)
            seconds = time.perf_counter() - t0
            elbos = [float(e) for e in eval_elbo(params, test, test_eps)]
            common.report(peer="jax-vmap", precision=a.precision, models=a.models, epoch=epoch, epoch_seconds=seconds,
                          model_epochs_per_second=a.models / seconds, samples_per_second=a.models * n / seconds,
                          test_elbo=elbos[0], test_elbo_median=float(np.median(elbos)), jax=jax.__version__,
                          device=str(dev))


if __name__ == "__main__":
    main()
