"""A NumPy forward pass of the spec in float64: the parity tests' oracle, independent of any framework.

Written from the layer definitions (cross-correlation with symmetric zero padding, floor max-pooling,
mean over H and W, CHW flattening), not from any backend's code.
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from nin_multi.spec import AvgPool, ChannelDropout, Dense, Dropout, Flatten, GlobalAvgPool, MaxPool, NiNBlock, NiNSpec


def _windows(x, k, stride):
    return sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]  # N, C, Ho, Wo, k, k


def conv2d(x, w, b, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return np.einsum("nchwij,ocij->nohw", _windows(x, w.shape[2], stride), w, optimize=True) + b[:, None, None]


def forward(spec: NiNSpec, weights: dict, x: np.ndarray, collect: bool = False):
    """Logits (N, classes) for NCHW input; with ``collect``, also every top-level layer's output."""
    x = x.astype(np.float64)
    outs = []
    for layer in spec.layers:
        if isinstance(layer, NiNBlock):
            for c in layer.convs:
                w = weights[f"{c.name}.weight"].astype(np.float64)
                b = weights[f"{c.name}.bias"].astype(np.float64)
                x = np.maximum(conv2d(x, w, b, c.stride, c.padding), 0)
        elif isinstance(layer, MaxPool):
            x = _windows(x, layer.kernel, layer.stride).max(axis=(4, 5))
        elif isinstance(layer, AvgPool):
            x = _windows(x, layer.kernel, layer.stride).mean(axis=(4, 5))
        elif isinstance(layer, GlobalAvgPool):
            x = x.mean(axis=(2, 3), keepdims=True)
        elif isinstance(layer, Flatten):
            x = x.reshape(len(x), -1)
        elif isinstance(layer, Dense):
            x = x @ weights[f"{layer.name}.weight"].astype(np.float64) + weights[f"{layer.name}.bias"]
            x = np.maximum(x, 0) if layer.relu else x
        elif not isinstance(layer, (Dropout, ChannelDropout)):  # dropout is the identity in evaluation
            raise TypeError(type(layer).__name__)
        outs.append(x)
    return (x, outs) if collect else x


def random_weights(spec: NiNSpec, seed: int = 0) -> dict:
    """Non-symmetric random kernels at He scale (activations stay O(1) through every block), so a
    transposed kernel (H/W or in/out swapped) changes the logits instead of hiding."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in spec.weight_shapes().items():
        if name.endswith(".bias"):
            out[name] = rng.normal(0, 0.1, shape).astype(np.float32)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
            out[name] = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    return out
