"""JAX/Flax rendering of the spec: a ``flax.linen`` module that walks ``spec.layers``, NHWC.

Flax is functional, so the "model" here is a small object holding the module and its parameters; the
Trainer replaces ``model.params`` after each step, which is what ``get_weights`` reads. The rendering
computes the PyTorch rendering's function exactly: explicit symmetric padding (never "SAME"), "VALID"
pooling that rounds down, and Flatten through NCHW so dense kernels keep the canonical (in, out)
layout. Conv kernels are HWIO in Flax, transposed to and from the canonical OIHW at this edge only.

float64 (``dtype="float64"``, ``--precision fp64``) needs JAX's x64 mode, a process-wide switch that
also changes the default dtype of arrays made without one. It is turned on only when a float64 model is
built; every array on the float32 path is made with an explicit dtype (parameters, inputs, the dropout
uniforms, the learning rate), so float32 runs compute the same numbers with x64 on or off.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import jax
import jax.numpy as jnp
import flax
import flax.linen as nn
import optax

from nin_multi.backends.common import carried_seed, carry_seed, kernel_from_canonical, kernel_to_canonical
from nin_multi.config import SHARED_DRAW_INITS, check_model_dtype
from nin_multi.optim import SGDSettings, resolve
from nin_multi.errors import ConfigError
from nin_multi.machine import usable_cores
from nin_multi.spec import (AvgPool, ChannelDropout, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock,
                            NiNSpec, image_hw)
from nin_multi.weights import initial_weights

NAME = "jax"
LAYOUT = "NHWC"
TRAINS = True
PRECISIONS = ("fp32", "bf16", "fp64")
PRECISION_NEEDS = {}  # XLA computes bf16 on every CPU (converting around fp32 kernels without bf16 hardware)
DATA_PARALLEL = "jax.distributed"  # backends/jax_dist.py: its coordinator and processes from the environment
NATIVE_SUFFIXES = (".msgpack",)  # flax.serialization of the parameters


def configure(threads=None, seed=0):
    """XLA sizes its CPU thread pool when its backend starts and offers no count, only on or off:
    ``threads=1`` before the first computation turns multi-threading off; any other count is reported."""
    if not threads:
        return
    from jax._src import xla_bridge
    if threads == 1 and not xla_bridge.backends_are_initialized():
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    elif threads != usable_cores():
        warnings.warn(f"JAX (XLA) sizes its CPU thread pool itself; --threads {threads} is not applied "
                      f"(only --threads 1, before the first computation)", RuntimeWarning, stacklevel=2)


def device() -> str:
    _join_if_launched()
    d = jax.devices()[0]
    return "cpu" if d.platform == "cpu" else f"{d.platform}:{d.id}"


def _join_if_launched() -> None:
    """A worker that JAX's data-parallel launcher started joins ``jax.distributed`` here, before the first
    call that starts XLA's backend (listing the devices starts it, and a started backend can no longer
    join): the driver asks for ``device()`` before it builds anything."""
    from jax._src import xla_bridge
    if jax.distributed.is_initialized() or xla_bridge.backends_are_initialized():
        return
    from nin_multi.cluster import from_env
    ctx = from_env()
    if ctx.launcher == DATA_PARALLEL:
        from nin_multi.backends.jax_dist import join
        join(ctx)


_CHUNK = 1 << 16


@jax.jit
def _uniform_chunk(key):
    return jax.random.uniform(key, (_CHUNK,), jnp.float32, -1.0, 1.0)


@jax.jit
def _normal_chunk(key):
    return jax.random.normal(key, (_CHUNK,), jnp.float32)


def _draw(key, shape, init: str, fan_in: int, fan_out: int, dtype):
    """The torch backend's distributions: ``xavier_uniform_`` (the chapter's) and an untruncated
    ``kaiming_normal_`` on fan-in (Flax's own ``he_normal`` is truncated; its default, ``lecun_normal``,
    is what the book's JAX tab keeps). Drawn in fixed-size chunks keyed ``fold_in(key, chunk)``: XLA
    compiles a random draw per shape (about a second each on a CPU), so drawing each kernel at its own
    shape made building the chapter's network take ~10 s; two compiled chunk draws serve every shape."""
    n = int(np.prod(shape))
    chunk = _uniform_chunk if init == "xavier" else _normal_chunk
    flat = jnp.concatenate([chunk(jax.random.fold_in(key, i)) for i in range(-(-n // _CHUNK))])[:n]
    scale = np.sqrt(6 / (fan_in + fan_out)) if init == "xavier" else np.sqrt(2 / fan_in)
    return (flat.reshape(shape) * np.float32(scale)).astype(dtype)


def _dropout(x, rate: float, key, channels: bool = False):
    """Inverted dropout from float32 uniforms drawn with an explicit dtype: the same masks whether or
    not x64 mode is on (``flax.linen.Dropout`` draws in the default float dtype, which x64 changes).
    ``channels``: one draw per image and channel, shared over H and W (``ChannelDropout``)."""
    keep = 1.0 - rate
    shape = (x.shape[0], 1, 1, x.shape[3]) if channels else x.shape
    mask = jax.random.uniform(key, shape, dtype=jnp.float32) < keep
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros((), x.dtype))


class _Block(nn.Module):
    """A NiN block: one k x k conv, then the 1x1 convs, each followed by ReLU."""

    convs: tuple
    param_dtype: Any
    dtype: Any

    @nn.compact
    def __call__(self, x):
        for c in self.convs:
            x = nn.Conv(c.out_channels, (c.kernel, c.kernel), (c.stride, c.stride),
                        padding=((c.padding, c.padding), (c.padding, c.padding)),
                        dtype=self.dtype, param_dtype=self.param_dtype, name=c.name.split(".")[-1])(x)
            x = nn.relu(x)
        return x


class NiN(nn.Module):
    """The spec's layers in order; ``__call__`` returns every top-level layer's output (the last is
    the logits), so the shape walk and the forward pass are one code path."""

    layers: tuple
    param_dtype: Any = jnp.float32
    dtype: Any = None  # compute dtype; None: the parameters' (bf16 training sets bfloat16)

    @nn.compact
    def __call__(self, x, train: bool = False):
        outs = []
        for layer in self.layers:
            if isinstance(layer, NiNBlock):
                x = _Block(layer.convs, self.param_dtype, self.dtype, name=layer.name)(x)
            elif isinstance(layer, MaxPool):
                x = nn.max_pool(x, (layer.kernel, layer.kernel), (layer.stride, layer.stride), "VALID")
            elif isinstance(layer, AvgPool):  # fixed window: global only where the map is kernel x kernel
                x = nn.avg_pool(x, (layer.kernel, layer.kernel), (layer.stride, layer.stride), "VALID")
            elif isinstance(layer, (Dropout, ChannelDropout)):
                if train and layer.rate > 0:
                    x = _dropout(x, layer.rate, jax.random.fold_in(self.make_rng("dropout"), len(outs)),
                                 channels=isinstance(layer, ChannelDropout))
            elif isinstance(layer, GlobalAvgPool):
                x = x.mean(axis=(1, 2), keepdims=True)
            elif isinstance(layer, Flatten):
                x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # CHW order: canonical dense kernels
            elif isinstance(layer, Dense):
                x = nn.Dense(layer.out_features, dtype=self.dtype, param_dtype=self.param_dtype,
                             name=layer.name)(x)
                x = nn.relu(x) if layer.relu else x
            else:
                raise TypeError(f"no Flax rendering for {type(layer).__name__}")
            outs.append(x)
        return outs


@dataclass
class Model:
    """The Flax module and its parameters (a pytree ``{block: {conv: {kernel, bias}}}``)."""

    module: NiN
    params: Any
    spec: NiNSpec

    @property
    def dtype(self):
        return self.module.param_dtype


def _dtype(dtype: str):
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # see the module docstring
        return jnp.float64
    if dtype != "float32":
        raise ConfigError(f"unknown parameter dtype {dtype!r}; choose float32 or float64")
    return jnp.float32


def build_model(spec: NiNSpec, init: str = "xavier", seed: int = 0, dtype: str = "float32") -> Model:
    """The parameters are drawn here from the spec's shapes (``NiN.init`` would give Flax's default
    LeCun-normal kernels, and runs a forward pass to find shapes the spec already knows)."""
    module = NiN(tuple(spec.layers), _dtype(dtype))
    key = jax.random.PRNGKey(seed)
    params = {}
    for i, p in enumerate(spec.param_layers()):
        if isinstance(p, Dense):
            shape, fans, units = (p.in_features, p.out_features), (p.in_features, p.out_features), p.out_features
            entry = params.setdefault(p.name, {})
        else:
            k2 = p.kernel * p.kernel
            shape, fans = (p.kernel, p.kernel, p.in_channels, p.out_channels), (p.in_channels * k2, p.out_channels * k2)
            units = p.out_channels
            block, conv = p.name.split(".")
            entry = params.setdefault(block, {}).setdefault(conv, {})
        entry["kernel"] = _draw(jax.random.fold_in(key, i), shape, init, *fans, module.param_dtype)
        entry["bias"] = jnp.zeros((units,), module.param_dtype)
    model = carry_seed(Model(module, params, spec), seed)  # the Trainer's per-step dropout keys derive from it
    if init in SHARED_DRAW_INITS:
        set_weights(model, spec, initial_weights(spec, init, seed, dtype))
    return model


_apply = jax.jit(lambda module, params, x, key, train: module.apply({"params": params}, x, train=train,
                                                                    rngs={"dropout": key}),
                 static_argnums=(0, 4))


def layer_shapes(model: Model, spec: NiNSpec, image_size=224, batch: int = 1):
    h, w = image_hw(image_size)
    x = jax.ShapeDtypeStruct((batch, h, w, spec.in_channels), model.dtype)
    outs = jax.eval_shape(lambda p, x: model.module.apply({"params": p}, x), model.params, x)
    return [(layer.name, tuple(o.shape)) for layer, o in zip(spec.layers, outs)]


def count_params(model: Model) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(model.params))


def _param_entries(model: Model, spec: NiNSpec):
    """(spec layer, its dict in the params tree) for every layer that owns weights."""
    for p in spec.param_layers():
        if isinstance(p, Dense):
            yield p, model.params[p.name]
        else:
            block, conv = p.name.split(".")
            yield p, model.params[block][conv]


def get_weights(model: Model, spec: NiNSpec) -> dict:
    out = {}
    for p, entry in _param_entries(model, spec):
        out[f"{p.name}.weight"] = kernel_to_canonical(p, entry["kernel"], LAYOUT)
        out[f"{p.name}.bias"] = np.asarray(entry["bias"])
    return out


def set_weights(model: Model, spec: NiNSpec, weights: dict) -> None:
    dtype = model.dtype
    params = jax.tree_util.tree_map(lambda a: a, flax.core.unfreeze(model.params))
    for p in spec.param_layers():
        w = np.asarray(weights[f"{p.name}.weight"])
        entry = params[p.name] if isinstance(p, Dense) else params[p.name.split(".")[0]][p.name.split(".")[1]]
        entry["kernel"] = jnp.asarray(kernel_from_canonical(p, w, LAYOUT), dtype)
        entry["bias"] = jnp.asarray(np.asarray(weights[f"{p.name}.bias"]), dtype)
    model.params = params


def forward(model: Model, x: np.ndarray, training: bool = False) -> np.ndarray:
    key = jax.random.PRNGKey(carried_seed(model))
    out = _apply(model.module, model.params, jnp.asarray(x, model.dtype), key, training)[-1]
    return np.asarray(out, dtype=np.float64 if model.dtype == jnp.float64 else np.float32)


def save_native(model: Model, path) -> None:
    """Flax's msgpack serialisation of the parameter tree (``flax.serialization.from_bytes`` reads it)."""
    with open(path, "wb") as f:
        f.write(flax.serialization.to_bytes(model.params))


_COMPUTE = {"fp32": None, "bf16": jnp.bfloat16, "fp64": None}


class Trainer:
    """SGD on cross-entropy: ``jax.value_and_grad`` and Optax, one jitted step (traced once per batch
    shape: the last batch of an epoch is smaller). ``optim`` (default: plain SGD at ``lr``) is
    ``optax.sgd`` (momentum, Nesterov) after ``optax.add_decayed_weights`` (coupled weight decay), under
    ``optax.inject_hyperparams`` so that each step is given the schedule's rate, and ``optax.smooth_labels``:
    Optax's formulas are PyTorch's (nin_multi/optim.py), no correction needed. The learning rate is an
    array in the parameters' dtype, so an fp64 update rounds nothing to float32. bf16 computes in
    bfloat16 over float32 parameters, the loss in float32.

    The step is split for ``jax_dist``'s engine: ``_inputs`` puts a batch on this process's device and
    ``step_on`` runs the jitted step on arrays wherever they are, so the engine feeds it a global batch
    sharded over every process (the loss then is the summed loss over the global batch size, as one
    process's mean is).

    Dropout keys are ``fold_in(PRNGKey(seed), step)``: a function of the step count alone, so a run
    resumed from a checkpoint (which stores the step) draws the same masks as one never interrupted.
    """

    def __init__(self, model: Model, lr: float, precision: str = "fp32", optim: SGDSettings | None = None):
        if precision == "fp16":
            raise ConfigError("--precision fp16 is not offered by the JAX backend (it would need loss scaling, "
                              "which bf16 does not): use bf16 or fp32")
        if precision not in _COMPUTE:
            raise ConfigError(f"unknown precision {precision!r}; choose fp32, bf16 or fp64")
        check_model_dtype(precision, np.dtype(model.dtype).name)
        self.model = model
        self.seed = carried_seed(model)
        self.step = 0
        self.in_dtype = model.dtype
        module = model.module.clone(dtype=_COMPUTE[precision]) if _COMPUTE[precision] else model.module
        self.optim = o = resolve(lr, optim)

        def sgd(learning_rate):
            step = optax.sgd(learning_rate, momentum=o.momentum or None, nesterov=o.nesterov)
            return optax.chain(optax.add_decayed_weights(o.weight_decay), step) if o.weight_decay else step

        self.opt = optax.inject_hyperparams(sgd)(learning_rate=jnp.asarray(o.lr_at(0), model.dtype))
        self.opt_state = self.opt.init(model.params)

        def per_example(logits, y, train):
            if not (train and o.label_smoothing):
                return optax.softmax_cross_entropy_with_integer_labels(logits, y)
            target = optax.smooth_labels(jax.nn.one_hot(y, logits.shape[1], dtype=logits.dtype), o.label_smoothing)
            return optax.softmax_cross_entropy(logits, target)

        def metrics(params, x, y, valid, total, train, key):
            """(summed loss / total, (summed loss, correct)) over the rows ``valid`` marks (None: all)."""
            logits = module.apply({"params": params}, x, train=train, rngs={"dropout": key})[-1]
            logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
            per, hit = per_example(logits, y, train), logits.argmax(1) == y
            if valid is not None:
                per, hit = jnp.where(valid, per, jnp.zeros((), per.dtype)), hit & valid
            loss_sum = per.sum()
            return loss_sum / total.astype(loss_sum.dtype), (loss_sum, hit.sum())

        def train_step(params, opt_state, x, y, valid, total, key, lr):
            grad_of = jax.value_and_grad(metrics, has_aux=True)
            (_, (loss_sum, correct)), grads = grad_of(params, x, y, valid, total, True, key)
            opt_state.hyperparams["learning_rate"] = lr  # the schedule's rate for this step
            updates, opt_state = self.opt.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss_sum, correct

        self._train = jax.jit(train_step)
        self._eval = jax.jit(lambda params, x, y: metrics(params, x, y, None, jnp.int32(1), False,
                                                          jax.random.PRNGKey(0))[1])

    def _inputs(self, x, y):
        return jnp.asarray(x, self.in_dtype), jnp.asarray(y, jnp.int32)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: int | None = None) -> tuple[float, int]:
        """One step at the driver's rate ``lr``; ``total``: the global batch this batch is a share of (the
        contract's meaning; JAX's own engine feeds ``step_on`` a global array instead)."""
        loss, correct = self.step_on(*self._inputs(x, y), None, total or len(y), lr)
        return float(loss), int(correct)

    def step_on(self, xs, ys, valid, total: int, lr: float):
        """The jitted step on arrays already placed: this process's batch, or a data-parallel engine's global
        batch (sharded over the processes, ``model.params`` and ``opt_state`` replicated), where XLA adds the
        gradients' all-reduce. ``valid`` marks the rows that count (None: all); the loss minimised is their
        summed loss / ``total``; ``lr`` is the driver's rate for this step. The key, rate and total go in as
        host values, which any placement takes. Returns the summed loss and the correct count as arrays
        (replicated, for an engine's batch)."""
        key = np.asarray(jax.random.fold_in(jax.random.PRNGKey(self.seed), self.step))
        lr = np.asarray(lr, self.in_dtype)
        params, self.opt_state, loss, correct = self._train(self.model.params, self.opt_state, xs, ys, valid,
                                                            np.int32(total), key, lr)
        self.model.params = params
        self.step += 1
        return loss, correct

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        loss, correct = self.eval_on(self.model.params, *self._inputs(x, y))
        return float(loss), int(correct)

    def eval_on(self, params, xs, ys):
        """The plain cross-entropy's sum and the correct count of a batch, with ``params`` (an engine's
        worker evaluates its share with its own replica)."""
        return self._eval(params, xs, ys)

    def extra_state(self) -> dict:
        """Beyond the weights: the dropout keys' inputs (seed, steps taken) make a resumed run's masks the
        uninterrupted run's; with momentum, the optimizer state's arrays (plain SGD keeps none)."""
        state = {"jax_seed": np.int64(self.seed), "jax_step": np.int64(self.step)}
        if self.optim.momentum:
            leaves = jax.tree_util.tree_leaves(self.opt_state)
            state.update({f"jax_opt.{i}": np.asarray(a) for i, a in enumerate(leaves)})
        return state

    def load_extra_state(self, state: dict) -> None:
        self.seed, self.step = int(state["jax_seed"]), int(state["jax_step"])
        if "jax_opt.0" in state:
            leaves, tree = jax.tree_util.tree_flatten(self.opt_state)
            self.opt_state = jax.tree_util.tree_unflatten(
                tree, [jnp.asarray(state[f"jax_opt.{i}"], a.dtype) for i, a in enumerate(leaves)])
