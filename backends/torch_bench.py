"""PyTorch's part of ``nin-multi bench``: its GEMM probe and its peer paths (what a reader of the book
runs, and PyTorch's one-switch fast path), beside the Trainer they are compared with.

Every ``<backend>_bench`` module offers the same names (``tests/test_bench.py`` checks it):

    FAST_IS_DEFAULT               the backend's Trainer is the framework's fast path itself (no "fast" row;
                                  its default fp32 row counts among the peers)
    LOWER_PRECISIONS_ALONE        a lower-precision Trainer changes the whole process (each runs alone)
    DESCRIPTIONS                  {path: what it runs}, for the table and the JSON
    PEERS                         {path: factory(backend, model, lr)} -> object with train_step / eval_step
    gemm(n, precision)            -> (op name, device, run, sync): one n x n x n product and its wait
    sync(model)                   -> a function that waits for the model's pending work
    version() / environment()     the framework's version; extra figures for the report's environment

The peers are written here rather than as options of the Trainer: they exist only to be compared
against, and keeping them out of the rendering keeps the Trainer the one code path that trains.
"""
from __future__ import annotations

import torch

from nin_multi.backends.torch import Trainer

FAST_IS_DEFAULT = False
LOWER_PRECISIONS_ALONE = False
DESCRIPTIONS = {"chapter": "eager, contiguous NCHW", "fast": "torch.compile, NCHW",
                "default": "Trainer: channels-last"}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


class _Contiguous(Trainer):
    CHANNELS_LAST = False


class Chapter:
    """The chapter's PyTorch loop: eager, contiguous NCHW, fp32 (the Trainer with channels-last off)."""

    def __init__(self, backend, model, lr):
        self.inner = _Contiguous(model, lr, "fp32")
        self.train_step = lambda x, y: self.inner.train_step(x, y, lr)  # the chapter's constant rate
        self.eval_step = self.inner.eval_step


class Compiled(Chapter):
    """The chapter's loop with PyTorch's one switch: ``model = torch.compile(model)`` (inductor, default
    mode). It compiles at the first step (and again for the first eval step, and for a new batch size)."""

    def __init__(self, backend, model, lr):
        super().__init__(backend, model, lr)
        self.inner.model = torch.compile(model)  # the optimizer keeps the same parameters


PEERS = {"chapter": Chapter, "fast": Compiled}


def gemm(n: int, precision: str):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _DTYPES[precision]
    g = torch.Generator(device=dev).manual_seed(0)
    a = torch.rand(n, n, device=dev, dtype=torch.float32, generator=g).to(dtype)
    b = torch.rand(n, n, device=dev, dtype=torch.float32, generator=g).to(dtype)
    wait = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    return "torch.matmul", dev, lambda: torch.matmul(a, b), wait


def sync(model):
    """A step has finished when it returns: its loss is read back as a Python number."""
    return lambda: None


def version() -> str:
    return torch.__version__


def environment() -> dict:
    return {"torch_threads": torch.get_num_threads()}
