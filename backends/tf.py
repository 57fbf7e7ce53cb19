"""TensorFlow/Keras rendering of the spec: ``keras.Sequential`` of named blocks, NHWC.

It computes the PyTorch rendering's function exactly, which TensorFlow's defaults would not: padding is
symmetric (``padding="same"`` only where it is, an explicit ``ZeroPadding2D`` elsewhere: "same" pads
bottom/right first when the stride is above 1 or the kernel even), pooling
is "valid" (rounds down, as PyTorch), and Flatten goes through NCHW so that dense kernels read
features in PyTorch's order and keep the canonical (in, out) layout. Conv kernels are HWIO in Keras,
transposed to and from the canonical OIHW at this edge only.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager

import numpy as np

from nin_multi.backends.common import kernel_from_canonical, kernel_to_canonical
from nin_multi.config import SHARED_DRAW_INITS, check_model_dtype
from nin_multi.errors import ConfigError
from nin_multi.machine import default_threads
from nin_multi.optim import SGDSettings, resolve
from nin_multi.spec import (AvgPool, ChannelDropout, Conv, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock,
                            NiNSpec, image_hw)
from nin_multi.weights import initial_weights

_ABSL_MESSAGE = re.compile(r"([IWEF])\d{4} ")  # absl's "I0000 ..." line; unprefixed lines continue one
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog()"


def _import_tensorflow():
    """TensorFlow 2.21 logs its oneDNN notice while it loads, before ``TF_CPP_MIN_LOG_LEVEL`` takes
    effect. Hold back what it writes to stderr meanwhile and pass on each message at or above that
    level (2 unless the user set one: warnings and notices hidden, errors shown)."""
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    level = int(level) if level.isdigit() else 0
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no stderr file descriptor to borrow
        import tensorflow
        return tensorflow
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            keep = True
            for line in held.read().decode(errors="replace").splitlines(keepends=True):
                if m := _ABSL_MESSAGE.match(line):
                    keep = "IWEF".index(m[1]) >= level
                if keep and not (level and line.startswith(_ABSL_PREAMBLE)):
                    sys.stderr.write(line)
    return tensorflow


tf = _import_tensorflow()
import keras  # noqa: E402  (after TensorFlow, its backend, has loaded quietly)

NAME = "tensorflow"
LAYOUT = "NHWC"
TRAINS = True
PRECISIONS = ("fp32", "bf16", "fp16", "fp64")  # fp16 on a GPU
PRECISION_NEEDS = {"fp16": ("gpu",)}  # mixed_float16's loss scaling and kernels are for GPUs
DATA_PARALLEL = "tf_config"  # tf_dist.py: MultiWorkerMirroredStrategy
NATIVE_SUFFIXES = (".weights.h5",)  # Keras insists on this ending

_POLICIES = {"fp32": None, "bf16": "mixed_bfloat16", "fp16": "mixed_float16", "fp64": None}


def configure(threads=None, seed=0):
    """TensorFlow fixes its thread pools when its runtime starts (at the first op); later calls that
    ask for a different count can only say so."""
    n = threads or default_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:
        if threads and tf.config.threading.get_intra_op_parallelism_threads() != threads:
            warnings.warn(f"TensorFlow is already running; its thread count stays "
                          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'automatic'}, "
                          f"not {threads}", RuntimeWarning, stacklevel=2)
    keras.utils.set_random_seed(seed)


def device() -> str:
    return "gpu:0" if tf.config.list_physical_devices("GPU") else "cpu"


def _initializer(init: str):
    # The torch backend's distributions: glorot_uniform is xavier_uniform_, but Keras's he_normal is
    # truncated where kaiming_normal_ is not.
    if init == "xavier":
        return keras.initializers.GlorotUniform()
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def _conv_relu(conv: Conv, init: str):
    """Keras's own ``padding="same"`` where it equals the spec's symmetric padding (stride 1, odd kernel,
    padding (k - 1) / 2: the chapter's 5x5 and 3x3 convs, and the book's own Keras code), which saves
    a padded copy of the activations each step (measured ~5% of a training step); an explicit
    ``ZeroPadding2D`` and a "valid" conv anywhere else, where "same" would pad bottom/right first."""
    name = conv.name.split(".")[-1]
    same = conv.padding > 0 and conv.stride == 1 and 2 * conv.padding == conv.kernel - 1
    pad = [] if same or not conv.padding else [keras.layers.ZeroPadding2D(conv.padding,
                                                                          name=name.replace("conv", "pad"))]
    return pad + [keras.layers.Conv2D(conv.out_channels, conv.kernel, conv.stride,
                                      padding="same" if same else "valid", activation="relu",
                                      kernel_initializer=_initializer(init), bias_initializer="zeros", name=name)]


def _render(layer, init: str) -> keras.layers.Layer:
    if isinstance(layer, NiNBlock):
        return keras.Sequential([m for conv in layer.convs for m in _conv_relu(conv, init)], name=layer.name)
    if isinstance(layer, MaxPool):
        return keras.layers.MaxPool2D(layer.kernel, layer.stride, padding="valid", name=layer.name)
    if isinstance(layer, Dropout):
        return keras.layers.Dropout(layer.rate, name=layer.name)
    if isinstance(layer, ChannelDropout):
        return keras.layers.SpatialDropout2D(layer.rate, name=layer.name)
    if isinstance(layer, AvgPool):
        return keras.layers.AveragePooling2D(layer.kernel, layer.stride, padding="valid", name=layer.name)
    if isinstance(layer, GlobalAvgPool):
        return keras.layers.GlobalAveragePooling2D(keepdims=True, name=layer.name)
    if isinstance(layer, Flatten):
        return keras.Sequential([keras.layers.Permute((3, 1, 2)), keras.layers.Flatten()], name=layer.name)
    if isinstance(layer, Dense):
        dense = keras.layers.Dense(layer.out_features, activation="relu" if layer.relu else None,
                                   kernel_initializer=_initializer(init), bias_initializer="zeros",
                                   name=layer.name)
        dense.build((None, layer.in_features))  # Flatten's width is unknown while the image size is open
        return dense
    raise TypeError(f"no Keras rendering for {type(layer).__name__}")


@contextmanager
def _floatx(dtype: str):
    """Keras gives every layer, input and optimizer variable (the learning rate too) the global default
    dtype at construction; set it for what is built inside. A float64 model needs this: the default SGD's
    learning rate is a float32 variable, so at lr 0.05 every update would be off by 1.5e-8 relative."""
    saved_floatx, saved_policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx(dtype)
    keras.config.set_dtype_policy(dtype)
    try:
        yield
    finally:
        keras.config.set_floatx(saved_floatx)
        keras.config.set_dtype_policy(saved_policy)


def build_model(spec: NiNSpec, init: str = "xavier", seed: int = 0, dtype: str = "float32") -> keras.Model:
    keras.utils.set_random_seed(seed)  # initializers and dropout draw their seeds from it
    with _floatx(dtype):
        layers = [_render(layer, init) for layer in spec.layers]
        model = keras.Sequential([keras.Input((None, None, spec.in_channels)), *layers], name="nin")
    if init in SHARED_DRAW_INITS:
        set_weights(model, spec, initial_weights(spec, init, seed, dtype))
    return model


def _dtype(model: keras.Model):
    return model.trainable_variables[0].dtype if model.trainable_variables else "float32"


def layer_shapes(model: keras.Model, spec: NiNSpec, image_size=224, batch: int = 1):
    h, w = image_hw(image_size)
    x = tf.zeros((batch, h, w, spec.in_channels), _dtype(model))
    out = []
    for layer in model.layers:
        x = layer(x, training=False)
        out.append((layer.name, tuple(x.shape)))
    return out


def count_params(model: keras.Model) -> int:
    return model.count_params()


def _param_layers(model: keras.Model, spec: NiNSpec):
    for p in spec.param_layers():
        if isinstance(p, Dense):
            yield p, model.get_layer(p.name)
        else:
            block, conv = p.name.split(".")
            yield p, model.get_layer(block).get_layer(conv)


def get_weights(model: keras.Model, spec: NiNSpec) -> dict:
    out = {}
    for p, layer in _param_layers(model, spec):
        out[f"{p.name}.weight"] = kernel_to_canonical(p, layer.kernel.numpy(), LAYOUT)
        out[f"{p.name}.bias"] = np.asarray(layer.bias.numpy())
    return out


def set_weights(model: keras.Model, spec: NiNSpec, weights: dict) -> None:
    for p, layer in _param_layers(model, spec):
        w = np.asarray(weights[f"{p.name}.weight"], dtype=layer.kernel.dtype)
        layer.kernel.assign(kernel_from_canonical(p, w, LAYOUT))
        layer.bias.assign(np.asarray(weights[f"{p.name}.bias"], dtype=layer.bias.dtype))


def forward(model: keras.Model, x: np.ndarray, training: bool = False) -> np.ndarray:
    dtype = _dtype(model)
    return tf.cast(model(tf.constant(x, dtype), training=training), dtype).numpy()


def save_native(model: keras.Model, path) -> None:
    model.save_weights(path)  # Keras insists on a name ending in ".weights.h5"


def _all_layers(layer):
    yield layer
    for sub in getattr(layer, "layers", ()):
        yield from _all_layers(sub)


@contextmanager
def _dtype_policy(model: keras.Model, policy):
    """Mixed precision for what is traced inside, fp32 again after: the scope of ``torch.autocast``.
    Keras fixes a layer's compute dtype by its policy, which a model built before the Trainer lacks."""
    if policy is None:
        yield
        return
    layers = list(_all_layers(model))
    saved = [layer.dtype_policy for layer in layers]
    for layer in layers:
        layer.dtype_policy = policy
    try:
        yield
    finally:
        for layer, p in zip(layers, saved):
            layer.dtype_policy = p


