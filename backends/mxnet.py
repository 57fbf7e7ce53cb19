"""MXNet Gluon rendering of the spec: ``nn.HybridSequential`` of blocks named after the spec's layers, NCHW,
the book's ``init.Xavier()``.

Gluon stores conv kernels OIHW like the canonical weights, so only dense kernels need a transpose at the
edge (Gluon stores them (out, in)). Top-level children follow ``spec.layers`` one to one, which is how
parameters are found by the spec's names: no second layer list is kept here.
"""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import nullcontext

import numpy as np

from nin_multi.backends.common import carried_seed, carry_seed, kernel_from_canonical, kernel_to_canonical
from nin_multi.config import INITS, SHARED_DRAW_INITS, check_model_dtype
from nin_multi.errors import ConfigError
from nin_multi import machine
from nin_multi.machine import default_threads, usable_cores
from nin_multi.optim import SGDSettings, resolve
from nin_multi.spec import (AvgPool, ChannelDropout, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock,
                            NiNSpec, image_hw)
from nin_multi.weights import initial_weights

# MXNet 1.9.1 still reads ``numpy.bool``, an alias NumPy 1.24 removed; restore it before the import
# (looked up in vars(): getattr on NumPy 1.2x warns).
if "bool" not in vars(np):
    np.bool = np.bool_

# MXNet sizes its OpenMP pool once, at import, from OMP_NUM_THREADS (unset: half the cores, as if every
# core were a hyperthread) and lowers the process-wide OpenMP count PyTorch reads. Ask for every core,
# as the other backends use, and give PyTorch its thread count back.
_torch = sys.modules.get("torch")
_torch_threads = _torch.get_num_threads() if _torch is not None else None
_omp_env = os.environ.get("OMP_NUM_THREADS")
if _omp_env is None:
    os.environ["OMP_NUM_THREADS"] = str(usable_cores())
import mxnet as mx  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402
from mxnet import init as mx_init  # noqa: E402
from mxnet.contrib import amp  # noqa: E402
from mxnet.gluon import nn  # noqa: E402

if _omp_env is None:
    del os.environ["OMP_NUM_THREADS"]
if _torch is not None:
    _torch.set_num_threads(_torch_threads)
_POOL_THREADS = default_threads()  # what MXNet read at import: the environment is as it was again

NAME = "mxnet"
LAYOUT = "NCHW"
TRAINS = True
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")  # bf16 on a CPU, fp16 on a GPU
#: MXNet 1.9.1's oneDNN has bf16 kernels only for AVX-512 BF16 and AMX: below them a bf16 convolution ends
#: in "could not create a primitive descriptor iterator"; its CPU kernels have no float16 path.
PRECISION_NEEDS = {"bf16": ("AVX-512 BF16", "AMX"), "fp16": ("gpu",)}
DATA_PARALLEL = "dmlc"  # mxnet_dist.py: the dist_sync kvstore
NATIVE_SUFFIXES = (".params",)  # Gluon's save_parameters

#: "xavier" is the book's ``init.Xavier()`` (uniform, fan average, magnitude 3 = Glorot uniform);
#: "kaiming" is He normal for ReLU on fan-in, like PyTorch's ``kaiming_normal_`` (MSRAPrelu's defaults
#: would average the fans and assume a PReLU slope of 0.25).
_INITS = {
    "xavier": lambda: mx_init.Xavier(rnd_type="uniform", factor_type="avg", magnitude=3),
    "kaiming": lambda: mx_init.MSRAPrelu(factor_type="in", slope=0.0),
}


def configure(threads=None, seed=0):
    """Seeds MXNet; its thread pool was fixed at import, so a different ``threads`` can only be reported."""
    mx.random.seed(seed)  # Gluon's initializers draw from MXNet's generator, not NumPy's
    if threads is not None and threads != _POOL_THREADS:
        warnings.warn(f"MXNet sized its thread pool at import ({_POOL_THREADS} threads) and cannot change it: "
                      f"set OMP_NUM_THREADS={threads} in the environment before starting Python", stacklevel=2)


def device() -> str:
    return "gpu(0)" if mx.context.num_gpus() > 0 else "cpu"


def _ctx() -> mx.Context:
    return mx.gpu(0) if mx.context.num_gpus() > 0 else mx.cpu()


def _prefix(name: str) -> str:
    return name.split(".")[-1] + "_"


