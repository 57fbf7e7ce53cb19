"""Registry of framework renderings; a framework is imported only when its backend is asked for.

Every backend module offers the same names (the contract the shared training driver, the CLI and
the parity tests rely on):

    NAME, LAYOUT                        canonical name; "NCHW" or "NHWC" (what its batches look like)
    configure(threads, seed)            threads (None: every core) and the framework's global seeds
    device() -> str                     where it computes, e.g. "cpu" or "cuda:0"
    build_model(spec, init, seed, dtype="float32")
                                        the network rendered from the spec alone; dtype "float64" (for
                                        --precision fp64) makes its parameters and every layer float64
    layer_shapes(model, spec, size)     [(layer name, output shape)] from the framework's own forward pass
    count_params(model) -> int
    get_weights(model, spec) / set_weights(model, spec, weights)   canonical (OIHW) numpy dicts, in the
                                        model's parameter dtype; set_weights casts to it (the driver
                                        refuses float64 -> float32 before it gets there)
    forward(model, x, training=False)   logits as numpy: float64 from a float64 model, else float32
    Trainer(model, lr, precision)       .train_step(x, y) / .eval_step(x, y) -> (loss sum, correct count);
                                        .extra_state() / .load_extra_state(d): RNG etc. for checkpoints.
                                        precision "fp64" takes a float64 model and float64 batches, and
                                        computes loss, gradients and the SGD update in float64 without
                                        rounding any scalar (the learning rate included) to float32
    save_native(model, path)            the framework's own weights format
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from nin_multi.errors import BackendUnavailableError, ConfigError

#: canonical name -> (module, the framework's import name, the pip extra that installs it)
_REGISTRY = {
    "torch": ("nin_multi.backends.torch", "torch", "torch"),
    "tensorflow": ("nin_multi.backends.tf", "tensorflow", "tensorflow"),
    "mxnet": ("nin_multi.backends.mxnet", "mxnet", "mxnet"),
    "jax": ("nin_multi.backends.jax", "flax", "jax"),
    "onnx": ("nin_multi.backends.onnx", "onnxruntime", "onnx"),
}
ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow", "gluon": "mxnet", "mx": "mxnet",
           "flax": "jax", "onnxruntime": "onnx", "ort": "onnx"}
#: Import order when several load in one process: PyTorch before TensorFlow (the reverse has hung).
#: JAX 0.7.1 and onnxruntime 1.31 load beside the others in any order (measured: each of torch, tf,
#: mxnet, jax, onnx first and last, every import followed by a computation, in one process); they come
#: last so the order above is kept.
ORDER = tuple(_REGISTRY)
#: Backends that only run inference: no ``Trainer.train_step`` (their module says ``TRAINS = False``).
INFERENCE_ONLY = frozenset({"onnx"})


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; choose one of: {', '.join(_REGISTRY)} "
            f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def select(names=None, trains: bool = False) -> list[str]:
    """Canonical names, each once, in ``ORDER``, from a list or a comma-separated string (``--backends``);
    none given: every installed backend. ``trains``: for commands that train (``reproduce``, ``bench``),
    where none given means every installed backend that trains and naming an inference-only one is an
    error."""
    if isinstance(names, str):
        names = names.split(",")
    names = [n for n in names or () if n.strip()]
    if not names:
        return [k for k in installed() if can_train(k) or not trains]
    keys = {canonical_name(n) for n in names}
    if trains and keys & INFERENCE_ONLY:
        raise ConfigError(f"{', '.join(sorted(keys & INFERENCE_ONLY))} is inference-only and cannot train: "
                          f"choose from {', '.join(k for k in ORDER if can_train(k))}")
    return [k for k in ORDER if k in keys]


def can_train(name: str) -> bool:
    """Whether ``train``, ``reproduce`` and ``bench`` can train with this backend (known without importing it)."""
    return canonical_name(name) not in INFERENCE_ONLY


def is_installed(name: str) -> bool:
    return importlib.util.find_spec(_REGISTRY[canonical_name(name)][1]) is not None


def installed() -> list[str]:
    return [n for n in ORDER if is_installed(n)]


def get_backend(name: str) -> ModuleType:
    """Import and return the backend module, or say which pip command installs its framework."""
    key = canonical_name(name)
    module, framework, extra = _REGISTRY[key]
    if module in sys.modules:
        return sys.modules[module]
    if importlib.util.find_spec(framework) is None:
        raise BackendUnavailableError(
            f"the {key} backend needs {framework}, which is not installed: "
            f"pip install 'nin-multi[{extra}]'")
    return importlib.import_module(module)


def load_backends(names) -> list[ModuleType]:
    """Several backends in one process, imported in the order known to be safe."""
    keys = {canonical_name(n) for n in names}
    return [get_backend(k) for k in ORDER if k in keys]


def companion(name: str, part: str) -> ModuleType:
    """A backend's companion module, ``<module>_<part>`` (``dist``, ``bench``): imported only when asked for."""
    get_backend(name)  # checks that the framework is installed, and says which extra installs it
    return importlib.import_module(f"{_REGISTRY[canonical_name(name)][0]}_{part}")