class Trainer:
    """SGD on cross-entropy with ``tf.GradientTape`` and Keras's ``SGD`` (momentum, Nesterov) as ``optim``
    sets them (default: plain SGD at ``lr``), made to compute PyTorch's meaning (nin_multi/optim.py):
    the driver's rate is assigned to the optimizer's learning-rate variable each step, the velocity
    (which holds the rate this Trainer applied last, kept in that variable) is scaled by the rates' ratio
    first, the coupled weight decay is an L2 term added to the loss (Keras's own ``weight_decay`` is
    decoupled), and label smoothing is ``CategoricalCrossentropy``'s. Each step is traced once, at its
    first call, for any batch and image size (the last batch is smaller), under the precision's dtype
    policy: bf16/fp16 compute, fp32 weights, the loss in fp32; fp16 with dynamic loss scaling, on GPUs
    only; fp64 all in float64, the optimizer's learning rate included.

    The step is two graphs a data-parallel engine can run apart (tf_dist): ``_rate_graph`` (the rate and
    the velocity, in cross-replica context) and ``_step_graph`` (the gradient and the update, run in each
    replica by ``strategy.run``); one process traces them as one function. Nothing is traced at
    construction, so a Trainer built inside a strategy's scope never traces outside a replica context."""

    def __init__(self, model: keras.Model, lr: float, precision: str = "fp32", optim: SGDSettings | None = None):
        if precision == "fp16" and device() == "cpu":
            raise ConfigError("--precision fp16 needs a GPU with TensorFlow; on a CPU use bf16 or fp32")
        self.dtype = _dtype(model)
        check_model_dtype(precision, self.dtype)
        self.model = model
        self.optim = o = resolve(lr, optim)
        with _floatx(self.dtype):  # Keras losses cast their inputs to the default dtype too
            # A NumPy double: SGD casts a Python float momentum through float32 (0.9 -> 0.899999976, measured)
            self.opt = keras.optimizers.SGD(learning_rate=o.lr_at(0), momentum=np.float64(o.momentum),
                                            nesterov=o.nesterov)
            self.plain_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            self.loss = (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=o.label_smoothing,
                                                              reduction="sum") if o.label_smoothing else
                         keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum"))
        # Coupled decay as the L2 term whose gradient is wd * w. Not keras.regularizers.L2: it multiplies by
        # its factor as a Python float, which TensorFlow rounds to float32 (5e-12 apart in fp64, measured).
        self.l2 = tf.constant(o.weight_decay / 2, self.dtype) if o.weight_decay else None
        if precision == "fp16":
            self.opt = keras.optimizers.LossScaleOptimizer(self.opt)
        self.opt.build(model.trainable_variables)
        self.velocities = getattr(self.opt, "inner_optimizer", self.opt).momentums
        self.seeds = {layer.name: layer.seed_generator for layer in model.layers
                      if isinstance(layer, keras.layers.Dropout) and layer.rate > 0}
        self.policy = _POLICIES[precision]
        self.signature = (tf.TensorSpec((None, None, None, model.input_shape[-1]), self.dtype),
                          tf.TensorSpec((None,), tf.int64))
        self._rate = tf.function(self._rate_graph, input_signature=(tf.TensorSpec((), self.dtype),))
        self._train = self._eval = None

    def traced(self, fn, signature):
        """``fn`` traced once for ``signature``, under this precision's dtype policy."""
        with _floatx(self.dtype), _dtype_policy(self.model, self.policy):
            return tf.function(fn, input_signature=signature).get_concrete_function()

    def _metrics(self, logits, y):
        target = tf.one_hot(y, tf.shape(logits)[1], dtype=logits.dtype) if self.optim.label_smoothing else y
        return self.loss(target, logits), tf.reduce_sum(tf.cast(tf.argmax(logits, 1) == y, tf.int32))

    def _rate_graph(self, lr):
        """Update at ``lr``: the velocity, which holds the last rate applied, rescaled to it first."""
        scale = lr / tf.convert_to_tensor(self.opt.learning_rate)
        for v in self.velocities:
            v.assign(v * scale)
        self.opt.learning_rate.assign(lr)

    def _step_graph(self, x, y, total):
        """This batch's summed loss over ``total`` (and the L2 term's share of the replicas) minimized; the
        optimizer sums the replicas' gradients."""
        variables = self.model.trainable_variables
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(x, training=True), self.dtype)
            loss_sum, correct = self._metrics(logits, y)
            objective = loss_sum / tf.cast(total, self.dtype)
            if self.l2 is not None:
                l2 = self.l2 / replicas if replicas > 1 else self.l2
                objective = objective + l2 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
            scaled = self.opt.scale_loss(objective)
        self.opt.apply(tape.gradient(scaled, variables), variables)
        return loss_sum, correct

    def _train_graph(self, x, y, lr, total):
        self._rate_graph(lr)
        return self._step_graph(x, y, total)

    def _eval_graph(self, x, y):
        logits = tf.cast(self.model(x, training=False), self.dtype)
        return self.plain_loss(y, logits), tf.reduce_sum(tf.cast(tf.argmax(logits, 1) == y, tf.int32))

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: int | None = None) -> tuple[float, int]:
        if self._train is None:
            self._train = self.traced(self._train_graph, self.signature + (tf.TensorSpec((), self.dtype),
                                                                           tf.TensorSpec((), tf.int64)))
        loss, correct = self._train(tf.constant(x, self.dtype), tf.constant(y), tf.constant(lr, self.dtype),
                                    tf.constant(total or len(y), tf.int64))
        return float(loss), int(correct)

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        if self._eval is None:
            self._eval = self.traced(self._eval_graph, self.signature)
        loss, correct = self._eval(tf.constant(x, self.dtype), tf.constant(y))
        return float(loss) * len(y), int(correct)

    def extra_state(self) -> dict:
        return _training_state(self.opt, self.seeds)

    def load_extra_state(self, state: dict) -> None:
        _load_training_state(self.opt, self.seeds, state)


def _training_state(opt, seeds: dict) -> dict:
    """Beyond the weights: each Dropout's seed counter (Keras draws stateless masks from it, so a resumed
    run repeats the uninterrupted one's masks) and the optimizer's variables (step count, learning rate;
    fp16's loss scale)."""
    state = {f"optimizer.{i}": v.numpy() for i, v in enumerate(opt.variables)}
    state.update({f"dropout.{name}": g.state.numpy() for name, g in seeds.items()})
    return state


def _load_training_state(opt, seeds: dict, state: dict) -> None:
    for i, v in enumerate(opt.variables):
        v.assign(np.asarray(state[f"optimizer.{i}"]))
    for name, g in seeds.items():
        g.state.assign(np.asarray(state[f"dropout.{name}"]))
