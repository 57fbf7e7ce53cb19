"""ONNX rendering of the spec, run by onnxruntime: an inference-only fifth implementation of every layer.

The graph is written node by node with ``onnx.helper`` from ``spec.layers`` (no framework exports it),
at a fixed opset, NCHW, with the canonical weights as initializers: conv kernels OIHW as ONNX's Conv
takes them, dense kernels (in, out) through ``Gemm``. Every top-level layer's output tensor is named
after the layer, so the shape walk reads onnxruntime's own outputs. The batch and image sizes are
symbolic: one file serves every input size the spec takes.

Inference only (``TRAINS = False``: ``train``, ``reproduce`` and ``bench`` refuse or skip it) and
float32 only: onnxruntime's CPU Conv kernel has no float64 or bfloat16 implementation.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from nin_multi.errors import ConfigError
from nin_multi.machine import usable_cores
from nin_multi.spec import (AvgPool, ChannelDropout, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock,
                            NiNSpec, image_hw)
from nin_multi.weights import initial_weights

NAME = "onnx"
LAYOUT = "NCHW"
TRAINS = False
PRECISIONS = ("fp32",)
PRECISION_NEEDS = {}
DATA_PARALLEL = None
NATIVE_SUFFIXES = (".onnx",)
OPSET = 17      # every operator used here is unchanged since opset 13 or earlier
IR_VERSION = 8  # the IR version of opset 17
INPUT = "input"


def configure(threads=None, seed=0):
    """Nothing to set for the process: onnxruntime keeps its thread count per session, so a ``Model``
    carries it (``Model(spec, weights, threads=N)``; by default the cores this process may use), and
    nothing here is random except the NumPy initialisation ``build_model`` seeds itself. A thread count
    given here would have nowhere to go, so it is refused rather than dropped."""
    if threads is not None:
        raise ConfigError(f"the onnx backend takes its thread count per model, not per process: build the model "
                          f"with onnx.Model(spec, weights, threads={threads}) instead of configure({threads})")


def device() -> str:
    return "cpu"


def _refuse_dtype(what: str) -> ConfigError:
    return ConfigError(f"{what}: the onnx backend runs float32 only (onnxruntime's CPU Conv kernel has no "
                       f"float64 or bfloat16 implementation); use --precision fp32, or another backend")


def make_graph(spec: NiNSpec, weights: dict, every_layer: bool = False) -> onnx.ModelProto:
    """The ONNX model of ``spec`` holding ``weights``; with ``every_layer`` each top-level layer's
    output is also a graph output (for the shape walk)."""
    nodes, inits = [], []
    x = INPUT

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def param(name):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weights[name], dtype=np.float32), name))
        return name

    for layer in spec.layers:
        if isinstance(layer, NiNBlock):
            for c in layer.convs:
                conv = node("Conv", [x, param(f"{c.name}.weight"), param(f"{c.name}.bias")], f"{c.name}.conv",
                            kernel_shape=[c.kernel] * 2, strides=[c.stride] * 2, pads=[c.padding] * 4)
                x = node("Relu", [conv], layer.name if c is layer.convs[-1] else f"{c.name}.relu")
        elif isinstance(layer, MaxPool):
            x = node("MaxPool", [x], layer.name, kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
                     ceil_mode=0)
        elif isinstance(layer, AvgPool):  # no padding, so count_include_pad does not matter
            x = node("AveragePool", [x], layer.name, kernel_shape=[layer.kernel] * 2, strides=[layer.stride] * 2,
                     ceil_mode=0)
        elif isinstance(layer, (Dropout, ChannelDropout)):
            x = node("Identity", [x], layer.name)  # inference: dropout is the identity
        elif isinstance(layer, GlobalAvgPool):
            x = node("GlobalAveragePool", [x], layer.name)
        elif isinstance(layer, Flatten):
            x = node("Flatten", [x], layer.name, axis=1)  # NCHW: the canonical CHW feature order
        elif isinstance(layer, Dense):
            gemm = node("Gemm", [x, param(f"{layer.name}.weight"), param(f"{layer.name}.bias")],
                        f"{layer.name}.gemm" if layer.relu else layer.name)
            x = node("Relu", [gemm], layer.name) if layer.relu else gemm
        else:
            raise TypeError(f"no ONNX rendering for {type(layer).__name__}")
    last = spec.layers[-1].name
    names = [layer.name for layer in spec.layers] if every_layer else [last]
    rank, r = {}, 4
    for layer in spec.layers:
        r = 2 if isinstance(layer, Flatten) else r
        rank[layer.name] = r
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None] * rank[n]) for n in names[:-1]]
    outputs.append(helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", spec.num_classes]))
    inp = helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", spec.in_channels, "H", "W"])
    graph = helper.make_graph(nodes, f"nin_{spec.variant}", [inp], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="nin_multi", ir_version=IR_VERSION)
    model.doc_string = f"Network in Network ({spec.variant}) from nin_multi's spec; spec JSON in metadata"
    helper.set_model_props(model, {"nin_multi.spec": spec.to_json()})
    onnx.checker.check_model(model, full_check=True)
    return model


class Model:
    """The spec, its canonical weights and the onnxruntime session, remade when the weights change.
    ``threads``: the session's intra-op threads (None: the cores this process may use, which onnxruntime's
    own default, every physical core of the machine, ignores under an affinity mask or a container's quota)."""

    def __init__(self, spec: NiNSpec, weights: dict, threads: Optional[int] = None):
        self.spec = spec
        self.weights = weights
        self.threads = threads or usable_cores()
        self._session = None

    @property
    def proto(self) -> onnx.ModelProto:
        return make_graph(self.spec, self.weights)

    def session(self, every_layer: bool = False) -> ort.InferenceSession:
        if every_layer:
            return _session(make_graph(self.spec, self.weights, every_layer=True), self.threads)
        if self._session is None:
            self._session = _session(self.proto, self.threads)
        return self._session