def _render(layer) -> nn.HybridBlock:
    if isinstance(layer, NiNBlock):
        block = nn.HybridSequential(prefix=_prefix(layer.name))
        with block.name_scope():
            for c in layer.convs:
                block.add(nn.Conv2D(c.out_channels, c.kernel, c.stride, c.padding, in_channels=c.in_channels,
                                    activation="relu", prefix=_prefix(c.name)))
        return block
    if isinstance(layer, MaxPool):
        return nn.MaxPool2D(layer.kernel, layer.stride, ceil_mode=False, prefix=_prefix(layer.name))
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.rate, prefix=_prefix(layer.name))
    if isinstance(layer, ChannelDropout):  # one draw per (image, channel): the mask is shared over H and W
        return nn.Dropout(layer.rate, axes=(2, 3), prefix=_prefix(layer.name))
    if isinstance(layer, AvgPool):
        return nn.AvgPool2D(layer.kernel, layer.stride, ceil_mode=False, prefix=_prefix(layer.name))
    if isinstance(layer, GlobalAvgPool):
        return nn.GlobalAvgPool2D(prefix=_prefix(layer.name))
    if isinstance(layer, Flatten):
        return nn.Flatten(prefix=_prefix(layer.name))
    if isinstance(layer, Dense):
        return nn.Dense(layer.out_features, "relu" if layer.relu else None, in_units=layer.in_features,
                        prefix=_prefix(layer.name))
    raise TypeError(f"no MXNet rendering for {type(layer).__name__}")


def build_model(spec: NiNSpec, init: str = "xavier", seed: int = 0, dtype: str = "float32") -> nn.HybridSequential:
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    mx.random.seed(seed)
    model = nn.HybridSequential(prefix="")
    with model.name_scope():
        for layer in spec.layers:
            model.add(_render(layer))
    model.initialize(_INITS.get(init, mx_init.Zero)(), ctx=_ctx())  # biases keep their own initializer: zeros
    if dtype != "float32":
        model.cast(dtype)  # float64: drawn in float32, then widened
    if init in SHARED_DRAW_INITS:
        set_weights(model, spec, initial_weights(spec, init, seed, dtype))
    model.hybridize(static_alloc=True, static_shape=True)
    return carry_seed(model, seed)  # the Trainer's per-step dropout seeds derive from it


def _dtype(model: nn.HybridSequential) -> str:
    params = list(model.collect_params().values())
    return np.dtype(params[0].dtype).name if params else "float32"


def layer_shapes(model: nn.HybridSequential, spec: NiNSpec, image_size=224, batch: int = 1):
    h, w = image_hw(image_size)
    x = mx.nd.zeros((batch, spec.in_channels, h, w), ctx=_ctx(), dtype=_dtype(model))
    out = []
    with autograd.predict_mode():
        for layer, block in zip(spec.layers, model):
            x = block(x)
            out.append((layer.name, tuple(x.shape)))
    return out


def count_params(model: nn.HybridSequential) -> int:
    return sum(p.data().size for p in model.collect_params().values())


def _param_blocks(model: nn.HybridSequential, spec: NiNSpec):
    for layer, block in zip(spec.layers, model):
        if isinstance(layer, NiNBlock):
            yield from zip(layer.convs, block)
        elif isinstance(layer, Dense):
            yield layer, block


def get_weights(model: nn.HybridSequential, spec: NiNSpec) -> dict:
    out = {}
    for p, b in _param_blocks(model, spec):
        out[f"{p.name}.weight"] = kernel_to_canonical(p, b.weight.data().asnumpy(), LAYOUT)
        out[f"{p.name}.bias"] = b.bias.data().asnumpy()
    return out


def set_weights(model: nn.HybridSequential, spec: NiNSpec, weights: dict) -> None:
    for p, b in _param_blocks(model, spec):
        dtype = b.weight.dtype
        w = np.asarray(weights[f"{p.name}.weight"], dtype=dtype)
        b.weight.set_data(mx.nd.array(kernel_from_canonical(p, w, LAYOUT), ctx=_ctx(), dtype=dtype))
        b.bias.set_data(mx.nd.array(np.asarray(weights[f"{p.name}.bias"], dtype=dtype), ctx=_ctx(), dtype=dtype))


def forward(model: nn.HybridSequential, x: np.ndarray, training: bool = False) -> np.ndarray:
    mode = autograd.train_mode() if training else autograd.predict_mode()
    dtype = _dtype(model)
    with mode:
        return model(mx.nd.array(x, ctx=_ctx(), dtype=dtype)).astype(dtype).asnumpy()


def save_native(model: nn.HybridSequential, path) -> None:
    model.save_parameters(str(path))


