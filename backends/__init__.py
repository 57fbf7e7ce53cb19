"""Registry of framework renderings; a framework is imported only when its backend is asked for.

Every backend module offers the same names: ``backends/contract.py`` states them as ``typing.Protocol``s
(a backend module, its Trainer, its data-parallel engine) and ``tests/test_contract.py`` checks every
backend against them. What a backend can do is said by three literal fields at the top of its module
(``TRAINS``, ``PRECISIONS``, ``DATA_PARALLEL``; ``NATIVE_SUFFIXES``, what its native
weights file is called; ``PRECISION_NEEDS``, the devices or CPU
classes a precision needs), which ``capabilities`` reads without importing the
framework, so the commands can choose backends before any framework loads.

A backend's companion modules (``<module>_dist``: its data-parallel engine and launcher; ``<module>_bench``:
its bench peers and GEMM probe) are found by ``companion`` and imported only when asked for; a
data-parallel backend's ``<module>_launch`` (its launcher's environment, no framework) by ``launcher``.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Optional

from nin_multi import interpreters
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
#: last so the order above is kept. The commands that use several frameworks run each in a worker process
#: of its own (``nin_multi.interpreters``); this order still matters to the in-process API
#: (``reproduce(..., workers=False)``, ``--in-process``), the notebooks and the test suite, which load
#: several frameworks into one process.
ORDER = tuple(_REGISTRY)
#: The capability fields every backend module sets, as literals (read by ``capabilities``).
CAPABILITY_FIELDS = ("TRAINS", "PRECISIONS", "DATA_PARALLEL", "NATIVE_SUFFIXES", "PRECISION_NEEDS")
#: The modules whose versions decide a backend's speed (``--precision auto`` caches per version).
_VERSIONED = {"torch": ("torch",), "tensorflow": ("tensorflow",), "mxnet": ("mxnet",), "jax": ("jax", "jaxlib", "flax"),
              "onnx": ("onnxruntime",)}


class Capabilities(NamedTuple):
    trains: bool                  # its Trainer computes gradients (False: inference only)
    precisions: tuple             # the --precision values its Trainer takes
    data_parallel: Optional[str]  # the launcher its ``<module>_dist`` engine joins (cluster.Context.launcher)
    native_suffixes: tuple        # the endings ``convert`` accepts for its ``save_native`` file
    precision_needs: dict         # precision -> where it runs ("gpu", CPU classes); absent: anywhere


@lru_cache(maxsize=None)
def capabilities(name: str) -> Capabilities:
    """A backend's capability fields, read from its source (literals only), so that choosing backends
    for a command imports no framework."""
    module = _REGISTRY[canonical_name(name)][0]
    tree = ast.parse((Path(__file__).parent / f"{module.rsplit('.', 1)[1]}.py").read_text())
    found = {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name) and t.id in CAPABILITY_FIELDS}
    return Capabilities(found["TRAINS"], tuple(found["PRECISIONS"]), found["DATA_PARALLEL"],
                        tuple(found["NATIVE_SUFFIXES"]), dict(found["PRECISION_NEEDS"]))


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; choose one of: {', '.join(_REGISTRY)} "
            f"(aliases: {', '.join(sorted(ALIASES))})")
    return key


def select(names=None, trains: bool = False, bound: bool = False) -> list[str]:
    """Canonical names, each once, in ``ORDER``, from a list or a comma-separated string (``--backends``);
    none given: every installed backend (``bound``: and every one bound to an interpreter of its own, for
    commands that run each backend in a worker). ``trains``: for commands that train (``reproduce``,
    ``bench``), where none given means every such backend that trains and naming an inference-only one is
    an error."""
    if isinstance(names, str):
        names = names.split(",")
    names = [n for n in names or () if n.strip()]
    if not names:
        here = set(installed())
        return [k for k in ORDER if (k in here or bound and interpreters.bound(k)) and (can_train(k) or not trains)]
    keys = {canonical_name(n) for n in names}
    inference_only = sorted(k for k in keys if not can_train(k))
    if trains and inference_only:
        raise ConfigError(f"{', '.join(inference_only)} is inference-only and cannot train: "
                          f"choose from {', '.join(trainable())}")
    return [k for k in ORDER if k in keys]


def can_train(name: str) -> bool:
    """Whether ``train``, ``reproduce`` and ``bench`` can train with this backend (known without importing it)."""
    return capabilities(name).trains


def trainable() -> list[str]:
    """Every registered backend that trains, in ``ORDER`` (installed or not)."""
    return [k for k in ORDER if can_train(k)]


def data_parallel() -> list[str]:
    """Every registered backend with a data-parallel engine, in ``ORDER``."""
    return [k for k in ORDER if capabilities(k).data_parallel]


def or_list(names) -> str:
    """Names as "a, b, c or d", for messages."""
    names = list(names)
    return " or ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def is_installed(name: str) -> bool:
    return importlib.util.find_spec(_REGISTRY[canonical_name(name)][1]) is not None


def installed() -> list[str]:
    return [n for n in ORDER if is_installed(n)]


def get_backend(name: str) -> ModuleType:
    """Import and return the backend module, or say which pip command installs its framework (where it
    has no wheels for this Python, how to run it in an interpreter of its own)."""
    key = canonical_name(name)
    module, framework, extra = _REGISTRY[key]
    if module in sys.modules:
        return sys.modules[module]
    if importlib.util.find_spec(framework) is None:
        raise BackendUnavailableError(missing_message(key))
    return importlib.import_module(module)


def versions(name: str) -> dict:
    """The versions of the modules behind a loaded backend, e.g. ``{"torch": "2.13.0+cpu"}``."""
    return {m: str(getattr(sys.modules.get(m), "__version__", "unknown")) for m in _VERSIONED[canonical_name(name)]}


def missing_message(key: str) -> str:
    _, framework, extra = _REGISTRY[key]
    since = interpreters.NO_WHEELS.get(key)
    if since and sys.version_info[:2] >= since:
        last = f"{since[0]}.{since[1] - 1}"
        return (f"the {key} backend needs {framework}, which has no release for Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}: make an environment for it on Python 3.10-{last} "
                f"with pip install -e '.[{extra}]' and set {interpreters.variable(key)} to its python (README)")
    return f"the {key} backend needs {framework}, which is not installed: pip install 'nin-multi[{extra}]'"


def check_interpreter(name: str) -> str:
    """The interpreter that runs ``name``: the one bound to it (checked: it runs, is new enough, has this
    project and the framework; else one line), or this one if its framework is installed here."""
    key = canonical_name(name)
    _, framework, extra = _REGISTRY[key]
    if interpreters.bound(key):
        return interpreters.check(key, framework, extra)
    if importlib.util.find_spec(framework) is None:
        raise BackendUnavailableError(missing_message(key))
    return sys.executable


def delegate(name: str, argv: list) -> int:
    """Run the whole command in the interpreter bound to ``name`` (see ``interpreters.delegate``)."""
    key = canonical_name(name)
    _, framework, extra = _REGISTRY[key]
    return interpreters.delegate(key, argv, framework, extra)


def load_backends(names) -> list[ModuleType]:
    """Several backends in one process, imported in the order known to be safe."""
    keys = {canonical_name(n) for n in names}
    return [get_backend(k) for k in ORDER if k in keys]


def launcher(name: str) -> ModuleType:
    """A data-parallel backend's launch module, ``<module>_launch``: its launcher's environment (``VARIABLES``,
    ``LAUNCH_VARS``, ``context``), imported without its framework (so the environment is read and checked
    before any framework loads)."""
    return importlib.import_module(f"{_REGISTRY[canonical_name(name)][0]}_launch")


def launchers() -> list[ModuleType]:
    """The launch modules of every registered data-parallel backend, in ``ORDER`` (one registered under a
    module path that has none, as a test's stand-in for a missing framework does, has no launcher to
    ask; ``tests/test_architecture.py`` checks that every real one has it)."""
    stems = {k: f"{_REGISTRY[k][0]}_launch" for k in data_parallel()}
    return [launcher(k) for k, stem in stems.items() if importlib.util.find_spec(stem) is not None]


def companion(name: str, part: str) -> ModuleType:
    """A backend's companion module, ``<module>_<part>`` (``dist``, ``bench``): imported only when asked for."""
    get_backend(name)  # checks that the framework is installed, and says which extra installs it
    return importlib.import_module(f"{_REGISTRY[canonical_name(name)][0]}_{part}")
