"""JAX's part of ``nin-multi bench``: its GEMM probe and its peer path, the book's jitted loss with an
eager optax update. JAX's fast path, ``jax.jit`` of the whole step, is the backend's Trainer itself, so
it has no "fast" peer of its own (``FAST_IS_DEFAULT``). The names every ``<backend>_bench`` module offers
are listed in ``torch_bench``."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

FAST_IS_DEFAULT = True
LOWER_PRECISIONS_ALONE = False
DESCRIPTIONS = {"chapter": "jit loss, eager update", "default": "Trainer: jax.jit step (fast)"}


class JaxChapter:
    """The book's JAX loop (d2l's ``Classifier.loss`` under ``jax.jit``, ``fit_epoch``'s
    ``jax.value_and_grad`` of it, then the optax SGD update applied eagerly, outside any jit)."""

    def __init__(self, backend, model, lr):
        module = model.module
        self.model, self.step = model, 0

        def loss(params, x, y, key, train):
            logits = module.apply({"params": params}, x, train=train, rngs={"dropout": key})[-1]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        self.loss = jax.jit(loss, static_argnums=4)
        self.grad = jax.value_and_grad(self.loss, has_aux=True)
        self.opt = optax.sgd(lr)
        self.state = self.opt.init(model.params)

    def train_step(self, x, y):
        key = jax.random.fold_in(jax.random.PRNGKey(0), self.step)
        self.step += 1
        (loss, logits), grads = self.grad(self.model.params, x, y, key, True)
        updates, self.state = self.opt.update(grads, self.state)
        self.model.params = optax.apply_updates(self.model.params, updates)
        return float(loss) * len(y), int((logits.argmax(1) == y).sum())

    def eval_step(self, x, y):
        loss, logits = self.loss(self.model.params, x, y, jax.random.PRNGKey(0), False)
        return float(loss) * len(y), int((logits.argmax(1) == y).sum())


PEERS = {"chapter": JaxChapter}


def gemm(n: int, precision: str):
    if precision == "fp64" and not jax.config.jax_enable_x64:
        raise NotImplementedError("JAX computes float64 only in x64 mode (turned on by an fp64 model)")
    dtype = {"fp32": jnp.float32, "bf16": jnp.bfloat16, "fp64": jnp.float64}[precision]
    a = jax.random.uniform(jax.random.PRNGKey(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.uniform(jax.random.PRNGKey(1), (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(jnp.dot)
    out = {}

    def run():
        out["c"] = dot(a, b)

    d = jax.devices()[0]
    return "jnp.dot (jit)", "cpu" if d.platform == "cpu" else f"{d.platform}:{d.id}", run, \
        lambda: out["c"].block_until_ready()


def sync(model):
    """JAX dispatches asynchronously: wait for the updated parameters."""
    return lambda: jax.block_until_ready(model.params)


def version() -> str:
    return jax.__version__


def environment() -> dict:
    return {}