def _session(proto: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # errors only
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def build_model(spec: NiNSpec, init: str = "xavier", seed: int = 0, dtype: str = "float32") -> Model:
    if dtype != "float32":
        raise _refuse_dtype(f"a {dtype} model")
    return Model(spec, initial_weights(spec, init, seed))  # the NumPy draw reproduce shares too


def layer_shapes(model: Model, spec: NiNSpec, image_size=224, batch: int = 1):
    h, w = image_hw(image_size)
    outs = model.session(every_layer=True).run(None, {INPUT: np.zeros((batch, spec.in_channels, h, w), np.float32)})
    return [(layer.name, tuple(o.shape)) for layer, o in zip(spec.layers, outs)]


def count_params(model: Model) -> int:
    return sum(int(np.prod(t.dims)) for t in model.proto.graph.initializer)


def get_weights(model: Model, spec: NiNSpec) -> dict:
    return {k: v.copy() for k, v in model.weights.items()}


def set_weights(model: Model, spec: NiNSpec, weights: dict) -> None:
    model.weights = {k: np.array(weights[k], dtype=np.float32) for k in spec.weight_shapes()}
    model._session = None


def forward(model: Model, x: np.ndarray, training: bool = False) -> np.ndarray:
    if training:
        raise ConfigError("the onnx backend is inference-only: there is no training-mode forward pass")
    if x.dtype != np.float32:
        raise _refuse_dtype(f"{x.dtype} input")
    return model.session().run(None, {INPUT: x})[0]


def save_native(model: Model, path) -> None:
    onnx.save(model.proto, str(path))


class Trainer:
    """Evaluation only: ``eval_step`` runs the session and computes the cross-entropy in NumPy (float64,
    from float32 logits); ``train_step`` refuses."""

    def __init__(self, model: Model, lr: float = 0.0, precision: str = "fp32", optim=None):
        if precision != "fp32":
            raise _refuse_dtype(f"--precision {precision}")
        self.model = model

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float, total: int | None = None) -> tuple[float, int]:
        raise ConfigError("onnx is inference-only (onnxruntime runs a fixed graph; it computes no gradients): "
                          "train with torch, tensorflow, mxnet or jax, then evaluate or convert with "
                          "--backend onnx")

    def eval_step(self, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
        logits = forward(self.model, x).astype(np.float64)
        shifted = logits - logits.max(1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
        loss = -log_probs[np.arange(len(y)), y].sum()
        return float(loss), int((logits.argmax(1) == y).sum())

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass
