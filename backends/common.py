"""What every backend shares, written once (Keras 3 keeps its own in ``backend/common``): NumPy only, no
framework, so each rendering imports it whatever framework it wraps.

- The layout transposes. The canonical weights keep conv kernels OIHW and dense kernels (in, out). The
  frameworks fed NCHW (PyTorch, MXNet) keep conv kernels OIHW too and dense kernels (out, in); those fed
  NHWC (TensorFlow, JAX) keep conv kernels HWIO and dense kernels (in, out). So a backend's ``LAYOUT``
  says which transpose its edge needs, and the two pairs share one pair of functions.
- The seed a model carries. A Trainer draws its per-step dropout randomness from the run's seed; the seed
  travels on the model that ``build_model(spec, init, seed, dtype)`` made, not through a module global
  that ``configure`` would set and every later model would silently share.
"""
from __future__ import annotations

import numpy as np

from nin_multi.spec import Dense

#: The attribute a backend's model carries its seed in (``carry_seed``, ``carried_seed``).
SEED_ATTRIBUTE = "nin_multi_seed"


def kernel_to_canonical(layer, kernel, layout: str) -> np.ndarray:
    """A framework's kernel of ``layer`` (a spec ``Conv`` or ``Dense``) as the canonical array: a fresh,
    C-contiguous copy, never a view of the framework's own memory (PyTorch's ``.numpy()`` is one)."""
    kernel = np.asarray(kernel)
    if layout == "NCHW":
        return np.array(kernel.T if isinstance(layer, Dense) else kernel, order="C")
    return np.array(kernel if isinstance(layer, Dense) else kernel.transpose(3, 2, 0, 1), order="C")


def kernel_from_canonical(layer, kernel, layout: str) -> np.ndarray:
    """The canonical kernel of ``layer`` as a framework fed ``layout`` stores it (a view where it can be)."""
    kernel = np.asarray(kernel)
    if layout == "NCHW":
        return kernel.T if isinstance(layer, Dense) else kernel
    return kernel if isinstance(layer, Dense) else kernel.transpose(2, 3, 1, 0)


def carry_seed(model, seed: int):
    """``model`` with the seed it was built from, for the Trainer made on it (returns ``model``)."""
    setattr(model, SEED_ATTRIBUTE, int(seed))
    return model


def carried_seed(model) -> int:
    return getattr(model, SEED_ATTRIBUTE)