_amp_precision = None  # the precision AMP was turned on for in this process; it cannot be turned off


def _use_amp(model: nn.HybridSequential, precision: str) -> bool:
    """Turn on AMP for ``precision``; True when the loss needs scaling (fp16).

    AMP patches MXNet's operators process-wide and for good, so every graph traced afterwards (in any
    model) computes its convolutions and dense layers in the low precision; re-hybridizing drops a graph
    traced before. A Trainer of another precision later in the same process would silently compute in
    AMP's, so it is refused.
    """
    global _amp_precision
    if _amp_precision not in (None, precision):
        raise ConfigError(f"MXNet computes in {_amp_precision} for the rest of this process (its AMP, turned on "
                          f"by an earlier {_amp_precision} run, cannot be turned off), so a {precision} run here "
                          f"would not be {precision}: run it in a process of its own")
    if precision in ("fp32", "fp64"):
        return False
    on_gpu = mx.context.num_gpus() > 0
    if precision == "fp16" and not on_gpu:
        raise ConfigError("--precision fp16 needs a GPU; MXNet's CPU kernels have no float16 path (use bf16)")
    if precision == "bf16" and on_gpu:
        raise ConfigError("--precision bf16 is CPU-only in MXNet 1.9.1 (oneDNN); use fp16 on a GPU")
    if precision == "bf16" and machine.cpu_class() not in PRECISION_NEEDS["bf16"]:  # before AMP patches anything
        raise ConfigError(f"--precision bf16 needs a CPU with {' or '.join(PRECISION_NEEDS['bf16'])} in mxnet; "
                          f"this is {machine.describe()}: use --precision fp32, or --precision auto")
    if precision not in ("fp16", "bf16"):
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    amp.init(target_dtype="float16" if precision == "fp16" else "bfloat16")
    _amp_precision = precision
    model.hybridize(static_alloc=True, static_shape=True)
    return precision == "fp16"


@mx.optimizer.register
class ExactSGD(mx.optimizer.Optimizer):
    """SGD written as NDArray arithmetic, for float64 runs. MXNet's fused ``sgd_update`` and
    ``sgd_mom_update`` operators take the learning rate, the momentum and the gradient's rescale factor
    as 32-bit floats (lr 0.05 becomes 0.0500000007), so a float64 update would be off by ~1.5e-8
    relative every step; NDArray's scalar operators take doubles. The same formulas as ``sgd`` (the
    velocity holds the learning rate: ``v = m * v - lr * (rescale * g + wd * w); w += v``) and, with
    ``nesterov``, as ``nag`` (``s = m * s + g'; w -= lr * (g' + m * s)``)."""

    def __init__(self, momentum=0.0, nesterov=False, **kwargs):
        super().__init__(**kwargs)
        self.momentum, self.nesterov = momentum, nesterov

    def create_state(self, index, weight):
        return mx.nd.zeros(weight.shape, weight.context, dtype=weight.dtype) if self.momentum else None

    def update(self, index, weight, grad, state):
        self._update_count(index)
        lr, wd = self._get_lr(index), self._get_wd(index)
        step = grad * self.rescale_grad
        if wd:
            step = step + wd * weight
        if state is None:
            weight[:] = weight - lr * step
        elif self.nesterov:
            state[:] = self.momentum * state + step
            weight[:] = weight - lr * (step + self.momentum * state)
        else:
            state[:] = self.momentum * state - lr * step
            weight[:] = weight + state


