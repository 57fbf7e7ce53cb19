"""TensorFlow's part of ``nin-multi bench``: its GEMM probe and its peer paths, the book's Keras
``compile`` + ``fit`` and Keras's one-switch fast path (XLA). The names every ``<backend>_bench``
module offers are listed in ``torch_bench``."""
from __future__ import annotations

import tensorflow as tf

FAST_IS_DEFAULT = False
LOWER_PRECISIONS_ALONE = False
DESCRIPTIONS = {"chapter": "Keras compile + fit", "fast": "Keras fit, jit_compile XLA",
                "default": "Trainer: tf.function"}
_DTYPES = {"fp32": tf.float32, "bf16": tf.bfloat16, "fp64": tf.float64}


class KerasFit:
    """The book's TensorFlow ``train_ch6``: ``model.compile(optimizer=SGD(lr), loss=SparseCategoricalCrossentropy(
    from_logits=True), metrics=["accuracy"])``, then ``fit``. ``train_on_batch`` runs the same compiled
    train function as ``fit``, one batch at a time. ``jit_compile``: the book passes none, so Keras's
    "auto" decides (XLA on GPUs, not on CPUs); the fast path asks for XLA."""

    def __init__(self, backend, model, lr, jit_compile="auto"):
        keras = backend.keras
        self.model = model
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                      jit_compile=jit_compile)

    @staticmethod
    def _result(logs, y):
        return float(logs["loss"]) * len(y), int(round(float(logs["accuracy"]) * len(y)))

    def train_step(self, x, y):
        return self._result(self.model.train_on_batch(x, y, return_dict=True), y)

    def eval_step(self, x, y):
        return self._result(self.model.test_on_batch(x, y, return_dict=True), y)


class KerasXLA(KerasFit):
    def __init__(self, backend, model, lr):
        super().__init__(backend, model, lr, jit_compile=True)


PEERS = {"chapter": KerasFit, "fast": KerasXLA}


def gemm(n: int, precision: str):
    dtype = _DTYPES[precision]
    a = tf.cast(tf.random.stateless_uniform((n, n), (0, 1)), dtype)
    b = tf.cast(tf.random.stateless_uniform((n, n), (0, 2)), dtype)
    out = {}

    def run():
        out["c"] = tf.linalg.matmul(a, b)

    dev = "gpu:0" if tf.config.list_physical_devices("GPU") else "cpu"
    return "tf.linalg.matmul", dev, run, lambda: out["c"][0, 0].numpy()  # eager GPU ops are async


def sync(model):
    """A step has finished when it returns: its loss is read back as a Python number."""
    return lambda: None


def version() -> str:
    return tf.__version__


def environment() -> dict:
    return {}