class Trainer:
    """SGD on cross-entropy, the book's Gluon loop: ``trainer.step(batch)`` averages the summed gradient.
    ``optim`` (default: plain SGD at ``lr``) is rendered in Gluon's own optimizer, ``sgd`` with
    ``momentum`` and ``wd`` (``nag`` for Nesterov), and computes PyTorch's meaning (nin_multi/optim.py):
    ``set_learning_rate`` to the driver's rate each step, and ``sgd``'s velocity, which holds the rate
    this Trainer applied last (the optimizer's own ``learning_rate``, kept in a checkpoint with its
    state), is carried over by a momentum of ``m * lr / last`` (``nag`` keeps the rate out of its state
    and needs no correction); label smoothing is the cross-entropy against ``one_hot``'s smoothed targets.
    ``with_kvstore`` rebuilds the Gluon Trainer on a data-parallel kvstore (mxnet_dist), the same
    optimizer object, so a worker steps exactly this Trainer.

    Dropout masks come from MXNet's global generator, whose state cannot be read back for a checkpoint.
    Instead each step reseeds it from (seed, step number), so the masks are a function of the step count
    alone and a run resumed from a checkpoint draws the same masks as one never interrupted.
    """

    def __init__(self, model: nn.HybridSequential, lr: float, precision: str = "fp32",
                 optim: SGDSettings | None = None):
        self.model = model
        self.ctx = _ctx()
        self.dtype = _dtype(model)
        check_model_dtype(precision, self.dtype)
        self.seed = carried_seed(model)
        self.step = 0  # the dropout masks' position, not the schedule's
        self.scaled = _use_amp(model, precision)
        self.optim = o = resolve(lr, optim)
        kwargs = {"learning_rate": o.lr_at(0), "momentum": o.momentum, "wd": o.weight_decay}
        optimizer = ExactSGD(nesterov=o.nesterov, **kwargs) if precision == "fp64" else \
            mx.optimizer.create("nag" if o.nesterov else "sgd", **kwargs)
        self.with_kvstore(optimizer, None)
        self.carry = o.momentum and not o.nesterov  # the velocity holds the rate
        self.smooth = o.label_smoothing
        self.plain_loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=False) if self.smooth else self.plain_loss

    def with_kvstore(self, optimizer, kvstore) -> None:
        """The Gluon Trainer of ``optimizer`` on ``kvstore`` (None: this process alone); with a kvstore the
        optimizer stays on the workers, which only sum their gradients through it."""
        extra = {} if kvstore is None else {"kvstore": kvstore, "update_on_kvstore": False}
        self.trainer = gluon.Trainer(self.model.collect_params(), optimizer, **extra)
        if self.scaled:
            amp.init_trainer(self.trainer)

    def _inputs(self, x, y):
        return mx.nd.array(x, ctx=self.ctx, dtype=self.dtype), mx.nd.array(y, ctx=self.ctx, dtype=self.dtype)

    def _metrics(self, logits, loss, y: np.ndarray) -> tuple[float, int]:
        return float(loss.sum().asscalar()), int((logits.asnumpy().argmax(1) == y).sum())

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: int | None = None) -> tuple[float, int]:
        """The summed gradient averaged over ``total`` examples: this batch's in one process; in a
        data-parallel run the global batch, whose other shares the kvstore adds (mxnet_dist)."""
        xs, ys = self._inputs(x, y)
        state = np.random.SeedSequence((self.seed, self.step)).generate_state(1)[0]
        mx.random.seed(int(state) & 0x7FFFFFFF, ctx=self.ctx)
        self.step += 1
        with autograd.record():
            logits = self.model(xs).astype(self.dtype)
            loss = self._loss(logits, ys)
            with amp.scale_loss(loss, self.trainer) if self.scaled else nullcontext(loss) as scaled:
                scaled.backward()
        if self.carry:
            self.trainer.optimizer.momentum = self.optim.momentum * (lr / self.trainer.learning_rate)
        self.trainer.set_learning_rate(lr)
        self.trainer.step(total or len(y))
        return self._metrics(logits, loss, y)

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        xs, ys = self._inputs(x, y)
        with autograd.predict_mode():
            logits = self.model(xs).astype(self.dtype)
        return self._metrics(logits, self.plain_loss(logits, ys), y)

    def _loss(self, logits, ys):
        if not self.smooth:
            return self.loss(logits, ys)
        k = logits.shape[1]
        return self.loss(logits, mx.nd.one_hot(ys, k, on_value=1 - self.smooth + self.smooth / k,
                                               off_value=self.smooth / k, dtype=self.dtype))

    def extra_state(self) -> dict:
        """What a checkpoint needs beyond the weights: the dropout seeds' inputs (seed, steps taken) stand
        in for the generator state MXNet cannot export; with momentum, the Trainer's saved states (bytes)."""
        state = {"mx_seed": np.int64(self.seed), "mx_step": np.int64(self.step)}
        if self.optim.momentum:
            with tempfile.TemporaryDirectory() as d:
                self.trainer.save_states(os.path.join(d, "states"))
                with open(os.path.join(d, "states"), "rb") as f:
                    state["mx_optimizer"] = np.frombuffer(f.read(), np.uint8)
        return state

    def load_extra_state(self, state: dict) -> None:
        self.seed, self.step = int(state["mx_seed"]), int(state["mx_step"])
        if "mx_optimizer" in state:
            with tempfile.TemporaryDirectory() as d:
                with open(os.path.join(d, "states"), "wb") as f:
                    f.write(np.asarray(state["mx_optimizer"], np.uint8).tobytes())
                self.trainer.load_states(os.path.join(d, "states"))
